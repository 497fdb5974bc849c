import json

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.spec import SCHEDULERS, JobSpec, SpecError, apply_overrides, load_spec, parse_spec

# What the official `monsterapi` client sends for client.finetune("llm", params): every field it knows.
MONSTER_PAYLOAD = {
    "pretrainedmodel_config": {
        "model_path": "mistralai/Mistral-7B-v0.1",
        "resume_checkpoint_path": "",
        "use_lora": True,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_bias": "none",
        "use_quantization": False,
        "use_gradient_checkpointing": False,
        "parallelization": "nmp",
    },
    "data_config": {
        "data_path": "tatsu-lab/alpaca",
        "data_subset": "default",
        "data_source_type": "hub_link",
        "prompt_template": "Here is an example on how to use tatsu-lab/alpaca dataset ### Input: {instruction} ### Output: {output}",
        "cutoff_len": 512,
        "data_split_config": {"train": 0.9, "validation": 0.1},
        "prevalidated": True,
    },
    "training_config": {
        "early_stopping_patience": 5,
        "num_train_epochs": 1,
        "gradient_accumulation_steps": 1,
        "warmup_steps": 50,
        "learning_rate": 0.001,
        "lr_scheduler_type": "reduce_lr_on_plateau",
        "group_by_length": False,
        "preference_optimization": "DONT",
    },
    "logging_config": {
        "use_wandb": False,
        "wandb_username": "",
        "wandb_login_key": "",
        "wandb_project": "",
        "wandb_run_name": "",
    },
    "hf_config": {"hf_token": None, "hf_model_path": None},
    "user_session_token": None,
}


def test_monsterapi_payload_is_accepted_unchanged():
    spec = parse_spec(json.loads(json.dumps(MONSTER_PAYLOAD)))
    assert spec.pretrainedmodel_config.model_path == "mistralai/Mistral-7B-v0.1"
    assert spec.training_config.lr_scheduler_type == "reduce_lr_on_plateau"
    assert spec.training_config.warmup_steps == 50
    assert spec.data_config.prevalidated is True
    # round trip: what we write as spec.json parses back to the same spec
    assert parse_spec(json.loads(spec.to_json(redact=False))) == spec


def test_minimal_spec_gets_working_defaults():
    spec = parse_spec({"data_config": {"data_path": "data.jsonl", "prompt_template": "{q} {a}"}})
    assert spec.pretrainedmodel_config.model_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert spec.pretrainedmodel_config.lora_r == 8 and spec.training_config.learning_rate == 2e-4
    assert spec.data_config.cutoff_len == 512


@pytest.mark.parametrize(
    "patch, expected",
    [
        (
            {"pretrainedmodel_config": {"lora_alpah": 3}},
            "pretrainedmodel_config.lora_alpah: unknown field (did you mean 'lora_alpha'",
        ),
        (
            {"training_config": {"learning_rat": 0.1}},
            "training_config.learning_rat: unknown field (did you mean 'learning_rate'",
        ),
        ({"trainin_config": {}}, "trainin_config: unknown field (did you mean 'training_config'"),
        ({"data_config": {"data_path": "x", "cutoff_len": 0}}, "data_config.cutoff_len: 0 is not allowed"),
        ({"pretrainedmodel_config": {"lora_r": 0}}, "pretrainedmodel_config.lora_r: 0 is not allowed"),
        (
            {"training_config": {"lr_scheduler_type": "cosin"}},
            "training_config.lr_scheduler_type: 'cosin' is not allowed",
        ),
        ({"pretrainedmodel_config": {"lora_bias": "some"}}, "pretrainedmodel_config.lora_bias: 'some' is not allowed"),
        (
            {"training_config": {"preference_method": "kto"}},
            "training_config.preference_method: 'kto' is not allowed: Input should be 'orpo', 'dpo' or 'simpo'",
        ),
        (
            {"training_config": {"preference_optimization": "ORPO", "preference_method": "dpo"}},
            "preference_optimization 'ORPO' conflicts with preference_method 'dpo'",
        ),
        ({"training_config": {"preference_method": "orpo", "preference_beta": 0.2}}, "ORPO's weight is orpo_lambda"),
        ({"data_config": {"data_path": "x", "data_format": "preference"}}, "'preference' needs a preference method"),
        (
            {"data_config": {"data_path": "x", "data_format": "chat"}, "training_config": {"preference_method": "dpo"}},
            "data_format 'chat' cannot be used with preference tuning (dpo)",
        ),
        ({"pretrainedmodel_config": {"use_lora": False}}, "full fine-tuning (use_lora=false) is not supported"),
        ({"hf_config": {"hf_model_path": "me/model"}}, "pushing the adapter to the hub is not supported yet"),
        (
            {"data_config": {"data_path": "x", "data_split_config": {"train": 0.9, "valid": 0.1}}},
            "unknown split 'valid'",
        ),
        ({"data_config": {"data_path": "x", "data_split_config": {"train": 0.8, "validation": 0.5}}}, "add up to 1.3"),
        (
            {
                "data_config": {"data_path": "x", "data_split_config": {"train": 1.0}},
                "training_config": {"lr_scheduler_type": "reduce_lr_on_plateau"},
            },
            "needs a validation split",
        ),
        ({"data_config": {"data_path": "  "}}, "data_config.data_path: '  ' is not allowed: must not be empty"),
        ({"training_config": {"learning_rate": 2}}, "training_config.learning_rate: 2 is not allowed"),
    ],
)
def test_bad_values_are_named(patch, expected):
    data = {"data_config": {"data_path": "x"}}
    for key, value in patch.items():
        data[key] = {**data.get(key, {}), **value}
    with pytest.raises(SpecError) as exc:
        parse_spec(data)
    assert expected in str(exc.value)


