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


def test_estimate_of_a_multi_process_job_says_what_is_divided(tiny_model_dir, tmp_path, capsys):
    data = write_qa_data(tmp_path / "qa.jsonl")
    spec_file = tmp_path / "spec.json"
    single = make_tiny_spec(tiny_model_dir, data)
    fsdp = make_tiny_spec(tiny_model_dir, data, distributed={"strategy": "fsdp", "nproc_per_node": 2})
    estimates = []
    for spec in (single, fsdp):
        spec_file.write_text(spec.to_json(redact=False))
        assert main(["estimate", str(spec_file), "--device", "cpu", "--json"]) == 0
        estimates.append(json.loads(capsys.readouterr().out)["memory"])
    one, two = estimates
    assert (two["setup"]["strategy"], two["setup"]["world_size"], one["setup"]["world_size"]) == ("fsdp", 2, 1)
    # 2 layers: the two blocks FSDP holds gathered are the whole model, so the shards only add (tests/models checks
    # the division on a 70B shape).
    assert two["breakdown_bytes"]["weights"] > one["breakdown_bytes"]["weights"]
    assert two["processes_per_device"] == 2 and two["total_bytes"] == 2 * two["per_process_bytes"]  # one machine

    assert main(["estimate", str(spec_file), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert (
        "processes         2 processes (fsdp: base weights sharded 2 ways; LoRA weights, gradients and optimizer "
        "state whole on each, 2 sharing this machine's memory)"
    ) in text
    assert "per process       " in text
