"""`tuneforge models`, and a model outside the catalog: its LoRA targets are found by inspection and printed."""

from __future__ import annotations

import json

from tiny import make_tiny_spec, save_tiny, write_qa_data
from tuneforge.cli import main
from tuneforge.models.catalog import CATALOG
from tuneforge.models.targets import TARGET_MODULES


def test_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["alias", "hub", "id", "arch", "params"]
    assert f"{len(CATALOG)} models, {len({e.architecture for e in CATALOG})} architectures" in out
    row = next(line for line in lines if line.startswith("llama-3.1-8b-instruct "))
    assert "meta-llama/Llama-3.1-8B-Instruct" in row and "131,072" in row and "GiB" in row and "[gated]" in row
    falcon = next(line for line in lines if line.startswith("falcon-7b "))
    assert "GiB*" in falcon and "* QLoRA stays 16-bit for falcon" in out


def test_models_json(capsys):
    assert main(["models", "--json", "--family", "qwen", "--seq-len", "2048", "--device", "cpu"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all("qwen" in r["architecture"] for r in rows)
    row = next(r for r in rows if r["alias"] == "qwen2.5-7b-instruct")
    assert row["target_modules"] == TARGET_MODULES["qwen2"] and row["prompt_style"] == "chatml"
    assert row["licence"] == "Apache-2.0" and row["context_length"] == 32768 and row["params_exact"] > 7.6e9
    lora, qlora = row["memory"]["lora"], row["memory"]["qlora"]
    assert lora["setup"]["seq_len"] == 2048 and lora["setup"]["device"] == "cpu"
    assert qlora["total_bytes"] < lora["total_bytes"]
    assert set(lora["breakdown_bytes"]) >= {"weights", "activations", "optimizer", "logits", "overhead"}
    moe = next(r for r in rows if r["alias"] == "qwen3-30b-a3b")
    assert moe["target_parameters"] == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def test_models_bad_option(capsys):
    assert main(["models", "--batch-size", "0"]) == 2
    assert "batch_size must be positive" in capsys.readouterr().err


def test_architecture_outside_the_catalog_trains_with_inspected_targets(tmp_path):
    """BLOOM has no catalog entry and no target list: every linear layer except the head is adapted, and the
    training log says so."""
    from tuneforge.train.recipe import train

    assert "bloom" not in TARGET_MODULES and all(e.architecture != "bloom" for e in CATALOG)
    folder = save_tiny(tmp_path / "bloom", "bloom")
    data = write_qa_data(tmp_path / "qa.jsonl")
    logs: list[str] = []
    spec = make_tiny_spec(folder, data, max_steps=16, eval_steps=16, learning_rate=1e-2)
    result = train(
        spec, tmp_path / "run", quiet=True, on_event=lambda e: logs.append(e["message"]) if e["type"] == "log" else None
    )
    expected = ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"]
    line = next(m for m in logs if "LoRA r=" in m)
    assert (
        f"on {', '.join(expected)} (every linear layer except the output head (architecture 'bloom' found by "
        "inspection))" in line
    ), line
    resolved = json.loads((tmp_path / "run" / "spec.json").read_text())
    assert resolved["pretrainedmodel_config"]["target_modules"] == expected
    evals = [
        json.loads(x)["eval_loss"]
        for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if '"eval"' in x
    ]
    assert result.report["eval_loss"] < 0.8 * evals[0], evals
