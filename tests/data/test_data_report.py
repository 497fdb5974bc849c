"""The validation report: fields, warnings, statistics, caps, and its text and JSON forms."""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.data import DataOptions, validate_source
from tuneforge.data.report import MASK_CLOSE, MASK_OPEN

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
ALPACA = "### Instruction: {instruction}\n### Input: {input}\n### Response: {output}"


def test_report_of_a_good_file(tiny_tokenizer):
    r = validate_source(str(FIXTURES / "alpaca.jsonl"), DataOptions(prompt_template=ALPACA), tokenizer=tiny_tokenizer)
    assert r.ok and r.n_errors == 0
    assert (r.source_format, r.format, r.format_detail) == ("jsonl", "template", "completion: {output}")
    assert (r.n_rows, r.n_trainable) == (6, 6)
    assert r.columns == {"instruction": "string", "input": "string", "output": "string"}

    s = r.token_stats
    assert s["count"] == 6 and s["min"] <= s["median"] <= s["p95"] <= s["max"]
    assert (s["cutoff_len"], s["truncated"]) == (512, 0)

    fe = r.first_example
    assert (fe["line"], fe["tokenized"], fe["truncated"]) == (1, True, False)
    assert fe["rendered"] == (
        f"{MASK_OPEN}### Instruction: Add the numbers.\n### Input: 2 and 3\n### Response: {MASK_CLOSE}5<|im_end|>"
    )
    assert fe["segments"][1] == {"text": "5<|im_end|>", "trained": True}
    assert fe["n_trained"] == len(tiny_tokenizer("5", add_special_tokens=False)["input_ids"]) + 1

    kinds = {w.kind: w.message for w in r.warnings}
    assert kinds["duplicate_rows"].startswith("1 duplicate row (16.7%): line 6 repeats line 2;")
    assert kinds["short_completion"] == (
        "1 of 6 rows (16.7%) have a very short completion (under 3 characters), e.g. alpaca.jsonl line 1: '5'"
    )
    assert "empty_prompt_field" in kinds


def test_truncation_share_warning(tiny_tokenizer):
    r = validate_source(
        str(FIXTURES / "alpaca.jsonl"), DataOptions(prompt_template=ALPACA, cutoff_len=40), tokenizer=tiny_tokenizer
    )
    s = r.token_stats
    assert s["truncated"] > 0 and s["truncated_share"] == s["truncated"] / 6
    (w,) = [w for w in r.warnings if w.kind == "truncated"]
    assert w.message.startswith(
        f"{s['truncated']} of 6 examples ({s['truncated'] / 6:.1%}) are longer than cutoff_len 40"
    )


def test_without_tokenizer_token_stats_are_skipped_and_said_so():
    r = validate_source(data_path=str(FIXTURES / "chat.jsonl"))
    assert r.ok and r.token_stats is None
    assert r.to_dict()["token_stats_skipped"] == "no tokenizer given; pass --model to count tokens"
    assert r.first_example["tokenized"] is False
    assert r.first_example["rendered"] == (
        f"{MASK_OPEN}<system>\nYou are terse.\n{MASK_CLOSE}{MASK_OPEN}<user>\nWhat is 2+2?\n{MASK_CLOSE}"
        "<assistant>\nfour\n"
    )
    text = r.to_text()
    assert "Token lengths: skipped (no tokenizer given; pass --model to count tokens)" in text


def test_errors_are_capped_but_all_counted(tmp_path):
    p = tmp_path / "big.jsonl"
    with open(p, "w") as f:
        for i in range(1000):
            f.write('{"prompt": "q", "completion": ""}\n' if i % 2 else "{broken\n")
    r = validate_source(data_path=str(p), max_errors=20)
    assert len(r.errors) == 20
    assert r.error_counts == {"json_syntax": 500, "empty_field": 500}
    assert r.n_errors == 1000 and r.n_rows == 1000 and not r.ok
    text = r.to_text()
    assert "Errors: 1,000 (json_syntax 500, empty_field 500); the first 20 are shown" in text
    assert text.count("\n  - big.jsonl line") == 20


def test_to_dict_is_json_and_to_text_has_every_section(tiny_tokenizer):
    r = validate_source(str(FIXTURES / "fields.jsonl"), DataOptions(prompt_template=ALPACA), tokenizer=tiny_tokenizer)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["ok"] is False and d["n_errors"] == 6 and d["format"] == "template"
    assert d["errors"][0] == {
        "kind": "missing_field",
        "message": "fields.jsonl line 2: field 'input' is missing; the template needs it in the prompt",
        "line": 2,
        "row": 2,
        "field": "input",
        "column": None,
    }
    assert d["columns"]["output"] == "int|null|string"
    text = r.to_text()
    for part in (
        f"Dataset {FIXTURES / 'fields.jsonl'}: NOT TRAINABLE",
        "read as      jsonl",
        "format       template (completion: {output})",
        "rows         7 (1 without errors)",
        "columns      instruction: list|string, input: string, output: int|null|string",
        "Errors: 6 (empty_field 2, not_text 2, missing_field 1, null_field 1)",
        "  - fields.jsonl line 3: field 'output' is null; the template needs it as the completion",
        "Token lengths (1 example, cutoff_len 512): min",
        "First example (line 1, ",
    ):
        assert part in text, part


def test_summary_line_for_exceptions():
    r = validate_source(data_path=str(FIXTURES / "ragged.csv"))
    assert r.summary() == (
        f"{FIXTURES / 'ragged.csv'}: not trainable: 2 errors (csv_ragged 2); first: ragged.csv line 3: 3 fields, "
        "but the header has 2 (prompt, completion); a value containing ',' needs double quotes"
    )


def test_duplicates_in_a_file_without_lines_cite_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b", "a", "a"]}), tmp_path / "d.parquet")
    r = validate_source(data_path=str(tmp_path / "d.parquet"))
    (w,) = [w for w in r.warnings if w.kind == "duplicate_rows"]
    assert w.message.startswith("2 duplicate rows (50.0%): row 3 repeats row 1, row 4 repeats row 1;")
