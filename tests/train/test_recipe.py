"""The training recipe end to end on a tiny random Llama (2 layers, 64 wide): artifacts, PEFT round trip,
early stopping, resume equivalence, QLoRA on CPU, merge equivalence, and the CLI's error paths."""

from __future__ import annotations

import json

import pytest
import torch

from tiny import make_tiny_spec as make_spec
from tiny import write_qa_data
from tuneforge.cli import main
from tuneforge.runtime import pick_runtime
from tuneforge.train.recipe import evaluate, train, work_dir_for


@pytest.fixture(scope="module")
def qa_data(tmp_path_factory):
    return write_qa_data(tmp_path_factory.mktemp("data") / "qa.jsonl")


def test_train_writes_a_complete_run_that_plain_peft_reloads(tiny_model_dir, qa_data, tmp_path):
    out = tmp_path / "run"
    result = train(make_spec(tiny_model_dir, qa_data), out, quiet=True)
    assert result.output_dir == out.resolve() and not work_dir_for(out).exists()
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "loss.png", "metrics.jsonl", "report.json", "spec.json"]
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "tuneforge_adapter.json",
    ):
        assert (out / "adapter" / name).is_file(), name
    card = json.loads((out / "adapter" / "tuneforge_adapter.json").read_text())
    assert card["data_format"] == "template" and card["completion_column"] == "answer"
    assert card["prompt_template"] == "Question: {question}\nAnswer: {answer}"
    weights = card["base_model"]["weights_sha256"]
    assert card["base_model"]["path"] == str(tiny_model_dir) and list(weights) == ["model.safetensors"]
    import hashlib

    assert (
        weights["model.safetensors"] == hashlib.sha256((tiny_model_dir / "model.safetensors").read_bytes()).hexdigest()
    )
    report = json.loads((out / "report.json").read_text())
    for key in (
        "train_loss",
        "eval_loss",
        "eval_perplexity",
        "steps",
        "epochs",
        "tokens_seen",
        "tokens_per_second",
        "peak_memory_bytes",
        "wall_time_seconds",
        "trainable_parameters",
        "trainable_share",
    ):
        assert report[key] is not None, key
    assert report["steps"] == 12 and 0 < report["trainable_share"] < 0.5
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["type"] == "train"] == list(range(1, 13))
    assert [r["step"] for r in lines if r["type"] == "eval"] == [0, 4, 8, 12]  # 0: the base model
    resolved = json.loads((out / "spec.json").read_text())
    assert resolved["pretrainedmodel_config"]["target_modules"] == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]

    # Plain PEFT, no tuneforge code: the adapter gives exactly the validation loss the run reported.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, out / "adapter").eval()
    from tuneforge.data import DataOptions, prepare_dataset
    from tuneforge.models.loader import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    data = prepare_dataset(
        str(qa_data),
        DataOptions(cutoff_len=64, prompt_template="Question: {question}\nAnswer: {answer}"),
        tokenizer=tok,
        split_fractions={"train": 0.8, "validation": 0.2},
        seed=42,
    )
    loss = evaluate(peft_model, data.validation, batch_size=16, pad_id=tok.pad_token_id, runtime=pick_runtime("fp32"))
    assert loss == pytest.approx(report["eval_loss"], rel=1e-5)
    with torch.no_grad():
        ids = torch.tensor([data.validation[0].input_ids])
        with peft_model.disable_adapter():  # PeftModel injects LoRA into `base` in place
            base_logits = peft_model(ids).logits
        assert not torch.allclose(peft_model(ids).logits, base_logits)  # the trained adapter changed the outputs


def test_training_learns_the_task(tiny_model_dir, qa_data, tmp_path):
    result = train(
        make_spec(tiny_model_dir, qa_data, max_steps=40, eval_steps=10, learning_rate=1e-2), tmp_path / "r", quiet=True
    )
    evals = [
        json.loads(x)["eval_loss"] for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if '"eval"' in x
    ]
    assert result.report["eval_loss"] < 0.5 * evals[0], evals  # evals[0]: the untrained base


