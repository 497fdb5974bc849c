"""A real third-party file no one on this project wrote: the Self-Instruct seed tasks (shared/datasets, CC BY-NC 4.0,
kept outside the package). Its rows nest a list of {input, output} records under `instances`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge.data import DataOptions, validate_source

SEED_TASKS = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "seed_tasks.jsonl"

# An optional extra: the file is not in the repository (its licence forbids it), only beside the team's checkouts.
pytestmark = pytest.mark.skipif(
    not SEED_TASKS.is_file(), reason=f"optional third-party data set absent: {SEED_TASKS} (CC BY-NC, not shipped)"
)


def test_flat_columns_of_a_nested_file_are_trainable(tiny_tokenizer):
    report = validate_source(
        str(SEED_TASKS),
        DataOptions(cutoff_len=512, prompt_template="Task: {name}\nInstruction: {instruction}"),
        tokenizer=tiny_tokenizer,
    )
    assert report.ok, report.to_text()
    assert report.n_rows == 175 and report.format == "template"


def test_a_nested_column_used_as_text_is_named_with_its_line(tiny_tokenizer):
    report = validate_source(
        str(SEED_TASKS),
        DataOptions(cutoff_len=512, prompt_template="{instruction}\n{instances}"),
        tokenizer=tiny_tokenizer,
    )
    assert not report.ok
    first = report.errors[0]
    assert first.line == 1 and first.field == "instances"
    assert "seed_tasks.jsonl line 1" in first.message and "instances" in first.message
