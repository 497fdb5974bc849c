"""A real SIGKILL of `tuneforge train` mid-run, then `--resume`: same result as a run that was never killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tiny import make_tiny_spec as make_spec
from tiny import write_qa_data
from tuneforge.cli import main
from tuneforge.train.recipe import work_dir_for


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tiny_model_dir, tmp_path):
    qa_data = write_qa_data(tmp_path / "qa.jsonl")
    spec = make_spec(tiny_model_dir, qa_data, max_steps=120, save_steps=5, eval_steps=40, batch_size=4)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.to_json(redact=False))
    assert main(["train", str(spec_file), "-o", str(tmp_path / "clean"), "-q"]) == 0

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneforge.cli", "train", str(spec_file), "-o", str(out), "-q"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    work = work_dir_for(out)
    deadline = time.time() + 120
    while not any(work.glob("checkpoint-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed run must not look finished"
    checkpoints = sorted(work.glob("checkpoint-*"))
    assert checkpoints, "the run was killed before its first checkpoint"
    resumed_from = int(checkpoints[-1].name.split("-")[1])
    assert resumed_from < 120

    assert main(["train", str(spec_file), "-o", str(out), "-q", "--resume"]) == 0
    clean = [json.loads(x) for x in (tmp_path / "clean" / "metrics.jsonl").read_text().splitlines()]
    killed = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["type"], r["step"]) for r in clean] == [(r["type"], r["step"]) for r in killed]
    for a, b in zip(clean, killed, strict=True):
        key = "loss" if a["type"] == "train" else "eval_loss"
        assert b[key] == pytest.approx(a[key], rel=1e-5), (a, b)
