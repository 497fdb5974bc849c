"""Preference pairs: the shapes TRL, LLaMA-Factory and OpenAI's DPO JSONL write, row-level validation with the
field named, token masks that cover only the answers, and `tuneforge data validate` showing the pair."""

from __future__ import annotations

import json

import pytest

from tuneforge.commands.data import add_validate_arguments, run_validate
from tuneforge.data import IGNORE_INDEX, DataOptions, prepare_dataset, validate_source
from tuneforge.data.pairs import PairExample

USER = {"role": "user", "content": "Say hi."}


def parse(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    add_validate_arguments(parser)
    return parser.parse_args(list(argv))


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def good_rows(n=12):
    return [{"prompt": f"what is {i} plus 1?", "chosen": f"{i + 1}", "rejected": f"{i + 7} maybe"} for i in range(n)]


def _answer_ids(side):
    return [t for t in side.labels if t != IGNORE_INDEX]


def test_text_pairs_share_the_prompt_and_learn_only_the_answers(tmp_path, tiny_tokenizer):
    path = write(tmp_path / "p.jsonl", good_rows())
    data = prepare_dataset(
        path,
        DataOptions(cutoff_len=64, data_format="preference", prompt_template="Q: {prompt}\nA: "),
        tokenizer=tiny_tokenizer,
        split_fractions={"train": 1.0},
    )
    assert data.report.ok and data.report.format == "preference" and len(data.train) == 12
    pair = data.train[0]
    assert isinstance(pair, PairExample)
    n_prompt = len(pair.chosen) - pair.chosen.n_targets
    assert pair.chosen.input_ids[:n_prompt] == pair.rejected.input_ids[:n_prompt]
    row = data.train_rows[0]
    prompt_text = tiny_tokenizer.decode(pair.chosen.input_ids[:n_prompt], skip_special_tokens=True)
    assert prompt_text == f"Q: {row['prompt']}\nA: "
    eos = tiny_tokenizer.eos_token_id
    assert _answer_ids(pair.chosen) == tiny_tokenizer(row["chosen"], add_special_tokens=False)["input_ids"] + [eos]
    assert _answer_ids(pair.rejected) == tiny_tokenizer(row["rejected"], add_special_tokens=False)["input_ids"] + [eos]


@pytest.mark.parametrize(
    "row",
    [
        {
            "prompt": [USER],
            "chosen": [{"role": "assistant", "content": "Hi!"}],
            "rejected": [{"role": "assistant", "content": "No."}],
        },
        {
            "chosen": [USER, {"role": "assistant", "content": "Hi!"}],
            "rejected": [USER, {"role": "assistant", "content": "No."}],
        },
        {
            "input": {"messages": [USER]},
            "preferred_output": [{"role": "assistant", "content": "Hi!"}],
            "non_preferred_output": [{"role": "assistant", "content": "No."}],
        },
    ],
    ids=["trl-explicit-prompt", "trl-implicit-prompt", "openai-dpo"],
)
def test_chat_pairs_render_with_the_chat_template(tmp_path, tiny_tokenizer, row):
    path = write(tmp_path / "c.jsonl", [row])
    report = validate_source(path, DataOptions(cutoff_len=64), tokenizer=tiny_tokenizer)
    assert report.ok and report.format == "preference", report.to_text()
    data = prepare_dataset(
        path,
        DataOptions(cutoff_len=64, data_format="preference"),
        tokenizer=tiny_tokenizer,
        split_fractions={"train": 1.0},
    )
    pair = data.train[0]
    n_prompt = len(pair.chosen) - pair.chosen.n_targets
    decode = lambda ids: tiny_tokenizer.decode(list(ids), skip_special_tokens=False)  # noqa: E731
    expected_prompt = tiny_tokenizer.apply_chat_template([USER], tokenize=False, add_generation_prompt=True)
    assert decode(pair.chosen.input_ids[:n_prompt]) == expected_prompt
    assert decode(_answer_ids(pair.chosen)) == "Hi!<|im_end|>"
    assert decode(_answer_ids(pair.rejected)) == "No.<|im_end|>"


def test_bad_pairs_are_reported_by_row_and_field(tmp_path, tiny_tokenizer):
    rows = good_rows(3) + [
        {"prompt": "a", "chosen": "same", "rejected": "same"},
        {"prompt": "b", "chosen": "", "rejected": "x"},
        {"prompt": "c", "chosen": 5, "rejected": "x"},
        {"prompt": "d", "chosen": "y"},
        {"prompt": "e", "chosen": "y", "rejected": None},
        {"prompt": "f", "chosen": [{"role": "user", "content": "y"}], "rejected": "x"},
    ]
    report = validate_source(write(tmp_path / "bad.jsonl", rows), DataOptions(cutoff_len=64), tokenizer=tiny_tokenizer)
    assert not report.ok and report.n_trainable == 3
    by_line = {e.line: (e.kind, e.field, e.message) for e in report.errors}
    assert by_line[4][:2] == ("identical_pair", "rejected") and "identical" in by_line[4][2]
    assert by_line[5][:2] == ("empty_field", "chosen")
    assert by_line[6][:2] == ("not_text", "chosen") and "a number (5), not text" in by_line[6][2]
    assert by_line[7][:2] == ("missing_field", "rejected")
    assert by_line[8][:2] == ("null_field", "rejected")
    assert by_line[9][:2] == ("bad_messages", "chosen") and "assistant messages only" in by_line[9][2]
    assert all(f"bad.jsonl line {line}:" in msg for line, (_, _, msg) in by_line.items())


def test_pairs_over_cutoff_are_counted_and_a_too_long_prompt_is_an_error(tmp_path, tiny_tokenizer):
    rows = good_rows(4) + [
        {"prompt": "q", "chosen": "word " * 40, "rejected": "x"},
        {"prompt": "word " * 40, "chosen": "y", "rejected": "x"},
    ]
    report = validate_source(write(tmp_path / "long.jsonl", rows), DataOptions(cutoff_len=24), tokenizer=tiny_tokenizer)
    assert [e.kind for e in report.errors] == ["prompt_too_long"] and report.errors[0].line == 6
    assert "cutoff_len is 24" in report.errors[0].message
    truncated = [w.message for w in report.warnings if w.kind == "truncated"]
    assert truncated and truncated[0].startswith("1 of 5 pairs (20.0%) have prompt + answer longer than cutoff_len 24")


def test_sft_data_for_preference_names_needed_and_found_columns(tmp_path, tiny_tokenizer):
    path = write(tmp_path / "sft.jsonl", [{"question": "q", "answer": "a"}] * 3)
    report = validate_source(path, DataOptions(data_format="preference"), tokenizer=tiny_tokenizer)
    assert not report.ok
    msg = report.errors[0].message
    assert "preference tuning needs pairs: columns 'chosen' and 'rejected'" in msg
    assert "'preferred_output'" in msg and msg.endswith("found: question, answer")


def test_data_validate_shows_the_first_pair(tmp_path, tiny_model_dir, capsys):
    path = write(tmp_path / "p.jsonl", good_rows())
    code = run_validate(parse(path, "--model", str(tiny_model_dir), "--cutoff-len", "64"))
    out = capsys.readouterr().out
    assert code == 0
    assert "format       preference (pairs: prompt -> chosen vs rejected)" in out
    assert "First pair (line 1, chosen " in out
    assert "[no loss]what is 0 plus 1?[/no loss]" in out
    assert "[chosen]   1<|im_end|>" in out and "[rejected] 7 maybe<|im_end|>" in out