def test_missing_data_path_and_non_object():
    with pytest.raises(SpecError, match=r"data_config: required field is missing"):
        parse_spec({})
    with pytest.raises(SpecError, match="a job spec is a JSON/YAML object"):
        parse_spec([1, 2])


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_name_is_accepted(name, tmp_path):
    spec = parse_spec({"data_config": {"data_path": "x"}, "training_config": {"lr_scheduler_type": name}})
    assert spec.training_config.lr_scheduler_type == name
    assert parse_spec(spec.to_dict()).training_config.lr_scheduler_type == name  # survives the resolved spec.json
    (tmp_path / "job.yaml").write_text("data_config:\n  data_path: x\n")
    assert (
        load_spec(
            tmp_path / "job.yaml", [f"training_config.lr_scheduler_type={name}"]
        ).training_config.lr_scheduler_type
        == name
    )  # and a --set override


def test_overrides_and_files(tmp_path):
    yaml_file = tmp_path / "job.yaml"
    yaml_file.write_text("data_config:\n  data_path: d.jsonl\ntraining_config:\n  learning_rate: 0.001\n")
    spec = load_spec(
        yaml_file,
        [
            "training_config.learning_rate=1e-4",
            'pretrainedmodel_config.target_modules=["q_proj"]',
            "data_config.prompt_template=Q: {q} A: {a}",
        ],
    )
    assert spec.training_config.learning_rate == 1e-4
    assert spec.pretrainedmodel_config.target_modules == ["q_proj"]
    assert spec.data_config.prompt_template == "Q: {q} A: {a}"
    json_file = tmp_path / "job.json"
    json_file.write_text('{"data_config": {"data_path": "d.jsonl",}}')
    with pytest.raises(Exception, match=r"job\.json: not valid JSON at line 1 column"):
        load_spec(json_file)
    with pytest.raises(Exception, match=r"expected section\.field=value"):
        apply_overrides({}, ["training_config.learning_rate"])


def test_a_spec_file_that_is_not_a_mapping_is_refused_by_name(tmp_path):
    listed = tmp_path / "job.yaml"
    listed.write_text("- data_config\n- training_config\n")
    with pytest.raises(
        TuneforgeError,
        match=r"job\.yaml: expected a mapping of sections \(data_config, "
        r"training_config, \.\.\.\), not a list$",
    ) as info:
        load_spec(listed)
    assert info.value.field == "spec"


def test_secrets_are_redacted_in_spec_json():
    spec = parse_spec(
        {
            "data_config": {"data_path": "x"},
            "logging_config": {"wandb_login_key": "secret"},
            "hf_config": {"hf_token": "hf_abc"},
        }
    )
    text = spec.to_json()
    assert "secret" not in text and "hf_abc" not in text


def test_schema_has_field_help():
    schema = JobSpec.model_json_schema()
    lora_r = schema["$defs"]["PretrainedModelConfig"]["properties"]["lora_r"]
    assert "rank" in lora_r["description"]


def test_monsterapi_orpo_payload_is_accepted_as_is():
    from monsterapi.LLM_config import LLMServiceParams  # the official client's own model of the payload

    payload = {
        "pretrainedmodel_config": {"model_path": "smollm2"},
        "data_config": {"data_path": "pairs.jsonl", "prompt_template": "Q: {prompt}\nA: "},
        "training_config": {"preference_optimization": "ORPO"},
        "logging_config": {"use_wandb": False},
    }
    sent = LLMServiceParams(**payload).model_dump()  # what client.finetune("llm", payload) puts on the wire
    assert sent["training_config"]["preference_optimization"] == "ORPO"
    spec = parse_spec(sent)
    t = spec.training_config
    assert t.preference == "orpo" and t.beta == 0.1
    assert (
        parse_spec(
            {"data_config": {"data_path": "x"}, "training_config": {"preference_method": "dpo"}}
        ).training_config.beta
        == 0.1
    )
    assert (
        parse_spec(
            {"data_config": {"data_path": "x"}, "training_config": {"preference_method": "simpo"}}
        ).training_config.beta
        == 2.0
    )
    assert parse_spec({"data_config": {"data_path": "x"}}).training_config.preference is None
