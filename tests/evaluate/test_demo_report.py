"""`tuneforge demo`'s reporting path on the tiny model (the real demo is the README's measured run): it takes its
numbers from train()'s held-out evaluation, prints the before/after table and writes demo.json."""

from __future__ import annotations

import json

from tiny import write_qa_data
from tuneforge import demo


def test_demo_reports_the_jobs_held_out_evaluation(tiny_model_dir, tmp_path, monkeypatch, capsys):
    demo_dir = tmp_path / "demo"
    demo_dir.mkdir()
    write_qa_data(demo_dir / "orders.jsonl", n=40)
    (demo_dir / "spec.yaml").write_text(
        json.dumps(
            {
                "pretrainedmodel_config": {"model_path": str(tiny_model_dir), "lora_r": 4},
                "data_config": {
                    "data_path": "unused",
                    "prompt_template": "Question: {question}\nAnswer: {answer}",
                    "cutoff_len": 64,
                    "data_split_config": {"train": 0.7, "validation": 0.15, "test": 0.15},
                },
                "training_config": {"batch_size": 8, "learning_rate": 3e-3, "eval_steps": 2, "precision": "fp32"},
            }
        )
    )
    monkeypatch.setattr(demo, "find_demo_dir", lambda: demo_dir)
    code = demo.run_demo(output=str(tmp_path / "run"), max_steps=2)
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "demo.json").read_text())
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    ev = report["evaluation"]
    assert summary["test_rows"] == ev["rows"] == 6
    assert summary["before"]["exact_match"] == ev["results"]["base"]["exact_match"]
    assert summary["after"]["exact_match"] == ev["results"]["adapter"]["exact_match"]
    assert summary["after"]["validation_loss"] == report["eval_loss"]
    assert f"exact_match ({ev['rows']} held-out)" in out and "validation loss" in out and "fine-tuned   :" in out
    beat = (
        ev["results"]["adapter"]["exact_match"] > ev["results"]["base"]["exact_match"]
        and summary["after"]["validation_loss"] < summary["before"]["validation_loss"]
    )
    assert code == (0 if beat else 1)
