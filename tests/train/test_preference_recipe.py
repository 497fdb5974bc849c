"""Preference tuning end to end on the tiny random Llama: ORPO and DPO raise validation reward accuracy, the run
folder carries the reward metrics, resume continues exactly, and wrong data is refused before any work."""

from __future__ import annotations

import json
import random

import pytest

from tiny import write_qa_data
from tuneforge.cli import main
from tuneforge.data import DataValidationError
from tuneforge.errors import TuneforgeError
from tuneforge.spec import parse_spec
from tuneforge.train.recipe import train, work_dir_for


def write_pairs(path, n=96):
    """Chosen: a plain answer; rejected: a hedged one (a style preference, which a random tiny model picks up in a
    few steps and which carries over to the validation pairs)."""
    rng = random.Random(1)
    with open(path, "w") as fh:
        for _ in range(n):
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            wrong = (a + b + rng.randint(1, 5)) % 19
            row = {"prompt": f"what is {a} plus {b}?", "chosen": f"sum is {a + b}", "rejected": f"maybe {wrong} or so"}
            fh.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl")


def pref_spec(model_dir, data, **training):
    t = {"max_steps": 12, "batch_size": 8, "learning_rate": 3e-3, "eval_steps": 4, "precision": "fp32", **training}
    return parse_spec(
        {
            "pretrainedmodel_config": {"model_path": str(model_dir), "lora_r": 4},
            "data_config": {
                "data_path": str(data),
                "prompt_template": "Question: {prompt}\nAnswer: ",
                "cutoff_len": 64,
                "data_split_config": {"train": 0.75, "validation": 0.25},
            },
            "training_config": t,
        }
    )


def _evals(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]


@pytest.mark.parametrize(
    "training",
    [{"preference_optimization": "ORPO"}, {"preference_method": "dpo", "preference_beta": 0.5}],
    ids=["orpo", "dpo"],
)
def test_preference_run_raises_validation_reward_accuracy(tiny_model_dir, pairs, tmp_path, training):
    out = tmp_path / "run"
    events = []
    result = train(pref_spec(tiny_model_dir, pairs, **training), out, quiet=True, on_event=events.append)
    evals = _evals(out)
    assert [e["step"] for e in evals] == [0, 4, 8, 12]
    for e in evals:
        for key in (
            "eval_loss",
            "eval_reward_accuracy",
            "eval_reward_margin",
            "eval_chosen_logps",
            "eval_rejected_logps",
        ):
            assert key in e, key
    assert max(e["eval_reward_accuracy"] for e in evals[1:]) > evals[0]["eval_reward_accuracy"] + 0.2
    assert evals[-1]["eval_reward_margin"] > evals[0]["eval_reward_margin"]
    report = result.report
    assert report["method"] == ("orpo" if "preference_optimization" in training else "dpo")
    assert report["eval_perplexity"] is None and report["preference"]["reward_accuracy"] >= 0.6
    train_lines = [e for e in events if e.get("type") == "train"]
    assert "reward_accuracy" in train_lines[0] and "reward_margin" in train_lines[0]
    assert any(e.get("type") == "eval" and "eval_reward_accuracy" in e for e in events)
    resolved = json.loads((out / "spec.json").read_text())
    assert resolved["training_config"]["preference_method"] == report["method"]
    assert (out / "loss.png").stat().st_size > 0


def test_dpo_on_qlora_uses_the_4bit_base_as_reference(tiny_model_dir, pairs, tmp_path):
    """QLoRA: the reference pass runs the same 4-bit weights with the adapter off (no second model)."""
    spec = pref_spec(tiny_model_dir, pairs, preference_method="dpo", preference_beta=0.5, precision="auto")
    spec.pretrainedmodel_config.use_quantization = True
    report = train(spec, tmp_path / "q", quiet=True).report
    assert report["quantization"] == "4-bit nf4 + double quant" and report["method"] == "dpo"
    evals = _evals(tmp_path / "q")
    assert evals[0]["eval_reward_accuracy"] == 0.0  # policy == reference before the first step
    assert evals[-1]["eval_reward_accuracy"] > 0.6


def test_preference_resume_matches_an_uninterrupted_run(tiny_model_dir, pairs, tmp_path):
    spec = pref_spec(tiny_model_dir, pairs, preference_method="simpo", max_steps=8, save_steps=4)
    full = train(spec, tmp_path / "full", quiet=True).report

    class Stop(Exception):
        pass

    def stop_at_6(record):
        if record.get("type") == "train" and record["step"] == 6:
            raise Stop

    with pytest.raises(Stop):
        train(spec, tmp_path / "cut", quiet=True, on_event=stop_at_6)
    assert (work_dir_for(tmp_path / "cut") / "checkpoint-4").is_dir()
    resumed = train(spec, tmp_path / "cut", resume=True, quiet=True).report
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-4)
    assert resumed["preference"]["reward_accuracy"] == pytest.approx(full["preference"]["reward_accuracy"])


def test_orpo_with_sft_data_names_the_columns_before_any_work(tiny_model_dir, tmp_path):
    sft = write_qa_data(tmp_path / "qa.jsonl")
    out = tmp_path / "run"
    with pytest.raises(DataValidationError) as err:
        train(pref_spec(tiny_model_dir, sft, preference_optimization="ORPO"), out, quiet=True)
    msg = str(err.value)
    assert "'chosen' and 'rejected'" in msg and "found: question, answer" in msg
    assert not out.exists() and not work_dir_for(out).exists()


def test_sft_job_on_pair_data_says_to_set_a_preference_method(tiny_model_dir, pairs, tmp_path):
    spec = parse_spec(
        {
            "pretrainedmodel_config": {"model_path": str(tiny_model_dir)},
            "data_config": {"data_path": str(pairs)},
            "training_config": {"max_steps": 1},
        }
    )
    with pytest.raises(TuneforgeError, match=r"holds preference pairs .*training_config.preference_method"):
        train(spec, tmp_path / "run", quiet=True)


def test_cli_unknown_method_lists_the_allowed_ones(tiny_model_dir, pairs, tmp_path, capsys):
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps({"data_config": {"data_path": str(pairs)}, "training_config": {"preference_method": "kto"}})
    )
    assert main(["train", str(job), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("tuneforge: error: ") and "'orpo', 'dpo' or 'simpo'" in err