def test_early_stopping_really_stops(tiny_model_dir, qa_data, tmp_path):
    # A learning rate this high makes the validation loss stop improving at once.
    spec = make_spec(
        tiny_model_dir,
        qa_data,
        max_steps=60,
        eval_steps=2,
        learning_rate=0.9,
        early_stopping_patience=2,
        lr_scheduler_type="constant",
    )
    report = train(spec, tmp_path / "r", quiet=True).report
    evals = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert report["stopped_early"] and report["steps"] < 60
    best = min(range(len(evals)), key=lambda i: evals[i]["eval_loss"])
    assert len(evals) == best + 1 + 2  # stopped exactly `patience` evaluations after the best one
    assert report["best_step"] == evals[best]["step"] and report["eval_loss"] == evals[best]["eval_loss"]


def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_model_dir, qa_data, tmp_path):
    spec = make_spec(
        tiny_model_dir,
        qa_data,
        max_steps=10,
        save_steps=2,
        eval_steps=5,
        gradient_accumulation_steps=2,
        batch_size=4,
        p={"lora_dropout": 0.1},
    )
    reference = train(spec, tmp_path / "a", quiet=True)

    class Crash(Exception):
        pass

    def crash_at_step_7(event):
        if event.get("type") == "train" and event["step"] == 7:
            raise Crash

    with pytest.raises(Crash):
        train(spec, tmp_path / "b", quiet=True, on_event=crash_at_step_7)
    assert not (tmp_path / "b").exists() and (work_dir_for(tmp_path / "b") / "checkpoint-6").is_dir()
    resumed = train(spec, tmp_path / "b", resume=True, quiet=True)

    def losses(run):
        return [
            (r["type"], r["step"], r.get("loss", r.get("eval_loss")))
            for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        ]

    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [x[:2] for x in a] == [x[:2] for x in b]
    for (_, _, la), (_, _, lb) in zip(a, b, strict=True):
        assert lb == pytest.approx(la, rel=1e-5)
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "a" / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert resumed.report["tokens_seen"] == reference.report["tokens_seen"]


