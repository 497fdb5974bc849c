"""run_job's MetricsTail: how a multi-process job's metrics.jsonl (written by rank 0) becomes the job's events."""

from __future__ import annotations

import json
import os

from tuneforge.jobs.run_job import MetricsTail
from tuneforge.train.metrics import MetricsLog


def _line(step: int, kind: str = "train") -> dict:
    return {"type": kind, "step": step, "loss": 1.0 / step if step else 2.0}


def test_new_lines_are_recorded_once_and_a_line_being_written_waits(tmp_path):
    path, seen = tmp_path / "metrics.jsonl", []
    tail = MetricsTail(path, seen.append, after_step=-1)
    tail.poll()  # no file yet: nothing
    log = MetricsLog(path)
    log.write(_line(0, "eval"))
    log.write(_line(1))
    with open(path, "a") as fh:
        fh.write(json.dumps(_line(2))[:-3])  # cut mid-line: rank 0 is writing it
    tail.poll()
    assert [(r["type"], r["step"]) for r in seen] == [("eval", 0), ("train", 1)]
    with open(path, "a") as fh:
        fh.write(json.dumps(_line(2))[-3:] + "\n")
    tail.poll()
    tail.poll()
    assert [r["step"] for r in seen] == [0, 1, 2]


def test_a_resume_records_only_the_steps_after_its_checkpoint(tmp_path):
    path, seen = tmp_path / "metrics.jsonl", []
    log = MetricsLog(path)
    for step in range(1, 8):  # the earlier attempt: recorded by it, died after step 7
        log.write(_line(step))
    tail = MetricsTail(path, seen.append, after_step=4)  # resuming from checkpoint-4
    tail.poll()
    assert seen == []  # steps 5..7 of the old file: recorded by the attempt that wrote them
    log.truncate_after(4)  # what the resumed run does first: a new file (os.replace) with steps 1..4
    inode = os.stat(path).st_ino
    tail.poll()
    assert seen == [] and tail.inode == inode
    for step in (5, 6):
        log.write(_line(step))
    tail.poll()
    assert [r["step"] for r in seen] == [5, 6]
