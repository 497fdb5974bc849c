"""End to end on the real default model, SmolLM2-135M-Instruct (bundled GGUF -> cached HF folder): `tuneforge
train` for a handful of steps on the demo data, then `tuneforge generate` with the adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.cli import main

DEMO = Path(__file__).parents[1] / "examples" / "demo"


@pytest.mark.slow
def test_train_and_generate_on_smollm2(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            str(DEMO / "spec.yaml"),
            "-o",
            str(out),
            "-q",
            "--set",
            f"data_config.data_path={DEMO / 'orders.jsonl'}",
            "--set",
            "training_config.max_steps=4",
            "--set",
            "training_config.batch_size=4",
            "--set",
            "training_config.eval_steps=4",
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert report["total_parameters"] > 134_000_000 and report["steps"] == 4
    evals = [json.loads(x)["eval_loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert evals[-1] < evals[0], evals  # 4 steps at lr 1e-3 already move the validation loss down
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    capsys.readouterr()

    assert (
        main(
            [
                "generate",
                "--adapter",
                str(out / "adapter"),
                "--max-new-tokens",
                "24",
                "--raw",
                "Extract the order as JSON with keys name, item, quantity, city.\n"
                "Order: Alice ordered 3 mugs to be delivered in Oslo.\nJSON: ",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert len(text.strip()) > 0