def test_qlora_on_cpu_quantizes_the_base_and_trains(tiny_model_dir, qa_data, tmp_path):
    spec = make_spec(
        tiny_model_dir,
        qa_data,
        max_steps=20,
        eval_steps=10,
        learning_rate=1e-2,
        p={"use_quantization": True},
        precision="auto",
    )
    seen = []
    report = train(spec, tmp_path / "q", quiet=True, on_event=seen.append).report
    assert report["quantization"] == "4-bit nf4 + double quant"
    evals = [e["eval_loss"] for e in seen if e["type"] == "eval"]
    assert evals[-1] < evals[0]
    cfg = json.loads((tmp_path / "q" / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["peft_type"] == "LORA"


def test_qlora_base_is_really_4bit(tiny_model_dir):
    import bitsandbytes as bnb

    from tuneforge.models.loader import resolve_model
    from tuneforge.models.lora import QuantSettings, load_base_model

    model = load_base_model(resolve_model(str(tiny_model_dir)), pick_runtime("fp32"), quant=QuantSettings("fp4", False))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14  # 7 projections x 2 layers
    assert layers[0].weight.quant_state.quant_type == "fp4"


def test_merge_equals_base_plus_adapter(tiny_model_dir, qa_data, tmp_path):
    train(make_spec(tiny_model_dir, qa_data, max_steps=6), tmp_path / "r", quiet=True)
    assert main(["merge", str(tmp_path / "r" / "adapter"), "--output", str(tmp_path / "merged")]) == 0
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    unmerged = PeftModel.from_pretrained(base, tmp_path / "r" / "adapter").eval()
    ids = torch.randint(3, 400, (2, 24))
    with torch.no_grad():
        a, b = merged(ids).logits, unmerged(ids).logits
    assert ((a - b).norm() / b.norm()).item() < 1e-4
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_generate_with_adapter(tiny_model_dir, qa_data, tmp_path, capsys):
    train(make_spec(tiny_model_dir, qa_data, max_steps=4), tmp_path / "r", quiet=True)
    assert (
        main(
            [
                "generate",
                "--adapter",
                str(tmp_path / "r" / "adapter"),
                "--max-new-tokens",
                "5",
                "Question: what is 1 plus 2?\nAnswer:",
                "--raw",
            ]
        )
        == 0
    )
    capsys.readouterr()  # a random tiny model may emit only EOS: that the command ran is the check here


# ---------------------------------------------------------------------------------------------- bad input (CLI)


def _spec_file(tmp_path, tiny_model_dir, qa_data, **overrides):
    data = json.loads(make_spec(tiny_model_dir, qa_data).to_json(redact=False))
    for dotted, value in overrides.items():
        section, field = dotted.split("__")
        data[section][field] = value
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"pretrainedmodel_config__model_path": "/nonexistent/model"},
            "model_path: '/nonexistent/model' does not exist",
        ),
        ({"data_config__prompt_template": "Q: {question} A: {answr}"}, "answr"),
        ({"data_config__cutoff_len": 0}, "data_config.cutoff_len: 0 is not allowed"),
        ({"training_config__lr_scheduler_type": "warmup_cosine"}, "lr_scheduler_type: 'warmup_cosine' is not allowed"),
        ({"pretrainedmodel_config__lora_r": -1}, "pretrainedmodel_config.lora_r: -1 is not allowed"),
        ({"data_config__data_path": "/nonexistent/data.jsonl"}, "/nonexistent/data.jsonl"),
        ({"pretrainedmodel_config__target_modules": ["qq_proj"]}, "['qq_proj'] not found"),
    ],
)
def test_cli_bad_input_is_one_clear_line_exit_2_and_no_output(
    tiny_model_dir, qa_data, tmp_path, capsys, overrides, message
):
    spec = _spec_file(tmp_path, tiny_model_dir, qa_data, **overrides)
    out = tmp_path / "out"
    assert main(["train", str(spec), "--output", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tuneforge: error: ") and message in last, err
    assert not out.exists()


def test_cli_missing_adapter_folder(tmp_path, capsys):
    assert main(["merge", str(tmp_path / "nope"), "--output", str(tmp_path / "m")]) == 2
    assert "adapter folder" in capsys.readouterr().err
    assert main(["generate", "--adapter", str(tmp_path), "hi"]) == 2
    assert "not a PEFT adapter folder" in capsys.readouterr().err


def test_cli_train_with_set_override_and_refuses_to_clobber(tiny_model_dir, qa_data, tmp_path, capsys):
    spec = _spec_file(tmp_path, tiny_model_dir, qa_data)
    out = tmp_path / "out"
    assert main(["train", str(spec), "-o", str(out), "-q", "--set", "training_config.max_steps=3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3
    assert main(["train", str(spec), "-o", str(out), "-q"]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert main(["train", str(spec), "-o", str(out), "-q", "--resume"]) == 2


def test_qlora_gradients_survive_an_evaluation_pass(tiny_model_dir):
    """bitsandbytes' CPU inference repacking must not kick in: after an eval pass without gradients, the gradient
    through the frozen 4-bit layers is the same as before it."""
    from tuneforge.models.loader import resolve_model
    from tuneforge.models.lora import LoraSettings, QuantSettings, apply_lora, load_base_model

    runtime = pick_runtime("auto")
    ids = torch.randint(3, 400, (2, 16))

    def first_layer_grad(evaluate_first: bool) -> float:
        base = load_base_model(resolve_model(str(tiny_model_dir)), runtime, quant=QuantSettings())
        model, _, _ = apply_lora(
            base, LoraSettings(r=4), model_id="tiny", quantized=True, gradient_checkpointing=False, seed=0
        )
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.01)  # make B non-zero so gradients reach A through the whole stack
        if evaluate_first:
            model.eval()
            with torch.no_grad(), runtime.autocast():
                model(ids)
            model.train()
        with runtime.autocast():
            model(ids).logits.float().pow(2).mean().backward()
        layer0 = model.get_base_model().model.layers[0].self_attn.q_proj
        return float(layer0.lora_A["default"].weight.grad.norm())

    fresh, after_eval = first_layer_grad(False), first_layer_grad(True)
    assert fresh > 0 and after_eval == pytest.approx(fresh, rel=1e-3)
