"""Token ids and loss masks: prompt masked, completion + EOS learned, chat loss only on assistant turns."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tuneforge.data import IGNORE_INDEX, DataOptions, prepare_dataset, validate_source
from tuneforge.data.tokenize import Encoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import CHATML, build_tokenizer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def all_examples(prepared):
    return prepared.train + prepared.validation + prepared.test


def only_example(tmp_path, rows, tok, **kw):
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    prepared = prepare_dataset(
        p, DataOptions(**{"cutoff_len": 512, **kw}), tokenizer=tok, split_fractions={"train": 1.0}
    )
    assert len(prepared.train) == 1
    return prepared.train[0]


def test_prompt_masked_completion_plus_eos_learned(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    ex = only_example(tmp_path, [{"q": "two plus two?", "a": "four"}], tok, prompt_template="Question: {q} Answer: {a}")
    prompt = tok("Question: two plus two? Answer: ")["input_ids"]
    completion = tok("four", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert list(ex.input_ids) == prompt + completion
    assert list(ex.labels) == [IGNORE_INDEX] * len(prompt) + completion
    assert ex.n_targets == len(completion)


def test_train_on_inputs_learns_everything(tmp_path, tiny_tokenizer):
    ex = only_example(
        tmp_path, [{"prompt": "Question: x", "completion": " four"}], tiny_tokenizer, train_on_inputs=True
    )
    assert ex.labels == ex.input_ids


def test_text_format_learns_all_text_and_eos(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    ex = only_example(tmp_path, [{"text": "The quick brown fox"}], tok)
    ids = tok("The quick brown fox", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert list(ex.input_ids) == ids and list(ex.labels) == ids


def test_truncation_to_cutoff_len(tmp_path, tiny_tokenizer):
    ex = only_example(
        tmp_path,
        [{"prompt": "Question: ", "completion": "the quick brown fox jumps over the lazy dog " * 5}],
        tiny_tokenizer,
        cutoff_len=16,
    )
    assert len(ex) == 16 and ex.labels[-1] != IGNORE_INDEX


def test_bos_is_kept_and_a_trailing_special_is_not_added_to_the_prompt(tmp_path):
    from tokenizers import processors

    tok = build_tokenizer()
    # A tokenizer that wraps every text as BOS ... EOS (some do): the prompt keeps BOS, loses the EOS.
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A <|im_end|>", special_tokens=[("<|endoftext|>", 0), ("<|im_end|>", 2)]
    )
    enc = Encoder(tok)
    assert enc.prefix == [0]
    ex = only_example(tmp_path, [{"prompt": "ab", "completion": "cd"}], tok)
    ab = tok("ab", add_special_tokens=False)["input_ids"]
    cd = tok("cd", add_special_tokens=False)["input_ids"]
    assert list(ex.input_ids) == [0, *ab, *cd, 2]
    assert list(ex.labels) == [IGNORE_INDEX] * (1 + len(ab)) + [*cd, 2]


def assistant_text(tok, ex):
    """The decoded trained tokens, turn by turn."""
    spans, cur = [], []
    for t, label in zip(ex.input_ids, ex.labels, strict=True):
        if label != IGNORE_INDEX:
            cur.append(t)
        elif cur:
            spans.append(tok.decode(cur)), cur.clear()
    if cur:
        spans.append(tok.decode(cur))
    return spans


def test_chat_loss_only_on_assistant_turns_and_their_end_token(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "hi again"},
    ]
    ex = only_example(tmp_path, [{"messages": messages}], tok)
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert list(ex.input_ids) == tok(rendered, add_special_tokens=False)["input_ids"]  # as inference tokenizes it
    assert assistant_text(tok, ex) == ["hi<|im_end|>", "hi again<|im_end|>"]


def test_chat_template_that_rewrites_earlier_turns_falls_back_to_content(tmp_path):
    tok = build_tokenizer()
    # The header depends on the whole conversation, so rendering prefix by prefix does not give prefixes.
    tok.chat_template = "{{ messages | length }} messages\n" + CHATML
    messages = [
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "hi again"},
    ]
    ex = only_example(tmp_path, [{"messages": messages}], tok)
    assert assistant_text(tok, ex) == ["hi<|im_end|>", "hi again<|im_end|>"]


def test_chat_template_that_raises_is_a_row_error(tmp_path):
    tok = build_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    p = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "u"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
        ],
    )
    report = validate_source(data_path=p, tokenizer=tok)
    assert report.error_counts == {"chat_template": 1}
    assert report.errors[0].message == (
        "c.jsonl line 1: the model's chat template rejects this conversation: System role not supported"
    )
    assert report.n_trainable == 1


def test_chat_needs_a_tokenizer_with_a_chat_template():
    tok = build_tokenizer()
    tok.chat_template = None
    report = validate_source(data_path=str(FIXTURES / "chat.jsonl"), tokenizer=tok)
    assert report.error_counts == {"chat_template": 1}
    assert report.errors[0].message.startswith("the tokenizer has no chat template, so 'messages' cannot be rendered")


def test_tokenizer_without_eos_is_refused():
    tok = build_tokenizer()
    tok.eos_token = None
    report = validate_source(data_path=str(FIXTURES / "text.jsonl"), tokenizer=tok)
    assert report.error_counts == {"config": 1}
    assert "the tokenizer has no EOS token" in report.errors[0].message


def test_prompt_that_fills_cutoff_len_is_an_error(tmp_path, tiny_tokenizer):
    p = write_jsonl(
        tmp_path / "d.jsonl",
        [{"prompt": "short", "completion": "ok then"}, {"prompt": "the quick brown fox " * 10, "completion": "ok"}],
    )
    report = validate_source(p, DataOptions(cutoff_len=12), tokenizer=tiny_tokenizer)
    assert report.error_counts == {"prompt_too_long": 1}
    err = report.errors[0]
    assert err.line == 2
    assert err.message.startswith("d.jsonl line 2: the prompt alone is ")
    assert err.message.endswith(
        "tokens and cutoff_len is 12; nothing of the completion would be learned (raise cutoff_len or shorten the prompt)"
    )
    chat = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "the quick brown fox " * 10},
                    {"role": "assistant", "content": "ok"},
                ]
            }
        ],
    )
    err = validate_source(chat, DataOptions(cutoff_len=12), tokenizer=tiny_tokenizer).errors[0]
    assert err.kind == "prompt_too_long" and "the first assistant turn starts at token" in err.message
    # With train_on_inputs the prompt itself is learned, so it is not an error.
    assert validate_source(p, DataOptions(cutoff_len=12, train_on_inputs=True), tokenizer=tiny_tokenizer).ok


def test_examples_are_deterministic(tmp_path, tiny_tokenizer):
    kw = dict(tokenizer=tiny_tokenizer, seed=7)
    options = DataOptions(cutoff_len=64, prompt_template="{instruction}\n{input}\n=> {output}")
    a, b = (prepare_dataset(str(FIXTURES / "alpaca.jsonl"), options, **kw) for _ in range(2))
    assert all_examples(a) == all_examples(b) and a.validation_rows == b.validation_rows


@pytest.mark.parametrize("name", ["alpaca.json", "alpaca.jsonl", "alpaca.parquet"])
def test_same_rows_same_examples_in_every_format(name, tiny_tokenizer):
    prepared = prepare_dataset(
        str(FIXTURES / name),
        DataOptions(cutoff_len=128, prompt_template="{instruction} {input} => {output}"),
        tokenizer=tiny_tokenizer,
        split_fractions={"train": 1.0},
    )
    for row, ex in zip(prepared.train_rows, prepared.train, strict=True):
        prompt = f"{row['instruction']} {row['input']} => "
        ids = tiny_tokenizer(prompt)["input_ids"]
        assert list(ex.input_ids[: len(ids)]) == ids
        assert ex.labels[len(ids) - 1] == IGNORE_INDEX and ex.labels[len(ids)] != IGNORE_INDEX
