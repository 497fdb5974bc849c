"""prepare_dataset: refuses untrainable data, splits deterministically, and renders prompts for evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.data import IGNORE_INDEX, DataOptions, DataValidationError, prepare_dataset, split_indices
from tuneforge.data.split import split_counts
from tuneforge.errors import TuneforgeError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


def write_rows(path: Path, n: int, start: int = 0) -> str:
    with open(path, "w") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"q": f"what is {i} plus {i}?", "a": str(2 * i)}) + "\n")
    return str(path)


def test_refuses_untrainable_data_with_the_report(tiny_tokenizer):
    with pytest.raises(DataValidationError) as exc:
        prepare_dataset(str(FIXTURES / "ragged.csv"), DataOptions(cutoff_len=64), tokenizer=tiny_tokenizer)
    err = exc.value
    assert isinstance(err, TuneforgeError)
    assert err.report.error_counts == {"csv_ragged": 2}
    assert str(err) == err.report.summary()
    assert "Errors: 2 (csv_ragged 2)" in err.report.to_text()


def test_split_counts_and_minimums():
    assert split_counts(100, {"train": 0.9, "validation": 0.1}) == {"train": 90, "validation": 10, "test": 0}
    assert split_counts(100, {"train": 0.8, "validation": 0.1, "test": 0.1}) == {
        "train": 80,
        "validation": 10,
        "test": 10,
    }
    assert split_counts(5, {"train": 0.9, "validation": 0.1}) == {"train": 4, "validation": 1, "test": 0}
    assert split_counts(1, {"train": 0.9, "validation": 0.1}) == {"train": 1, "validation": 0, "test": 0}
    assert split_counts(2, {"train": 0.5, "validation": 0.25, "test": 0.25}) == {"train": 1, "validation": 1, "test": 0}
    assert split_counts(100, {"train": 0.5, "validation": 0.1}) == {"train": 50, "validation": 10, "test": 0}
    with pytest.raises(TuneforgeError, match=r"unknown split 'valid' \(did you mean 'validation'\?\)"):
        split_counts(10, {"train": 0.9, "valid": 0.1})
    with pytest.raises(TuneforgeError, match=r"add up to 1\.2, more than 1"):
        split_counts(10, {"train": 0.9, "validation": 0.3})


def test_split_is_deterministic_for_a_seed_and_disjoint():
    a = split_indices(50, {"train": 0.7, "validation": 0.2, "test": 0.1}, seed=1)
    assert a == split_indices(50, {"train": 0.7, "validation": 0.2, "test": 0.1}, seed=1)
    assert a != split_indices(50, {"train": 0.7, "validation": 0.2, "test": 0.1}, seed=2)
    assert sorted(a["train"] + a["validation"] + a["test"]) == list(range(50))
    assert all(v == sorted(v) for v in a.values())


def test_splits_rows_and_examples_line_up(tmp_path, tiny_tokenizer):
    path = write_rows(tmp_path / "d.jsonl", 40)
    prepared = prepare_dataset(
        path,
        DataOptions(cutoff_len=64, prompt_template="Q: {q}\nA: {a}"),
        tokenizer=tiny_tokenizer,
        split_fractions={"train": 0.5, "validation": 0.25, "test": 0.25},
        seed=3,
    )
    assert (len(prepared.train), len(prepared.validation), len(prepared.test)) == (20, 10, 10)
    assert prepared.report.splits == {"train": 20, "validation": 10, "test": 10}
    assert len(prepared.validation_rows) == 10 and len(prepared.test_rows) == 10
    seen = {r["q"] for r in prepared.train_rows + prepared.validation_rows + prepared.test_rows}
    assert len(seen) == 40
    for row, ex in zip(prepared.test_rows, prepared.test, strict=True):
        prompt_ids = prepared.prompt_ids(row)
        assert prepared.render_prompt(row) == f"Q: {row['q']}\nA: "
        assert list(ex.input_ids[: len(prompt_ids)]) == prompt_ids
        assert all(label == IGNORE_INDEX for label in ex.labels[: len(prompt_ids)])
        target = [t for t in ex.labels if t != IGNORE_INDEX]
        assert tiny_tokenizer.decode(target[:-1]) == prepared.reference(row) == row["a"]
        assert target[-1] == tiny_tokenizer.eos_token_id


def test_chat_prompt_for_evaluation(tiny_tokenizer):
    prepared = prepare_dataset(
        str(FIXTURES / "chat.jsonl"),
        DataOptions(cutoff_len=128),
        tokenizer=tiny_tokenizer,
        split_fractions={"train": 1.0},
    )
    row = prepared.train_rows[1]
    assert prepared.render_prompt(row) == (
        "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\nhi<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert prepared.reference(row) == "hi again"
    ex = prepared.train[1]
    ids = prepared.prompt_ids(row)
    assert list(ex.input_ids[: len(ids)]) == ids  # the evaluation prompt is the training sequence's prefix


def test_small_validation_split_warns_with_numbers(tmp_path, tiny_tokenizer):
    prepared = prepare_dataset(
        write_rows(tmp_path / "d.jsonl", 30),
        DataOptions(cutoff_len=64, prompt_template="Q: {q}\nA: {a}"),
        tokenizer=tiny_tokenizer,
    )
    (w,) = [w for w in prepared.report.warnings if w.kind == "small_validation"]
    assert w.message == (
        "the 'validation' fraction 0.1 of 30 rows gives 3 validation rows; fewer than 20 make the validation loss too "
        "noisy for early stopping and choosing the best checkpoint (add rows or raise the fraction)"
    )


def test_explicit_validation_file(tmp_path, tiny_tokenizer):
    train = write_rows(tmp_path / "train.jsonl", 30)
    val = write_rows(tmp_path / "val.jsonl", 25, start=100)
    prepared = prepare_dataset(
        train,
        DataOptions(cutoff_len=64, prompt_template="Q: {q}\nA: {a}"),
        validation_data_path=val,
        tokenizer=tiny_tokenizer,
        split_fractions={"train": 0.9, "validation": 0.1},
    )
    assert (len(prepared.train), len(prepared.validation), len(prepared.test)) == (30, 25, 0)
    assert prepared.validation_rows[0] == {"q": "what is 100 plus 100?", "a": "200"}
    assert prepared.validation_report.ok and prepared.validation_report.n_rows == 25
    assert not [w for w in prepared.report.warnings if w.kind == "small_validation"]


def test_bad_validation_file_is_refused(tmp_path, tiny_tokenizer):
    train = write_rows(tmp_path / "train.jsonl", 5)
    bad = tmp_path / "val.jsonl"
    bad.write_text('{"q": "x", "a": ""}\n')
    with pytest.raises(DataValidationError) as exc:
        prepare_dataset(
            train,
            DataOptions(cutoff_len=64, prompt_template="Q: {q}\nA: {a}"),
            validation_data_path=str(bad),
            tokenizer=tiny_tokenizer,
        )
    assert (
        exc.value.report.errors[0].message
        == "val.jsonl line 1: field 'a' is empty; the template needs it as the completion"
    )


def test_needs_a_tokenizer():
    with pytest.raises(TuneforgeError, match="needs the model's tokenizer"):
        prepare_dataset(str(FIXTURES / "text.jsonl"), DataOptions(cutoff_len=64), tokenizer=None)
