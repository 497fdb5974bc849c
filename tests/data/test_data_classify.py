"""Classification rows (data_config.task: classification): label set, counts per class, and every bad input named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.data import DataOptions, DataValidationError, prepare_dataset, validate_source
from tuneforge.data.classify import ClassExample, looks_mojibake
from tuneforge.errors import TuneforgeError

CLS = DataOptions(task="classification", cutoff_len=32)


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _rows(counts: dict, text: str = "some text") -> list[dict]:
    return [{"text": f"{text} {i}", "label": label} for label, n in counts.items() for i in range(n)]


def test_labels_counts_and_examples(tmp_path, tiny_tokenizer):
    path = _jsonl(tmp_path / "d.jsonl", _rows({"positive": 6, "negative": 8, "neutral": 7}))
    r = validate_source(path, CLS, tokenizer=tiny_tokenizer)
    assert r.ok and r.format == "classification" and r.format_detail == "text: text, label: label"
    assert r.labels == {"negative": 8, "neutral": 7, "positive": 6}  # alphabetical: ids are stable
    assert r.columns_used == ["text", "label"] and r.to_dict()["labels"] == r.labels
    assert "labels       3 classes: negative 8, neutral 7, positive 6" in r.to_text()
    assert r.first_example["label"] == "positive" and r.first_example["n_tokens"] > 0
    assert not r.warnings

    data = prepare_dataset(path, CLS, tokenizer=tiny_tokenizer, split_fractions={"train": 0.8, "validation": 0.2})
    assert data.labels == ["negative", "neutral", "positive"]
    assert all(isinstance(e, ClassExample) for e in data.train + data.validation)
    for ex, row in zip(data.train, data.train_rows, strict=True):
        assert data.labels[ex.label] == row["label"]
        assert list(ex.input_ids) == tiny_tokenizer(row["text"])["input_ids"]


def test_integer_labels_in_numeric_order_and_truncation(tmp_path, tiny_tokenizer):
    rows = _rows({10: 5, 2: 5, 1: 5})
    rows[0]["text"] = "word " * 100
    r = validate_source(_jsonl(tmp_path / "d.jsonl", rows), CLS, tokenizer=tiny_tokenizer)
    assert r.ok and list(r.labels) == ["1", "2", "10"]
    (w,) = [w for w in r.warnings if w.kind == "truncated"]
    assert "longer than cutoff_len 32 tokens and are cut to it: the classifier sees only their start" in w.message
    data = prepare_dataset(str(tmp_path / "d.jsonl"), CLS, tokenizer=tiny_tokenizer, split_fractions={"train": 1.0})
    assert max(len(e) for e in data.train) == 32


def test_bad_input_is_named(tmp_path, tiny_tokenizer):
    rows = _rows({"a": 5, "b": 5})
    rows[2]["text"] = "   "
    rows[6]["text"] = ""
    rows[3]["label"] = 1.5
    del rows[7]["label"]
    r = validate_source(_jsonl(tmp_path / "d.jsonl", rows), CLS)
    assert not r.ok
    messages = [e.message for e in r.errors]
    assert "d.jsonl line 3: 'text' is empty; every row needs text" in messages
    assert "d.jsonl line 7: 'text' is empty; every row needs text" in messages
    assert any(m.startswith("d.jsonl line 4: label 1.5 in 'label' is not allowed") for m in messages)
    assert "d.jsonl line 8: no 'label' field" in messages
    with pytest.raises(DataValidationError):
        prepare_dataset(str(tmp_path / "d.jsonl"), CLS, tokenizer=tiny_tokenizer)


def test_missing_label_column_single_class_and_mixed_labels(tmp_path):
    r = validate_source(_jsonl(tmp_path / "a.jsonl", [{"text": "x", "labels": "a"}] * 4), CLS)
    (e,) = r.errors
    assert e.kind == "missing_column" and "no column 'label' (did you mean 'labels'?)" in e.message
    assert "data_config.label_column" in e.message

    r = validate_source(_jsonl(tmp_path / "b.jsonl", _rows({"spam": 6})), CLS)
    assert [e.kind for e in r.errors] == ["single_class"]
    assert "every row has the label 'spam' in 'label'; a classifier needs at least two classes" in r.errors[0].message

    r = validate_source(_jsonl(tmp_path / "c.jsonl", _rows({"spam": 3, 1: 3})), CLS)
    assert [e.kind for e in r.errors] == ["mixed_labels"]

    path = tmp_path / "d.csv"
    path.write_text("review,stars\nok,1\n")
    opts = DataOptions(task="classification", text_column="review", label_column="rating")
    r = validate_source(str(path), opts)
    assert (
        "d.csv: no column 'rating'" in r.errors[0].message and "the columns are: review, stars" in r.errors[0].message
    )


def test_warnings_small_class_imbalance_and_mojibake(tmp_path):
    rows = _rows({"common": 60, "rare": 3, "mid": 6})
    rows[1]["text"] = "cafÃ© au lait"
    rows[2]["text"] = "driverless cars_\ufffd_ no thanks"
    r = validate_source(_jsonl(tmp_path / "d.jsonl", rows), CLS)
    assert r.ok
    kinds = {w.kind: w.message for w in r.warnings}
    assert "class 'rare' (3) has fewer than 5 rows" in kinds["small_class"]
    assert "heavy class imbalance: 'common' has 20x the rows of 'rare' (60 vs 3)" in kinds["imbalance"]
    assert kinds["mojibake"].startswith("d.jsonl: 2 rows (2.9%) have encoding damage in 'text'")
    assert "line 2: 'cafÃ© au lait'" in kinds["mojibake"]
    long = _rows({"a": 5, "b": 5})
    long[0]["text"] = "x" * 200 + " donâ€™t"
    (w,) = [w for w in validate_source(_jsonl(tmp_path / "e.jsonl", long), CLS).warnings if w.kind == "mojibake"]
    assert "e.jsonl line 1: ...'xxx" in w.message and "x donâ€™t'" in w.message  # the damage, not the start


def test_mojibake_detector():
    for damaged in ("cafÃ©", "donâ€™t", "x\ufffdy", "Ã¼ber"):
        assert looks_mojibake(damaged), damaged
    for clean in ("café", "don\u2019t", "Ångström", "naïve résumé", "ÂB", "I love it!"):
        assert not looks_mojibake(clean), clean


def test_validation_file_takes_the_training_label_ids(tmp_path, tiny_tokenizer):
    train = _jsonl(tmp_path / "t.jsonl", _rows({"a": 5, "b": 5, "c": 5}))
    val = _jsonl(tmp_path / "v.jsonl", _rows({"c": 2, "b": 2}))
    data = prepare_dataset(train, CLS, tokenizer=tiny_tokenizer, validation_data_path=val)
    assert [data.labels[e.label] for e in data.validation] == [r["label"] for r in data.validation_rows]
    bad = _jsonl(tmp_path / "w.jsonl", _rows({"a": 2, "zzz": 2}))
    with pytest.raises(TuneforgeError, match=r"w.jsonl: label 'zzz' in 'label' does not occur in the training data"):
        prepare_dataset(train, CLS, tokenizer=tiny_tokenizer, validation_data_path=bad)
