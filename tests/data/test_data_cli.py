"""`tuneforge data validate`: report on stdout, exit 0 when trainable and 1 when not."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tuneforge.commands.data import add_validate_arguments, run_validate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tuneforge data validate")
    add_validate_arguments(parser)
    return parser.parse_args(list(argv))


def test_trainable_file_with_model_prints_report_and_exits_0(tiny_model_dir, capsys):
    code = run_validate(
        parse(
            str(FIXTURES / "alpaca.jsonl"),
            "--template",
            "{instruction} {input} => {output}",
            "--model",
            str(tiny_model_dir),
            "--cutoff-len",
            "64",
        )
    )
    out = capsys.readouterr().out
    assert code == 0
    assert f"Dataset {FIXTURES / 'alpaca.jsonl'}: trainable" in out
    assert "Token lengths (6 examples, cutoff_len 64): min " in out
    assert "First example (line 1, " in out and "[no loss]Add the numbers. 2 and 3 => [/no loss]5<|im_end|>" in out


def test_untrainable_file_exits_1_with_line_numbers(capsys):
    code = run_validate(parse(str(FIXTURES / "ragged.csv")))
    out = capsys.readouterr().out
    assert code == 1
    assert "NOT TRAINABLE" in out
    assert "  - ragged.csv line 3: 3 fields, but the header has 2 (prompt, completion)" in out
    assert "Token lengths: skipped (no tokenizer given; pass --model to count tokens)" in out
    assert out.count("pass --model") == 1


def test_json_output(capsys):
    code = run_validate(parse(str(FIXTURES / "bad_chat.jsonl"), "--json", "--max-errors", "2"))
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["ok"] is False and report["format"] == "chat" and report["n_errors"] == 6
    assert [e["line"] for e in report["errors"]] == [2, 3]


def test_format_and_completion_column_options(tmp_path, capsys):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"answer": "4", "question": "2+2?", "text": "unused"}) + "\n")
    args = parse(
        str(p),
        "--template",
        "A: {answer} Q: {question}",
        "--completion-column",
        "answer",
        "--data-format",
        "template",
        "--json",
    )
    assert run_validate(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format_detail"] == "completion: {answer}"
    assert report["first_example"]["segments"] == [
        {"text": "A: ", "trained": False},
        {"text": "4 Q: 2+2?", "trained": True},
    ]


def test_template_escapes_typed_in_a_shell(capsys):
    args = parse(str(FIXTURES / "semicolon_bom.csv"), "--template", r"Q: {question}\nA: {answer}", "--json")
    assert run_validate(args) == 0
    first = json.loads(capsys.readouterr().out)["first_example"]
    assert first["segments"][0] == {"text": "Q: What is 2+2?\nA: ", "trained": False}
