"""Seq2seq rows (data_config.task: seq2seq): source and target tokenized apart, every bad input named by row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.data import DataOptions, DataValidationError, prepare_dataset, validate_source
from tuneforge.data.seq2seq import Seq2SeqExample

S2S = DataOptions(task="seq2seq", text_column="src", label_column="tgt", cutoff_len=24)


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _rows(n: int = 10) -> list[dict]:
    return [{"src": f"reverse: a b {i}", "tgt": f"{i} b a", "id": i} for i in range(n)]


def test_examples_end_with_eos_and_the_report_says_what_is_what(tmp_path, tiny_tokenizer):
    path = _jsonl(tmp_path / "d.jsonl", _rows())
    r = validate_source(path, S2S, tokenizer=tiny_tokenizer)
    assert r.ok and r.format == "seq2seq" and r.format_detail == "source: src, target: tgt"
    assert r.columns_used == ["src", "tgt"] and r.columns_ignored == ["id"]
    assert r.first_example["segments"] == [
        {"text": "reverse: a b 0\n", "trained": False},
        {"text": "0 b a", "trained": True},
    ]
    assert "Target lengths: min" in r.to_text() and r.token_stats["target"]["truncated"] == 0
    data = prepare_dataset(path, S2S, tokenizer=tiny_tokenizer, split_fractions={"train": 0.8, "validation": 0.2})
    assert len(data.train) == 8 and len(data.validation) == 2
    eos = tiny_tokenizer.eos_token_id
    for ex, row in zip(data.train, data.train_rows, strict=True):
        assert isinstance(ex, Seq2SeqExample)
        assert list(ex.input_ids) == tiny_tokenizer(row["src"])["input_ids"]
        # the tiny tokenizer adds no end-of-sequence token: the target gets one, so the model learns to stop
        assert list(ex.labels) == [*tiny_tokenizer(row["tgt"])["input_ids"], eos]
        assert ex.n_targets == len(ex.labels) and len(ex) == len(ex.input_ids) + len(ex.labels)


def test_long_sources_and_targets_are_cut_with_warnings(tmp_path, tiny_tokenizer):
    rows = _rows()
    rows[3]["src"] = "word " * 60
    rows[5]["tgt"] = "word " * 60
    path = _jsonl(tmp_path / "d.jsonl", rows)
    r = validate_source(path, S2S, tokenizer=tiny_tokenizer)
    assert r.ok
    kinds = {w.kind: w.message for w in r.warnings}
    assert "1 of 10 sources (10.0%) in 'src' are longer than cutoff_len 24 tokens" in kinds["truncated"]
    assert "1 target in 'tgt' (10.0%) is longer than cutoff_len 24" in kinds["truncated_target"]
    data = prepare_dataset(path, S2S, tokenizer=tiny_tokenizer, split_fractions={"train": 1.0})
    assert max(len(e.input_ids) for e in data.train) == 24
    cut = max(data.train, key=lambda e: len(e.labels))
    assert len(cut.labels) == 24 and cut.labels[-1] == tiny_tokenizer.eos_token_id


def test_bad_rows_are_named(tmp_path, tiny_tokenizer):
    rows = _rows()
    rows[1]["src"] = "  "
    rows[4]["tgt"] = ""
    del rows[6]["tgt"]
    rows[7]["tgt"] = 7
    r = validate_source(_jsonl(tmp_path / "d.jsonl", rows), S2S, tokenizer=tiny_tokenizer)
    assert not r.ok
    messages = [e.message for e in r.errors]
    assert any("line 2: 'src' is empty; every row needs a source text" in m for m in messages)
    assert any("line 5: 'tgt' is empty; every row needs a target text" in m for m in messages)
    assert any("line 7: no 'tgt' field (the target text)" in m for m in messages)
    assert any("line 8: 'tgt' is int, not text (the target)" in m for m in messages)
    with pytest.raises(DataValidationError):
        prepare_dataset(str(tmp_path / "d.jsonl"), S2S, tokenizer=tiny_tokenizer)


def test_missing_column_is_named_with_the_option(tmp_path, tiny_tokenizer):
    path = _jsonl(tmp_path / "d.jsonl", [{"src": "a", "target": "b"}] * 3)
    r = validate_source(path, S2S, tokenizer=tiny_tokenizer)
    (err,) = r.errors
    assert "no column 'tgt'" in err.message and "data_config.label_column" in err.message
