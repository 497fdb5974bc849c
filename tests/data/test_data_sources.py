"""Reading every source kind, with the places (1-based lines, rows) that error messages cite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.data import DataOptions, sources, validate_source
from tuneforge.data.sources import SourceError, open_source

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
ALPACA = "### Instruction: {instruction}\n### Input: {input}\n### Response: {output}"


def read(path, **kw):
    with open_source(str(path), **kw) as src:
        return src, list(src.records())


def only_error(report):
    assert not report.ok
    assert report.n_errors == 1, [e.message for e in report.errors]
    return report.errors[0]


# --- good files ---------------------------------------------------------------------------------------------------


def test_jsonl_records_carry_their_line():
    src, recs = read(FIXTURES / "alpaca.jsonl")
    assert src.kind == "jsonl" and src.schema is None
    assert [r.line for r in recs] == [1, 2, 3, 4, 5, 6]
    assert recs[1].data == {"instruction": "Translate to French.", "input": "hello world", "output": "bonjour le monde"}


def test_json_array_pretty_printed_lines_are_where_records_start():
    src, recs = read(FIXTURES / "alpaca.json")
    assert src.kind == "json"
    assert [(r.row, r.line) for r in recs] == [(1, 2), (2, 7), (3, 12)]
    assert recs[2].data["output"] == "xof"


def test_json_lines_saved_as_json_skip_blank_lines():
    src, recs = read(FIXTURES / "lines_saved_as.json")
    assert src.kind == "jsonl"
    assert [(r.row, r.line) for r in recs] == [(1, 1), (2, 2), (3, 4)]


def test_json_document_with_one_list_of_records():
    src, recs = read(FIXTURES / "wrapped.json")
    assert src.detail == "records under key 'data'"
    assert [r.data for r in recs] == [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]


def test_csv_sniffs_semicolon_strips_bom_and_keeps_quoted_newlines():
    src, recs = read(FIXTURES / "semicolon_bom.csv")
    assert src.kind == "csv" and src.detail == "delimiter ';'"
    assert list(src.schema) == ["question", "answer", "note"]  # no BOM glued to the first name
    assert [r.line for r in recs] == [2, 3, 5]  # the second record spans lines 3-4
    assert recs[0].data["answer"] == "4, of course"
    assert recs[1].data == {"question": "Write two lines", "answer": "line one\nline two", "note": 'has "quotes"'}
    assert recs[2].data["note"] == ""


def test_csv_single_column_with_commas_in_text_is_not_split(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("text\nhello, world\nno comma here\n", encoding="utf-8")
    _src, recs = read(p)
    assert [r.data for r in recs] == [{"text": "hello, world"}, {"text": "no comma here"}]


def test_tsv_and_crlf(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_bytes(b"prompt\tcompletion\r\nhi, there\thello\r\n")
    src, recs = read(p)
    assert src.detail == "delimiter tab"
    assert recs[0].data == {"prompt": "hi, there", "completion": "hello"} and recs[0].line == 2


def test_parquet_schema_and_rows():
    src, recs = read(FIXTURES / "alpaca.parquet")
    assert src.kind == "parquet"
    assert src.schema == {"instruction": "string", "input": "string", "output": "string"}
    assert [r.row for r in recs] == [1, 2, 3] and all(r.line is None for r in recs)


def test_parquet_content_wins_over_extension(tmp_path):
    p = tmp_path / "really_parquet.csv"
    p.write_bytes((FIXTURES / "alpaca.parquet").read_bytes())
    src, recs = read(p)
    assert src.kind == "parquet" and len(recs) == 3
    assert "holds Parquet data" in src.notes[0]


def test_unknown_extension_is_read_by_content(tmp_path):
    (tmp_path / "data.txt").write_text('{"text": "a"}\n{"text": "b"}\n')
    src, recs = read(tmp_path / "data.txt")
    assert src.kind == "jsonl" and len(recs) == 2


def test_json_array_streams_across_small_chunks(tmp_path, monkeypatch):
    # Tiny chunks force every refill path: records, strings and numbers cut at chunk boundaries.
    monkeypatch.setattr(sources, "JSON_CHUNK", 7)
    rows = [{"text": f"row {i} \u00e9\u4e2d", "n": i * 1000003, "ok": i % 2 == 0} for i in range(50)]
    body = "[\n" + ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n"
    p = tmp_path / "a.json"
    p.write_text(body, encoding="utf-8")
    _, recs = read(p)
    assert [r.data for r in recs] == rows
    assert [r.line for r in recs] == list(range(2, 52))


def test_json_array_syntax_error_position_with_small_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "JSON_CHUNK", 5)
    p = tmp_path / "a.json"
    p.write_text('[\n {"text": "a"},\n {"text": "b"}\n {"text": "c"}\n]\n')
    _, recs = read(p)
    assert [r.data for r in recs[:2]] == [{"text": "a"}, {"text": "b"}]
    assert recs[2].error.message == "a.json line 4 column 2: invalid JSON: expected ',' or ']' after record 2"


def test_save_to_disk_folder_and_split(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}])
    datasets.DatasetDict({"train": ds, "validation": ds.select([0])}).save_to_disk(str(tmp_path / "saved"))
    src, recs = read(tmp_path / "saved")
    assert src.kind == "arrow" and src.detail == "split 'train'"
    assert src.schema == {"prompt": "string", "completion": "string"}
    assert [r.data for r in recs] == [{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}]
    _, recs = read(tmp_path / "saved", data_split="validation")
    assert len(recs) == 1
    with pytest.raises(
        SourceError, match=r"no split 'valid' \(did you mean 'validation'\?\); splits: train, validation"
    ):
        read(tmp_path / "saved", data_split="valid")


def test_hub_style_folder_with_configs_goes_through_load_dataset(tmp_path):
    # A local copy of a hub dataset repo: README.md declares two configs, like `data_subset` selects on the hub.
    repo = tmp_path / "repo"
    for cfg, text in (("en", "hello"), ("fr", "bonjour")):
        (repo / cfg).mkdir(parents=True)
        (repo / cfg / "train.jsonl").write_text(json.dumps({"text": text}) + "\n")
    (repo / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: en\n  data_files:\n  - split: train\n    path: en/train.jsonl\n"
        "- config_name: fr\n  data_files:\n  - split: train\n    path: fr/train.jsonl\n---\n"
    )
    src, recs = read(repo, data_subset="fr")
    assert src.kind == "hub" and src.detail == "subset 'fr', split 'train'"
    assert [r.data for r in recs] == [{"text": "bonjour"}]
    report = validate_source(str(repo), DataOptions(data_subset="de"))
    assert "BuilderConfig 'de' not found. Available: ['en', 'fr']" in only_error(report).message


def test_missing_file_suggests_a_close_name(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    err = only_error(validate_source(data_path=str(tmp_path / "trian.jsonl")))
    assert err.kind == "source"
    assert err.message == f"{tmp_path / 'trian.jsonl'}: no such file or folder (did you mean 'train.jsonl'?)"


def test_notes_for_arguments_that_do_not_apply_to_files():
    report = validate_source(str(FIXTURES / "text.jsonl"), DataOptions(data_subset="en", data_split="test"))
    assert report.ok
    assert any("data_subset 'en' ignored" in n for n in report.notes)
    assert any("data_split 'test' ignored" in n for n in report.notes)


# --- bad files: each gets its own message ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kind, message",
    [
        ("empty.jsonl", "empty_file", "empty.jsonl: the file is empty (0 bytes); it holds no records"),
        ("empty.csv", "empty_file", "empty.csv: the file is empty (0 bytes); it holds no records"),
        ("blank.json", "empty_file", "blank.json: the file is empty (only whitespace); it holds no records"),
        ("empty_array.json", "no_rows", "empty_array.json: the JSON array is empty"),
        (
            "header_only.csv",
            "no_rows",
            "header_only.csv: only a header line (instruction, input, output), no data rows",
        ),
        (
            "garbage.jsonl",
            "binary_file",
            "garbage.jsonl: not a text file (a NUL byte at byte 239, line 7); expected UTF-8 JSON, JSON Lines or "
            "CSV, or a Parquet file",
        ),
        (
            "utf16.csv",
            "encoding",
            "utf16.csv: the file is UTF-16 encoded; save it as UTF-8 (tuneforge reads UTF-8 only)",
        ),
        (
            "not_records.json",
            "not_an_object",
            'not_records.json: one JSON object, not a list of records; expected an array of records ([{"prompt": '
            '"...", "completion": "..."}, ...]) or one record per line (JSON Lines)',
        ),
        (
            "truncated.json",
            "json_syntax",
            "truncated.json line 4 column 12: invalid JSON: Unterminated string; the file ends in the middle of a "
            "record (truncated file?)",
        ),
        (
            "truncated.jsonl",
            "json_syntax",
            "truncated.jsonl line 3 column 10: invalid JSON: Unterminated string; the last line is cut off "
            "(truncated file?)",
        ),
        (
            "latin1.jsonl",
            "encoding",
            "latin1.jsonl line 2 column 14: not valid UTF-8 (byte 0xe9); save the file as UTF-8 (it may be Latin-1 "
            "or Windows-1252)",
        ),
        (
            "unclosed_quote.csv",
            "csv_syntax",
            "unclosed_quote.csv line 3: a quoted field starts in this record and is never closed (a missing closing "
            "'\"'); the rest of the file was read as part of it",
        ),
        (
            "broken.parquet",
            "read_error",
            "broken.parquet: not a readable Parquet file: Parquet file size is 208 bytes, smaller than the size "
            "reported by footer's",
        ),
    ],
)
def test_bad_file_message(name, kind, message):
    err = only_error(validate_source(data_path=str(FIXTURES / name)))
    assert err.kind == kind
    assert err.message.startswith(message)


def test_invalid_utf8_csv_names_line_and_column_and_keeps_checking():
    report = validate_source(str(FIXTURES / "latin1.csv"), DataOptions(prompt_template="{text} -> {label}"))
    err = only_error(report)
    assert (err.kind, err.line, err.column) == ("encoding", 4, 4)
    assert err.message == (
        "latin1.csv line 4 column 4: not valid UTF-8 (byte 0xe9); save the file as UTF-8 (it may be Latin-1 or "
        "Windows-1252)"
    )
    assert report.n_rows == 4 and report.n_trainable == 3  # the rows after it were still read


def test_ragged_csv_rows():
    report = validate_source(data_path=str(FIXTURES / "ragged.csv"))
    assert report.error_counts == {"csv_ragged": 2}
    assert [e.message for e in report.errors] == [
        "ragged.csv line 3: 3 fields, but the header has 2 (prompt, completion); a value containing ',' needs "
        "double quotes",
        "ragged.csv line 4: 1 field, but the header has 2 (prompt, completion); values are missing, or a line break "
        "inside a value is not quoted",
    ]
    assert report.n_trainable == 2


def test_json_lines_syntax_errors_and_non_objects():
    report = validate_source(data_path=str(FIXTURES / "syntax.jsonl"))
    assert report.error_counts == {"json_syntax": 2, "not_an_object": 1}
    assert [(e.line, e.column, e.message) for e in report.errors] == [
        (3, 28, "syntax.jsonl line 3 column 28: invalid JSON: Expecting value"),
        (4, 9, "syntax.jsonl line 4 column 9: invalid JSON: Expecting ':' delimiter"),
        (
            6,
            None,
            'syntax.jsonl line 6: an array, not a JSON object; each line must hold one record, such as {"prompt": '
            '"...", "completion": "..."}',
        ),
    ]
    assert report.n_rows == 6 and report.n_trainable == 3


def test_parquet_int_column_used_as_text():
    report = validate_source(
        str(FIXTURES / "int_answer.parquet"), DataOptions(prompt_template="Q: {question}\nA: {answer}")
    )
    err = only_error(report)
    assert (err.kind, err.field) == ("not_text", "answer")
    assert err.message == (
        "int_answer.parquet: column 'answer' holds int64 values, not text; the template needs it as the completion, "
        "so it must be text (convert the column to strings)"
    )
    assert report.columns == {"question": "string", "answer": "int64"}


def test_parquet_with_extension_but_other_content(tmp_path):
    (tmp_path / "x.parquet").write_text("a,b\n1,2\n")
    err = only_error(validate_source(data_path=str(tmp_path / "x.parquet")))
    assert err.message == "x.parquet: not a Parquet file (it does not start with the 'PAR1' magic bytes)"


def test_gzip_is_named(tmp_path):
    import gzip

    (tmp_path / "d.jsonl").write_bytes(gzip.compress(b'{"text": "a"}\n'))
    assert only_error(validate_source(data_path=str(tmp_path / "d.jsonl"))).message == (
        "d.jsonl: the file is gzip-compressed; decompress it first"
    )


@pytest.mark.parametrize(
    "body, rows, message",
    [
        ('["a", {"text": "b"}]', 2, "a.json line 1: a string, not a JSON object; the array must hold records, such as"),
        ('[{"text": "b"},]', 1, "a.json line 1 column 16: invalid JSON: a trailing comma before ']'"),
        ('[{"text": "b"}] extra', 1, "a.json line 1 column 17: invalid JSON: extra data after the array's closing ']'"),
        (
            '[{"text": "b"}\n',
            1,
            "a.json line 2: the file ends before the array is closed with ']' (truncated file?) after 1 record",
        ),
    ],
)
def test_json_array_structure_errors(tmp_path, body, rows, message):
    (tmp_path / "a.json").write_text(body)
    report = validate_source(data_path=str(tmp_path / "a.json"))
    assert report.n_rows == rows
    assert report.errors[0].message.startswith(message)


def test_csv_header_problems(tmp_path):
    (tmp_path / "h.csv").write_text("text,text,\na,b,c\n")
    report = validate_source(data_path=str(tmp_path / "h.csv"))
    assert [e.message for e in report.errors] == [
        "h.csv line 1: header column 3 has no name; every column needs one",
        "h.csv line 1: column 'text' appears twice in the header",
    ]
    assert report.n_rows == 1


def test_invalid_utf8_inside_a_json_array(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "JSON_CHUNK", 16)
    (tmp_path / "a.json").write_bytes(b'[\n {"text": "ok"},\n {"text": "ok"},\n {"text": "caf\xe9"}\n]\n')
    report = validate_source(data_path=str(tmp_path / "a.json"))
    assert report.n_rows == 2 and report.error_counts == {"encoding": 1}
    assert report.errors[0].message == (
        "a.json line 4: not valid UTF-8 (byte 0xe9); save the file as UTF-8 (it may be Latin-1 or Windows-1252)"
    )
