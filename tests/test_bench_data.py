"""bench/bench_data.py: the training benchmark's generated set is deterministic and keeps its length distribution
(the benchmark's figures are only comparable across runs and machines if both hold)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
bench_data = pytest.importorskip("bench_data")


def test_same_arguments_same_bytes(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    bench_data.write_rows(a, 200, seed=0)
    bench_data.write_rows(b, 200, seed=0)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert bench_data.make_rows(50, seed=1) != bench_data.make_rows(50, seed=0)


def test_rows_are_instruction_rows_with_a_log_normal_length():
    rows = bench_data.make_rows(2000, seed=0)
    assert all(set(r) == {"prompt", "output"} and r["prompt"].strip() and r["output"].strip() for r in rows)
    words = sorted(len((r["prompt"] + " " + r["output"]).split()) for r in rows)
    median, p95 = words[len(words) // 2], words[int(0.95 * (len(words) - 1))]
    # ~1.3 SmolLM2 tokens per word: median ~150 tokens, p95 ~360-400, a tail that cutoff_len 512 clips.
    assert 100 <= median <= 130, median
    assert 260 <= p95 <= 330, p95
    assert words[-1] > 400
    prompt_share = sum(len(r["prompt"].split()) for r in rows) / sum(words)
    assert 0.12 <= prompt_share <= 0.35, prompt_share
    assert len({json.dumps(r) for r in rows}) == len(rows)
