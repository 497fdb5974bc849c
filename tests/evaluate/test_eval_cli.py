"""`tuneforge eval` on a tiny run: adapter vs its base (table and --json), a model alone, --compare, the per-row
file, and the bad-input errors that come before any model is loaded."""

from __future__ import annotations

import json

import pytest

from tiny import make_tiny_spec, write_qa_data
from tuneforge.cli import main
from tuneforge.train.recipe import train

TEMPLATE = "Question: {question}\nAnswer: {answer}"


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-cli")
    data = write_qa_data(root / "qa.jsonl", n=40)
    result = train(make_tiny_spec(tiny_model_dir, data, max_steps=4), root / "run", quiet=True)
    return result.output_dir, data


def test_adapter_against_its_base_as_json(run, tmp_path, capsys):
    out_dir, data = run
    rows = tmp_path / "rows.jsonl"
    assert (
        main(
            [
                "eval",
                str(out_dir),
                str(data),
                "--template",
                TEMPLATE,
                "--json",
                "--limit",
                "6",
                "--quiet",
                "--output",
                str(rows),
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert list(result) == ["base", "adapter"]
    assert list(result["adapter"]) == [
        "exact_match",
        "normalized_exact_match",
        "token_f1",
        "rouge_l",
        "chrf",
        "test_loss",
        "test_perplexity",
    ]
    lines = [json.loads(x) for x in rows.read_text().splitlines()]
    assert len(lines) == 6 and set(lines[0]["answers"]) == {"base", "adapter"}
    assert sum(r["scores"]["adapter"]["exact_match"] for r in lines) / 6 == pytest.approx(
        result["adapter"]["exact_match"]
    )
    # A second evaluation never overwrites the first one's rows.
    assert (
        main(
            [
                "eval",
                str(out_dir / "adapter"),
                str(data),
                "--template",
                TEMPLATE,
                "--json",
                "--limit",
                "2",
                "--quiet",
                "--output",
                str(rows),
                "--metrics",
                "exact_match,chrf",
            ]
        )
        == 0
    )
    assert list(json.loads(capsys.readouterr().out)["base"]) == ["exact_match", "chrf"]
    assert len(rows.read_text().splitlines()) == 6 and (tmp_path / "rows-2.jsonl").is_file()


def test_model_alone_and_compare_print_a_table(run, tiny_model_dir, tmp_path, capsys):
    out_dir, data = run
    assert (
        main(
            [
                "eval",
                str(tiny_model_dir),
                str(data),
                "--template",
                TEMPLATE,
                "--limit",
                "3",
                "--quiet",
                "--output",
                str(tmp_path / "a.jsonl"),
                "--compare",
                str(out_dir),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "evaluated on 3 rows" in text and "model" in text and "compare" in text
    assert text.splitlines()[4].split() == ["metric", "model", "compare"]
    assert "exact_match" in text and "per-row results:" in text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--metrics", "accuracy"], "--metrics: 'accuracy' does not fit this data (text task)"),
        (["--metrics", "bleu"], "--metrics: unknown metric 'bleu'"),
        (["--format", "prompt_completion"], "not trainable"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_loading_a_model(run, tmp_path, capsys, extra, message):
    out_dir, data = run
    args = ["eval", str(out_dir), str(data), "--output", str(tmp_path / "x.jsonl")]
    args += [] if "--format" in extra else ["--template", TEMPLATE]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("tuneforge: error: ") and message in err
    assert not (tmp_path / "x.jsonl").exists()


def test_a_missing_adapter_or_model_is_named(tmp_path, capsys):
    data = write_qa_data(tmp_path / "qa.jsonl", n=4)
    assert main(["eval", str(tmp_path / "nope"), str(data), "--template", TEMPLATE]) == 2
    assert "nope" in capsys.readouterr().err
