"""`tuneforge estimate`: memory and time before a run, from the job's own data and settings."""

from __future__ import annotations

import json

from tiny import make_tiny_spec, write_qa_data
from tuneforge.cli import main


def test_estimate_reports_memory_time_and_fit(tiny_model_dir, tmp_path, capsys):
    spec = make_tiny_spec(tiny_model_dir, write_qa_data(tmp_path / "qa.jsonl"))
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.to_json(redact=False))
    assert main(["estimate", str(spec_file), "--device", "cpu", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert est["device"] == "cpu" and est["fits"] is True
    assert est["train_examples"] == 64 and est["steps_per_epoch"] == 8
    assert 0 < est["longest_example_tokens"] <= 64  # from the tokenized data, capped by cutoff_len
    breakdown = est["memory"]["breakdown_bytes"]
    assert est["memory"]["total_bytes"] >= breakdown["weights"] + breakdown["activations"]
    assert est["seconds_per_epoch"] > 0 and est["peak_flops"] > 0

    # A GPU that is not here: memory from --gpu-memory, time only with --gpu-tflops.
    assert main(["estimate", str(spec_file), "--device", "cuda", "--gpu-memory", "0.0001"]) == 1
    text = capsys.readouterr().out
    assert "DOES NOT FIT" in text and "pass --gpu-tflops" in text
    assert main(["estimate", str(spec_file), "--device", "cuda", "--gpu-memory", "80", "--gpu-tflops", "300"]) == 0
    assert "time per epoch" in capsys.readouterr().out
