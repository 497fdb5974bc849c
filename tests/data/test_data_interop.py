"""Files written in the formats other tools publish: ShareGPT (LLaMA-Factory/Axolotl), Alpaca (Stanford, MonsterAPI's
sample template), TRL's conversational prompt/completion and OpenAI's chat fine-tuning format (weight, tools,
developer role, content parts). Each is detected, reported with the columns it uses, and masked at the token level."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.data import IGNORE_INDEX, DataOptions, prepare_dataset, validate_source
from tuneforge.data.formats import ALPACA_PREAMBLE, ALPACA_PREAMBLE_INPUT, AlpacaFormat, ChatFormat
from tuneforge.data.tokenize import Encoder, chat_example

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "interop"

# ChatML with tools, the way Qwen2.5's template renders them (definitions in the system turn, calls as JSON).
TOOL_CHATML = (
    "{% if tools %}<|im_start|>system\n# Tools\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] %}{{ m['content'] }}{% endif %}"
    "{% for c in m['tool_calls'] or [] %}<tool_call>{{ {'name': c['function']['name'], "
    "'arguments': c['function']['arguments']} | tojson }}</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tool_tokenizer():
    from tests.tiny import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = TOOL_CHATML
    return tok


def trained_text(tok, ex) -> str:
    """The text of the tokens the loss is taken on, runs joined by '|'."""
    runs, run = [], []
    for t, label in zip(ex.input_ids, ex.labels, strict=True):
        if label != IGNORE_INDEX:
            run.append(t)
        elif run:
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    return "|".join(tok.decode(r, skip_special_tokens=False) for r in runs)


def test_sharegpt_with_system_column_and_role_names(tiny_tokenizer):
    report = validate_source(str(FIXTURES / "sharegpt.jsonl"), tokenizer=tiny_tokenizer)
    assert report.format == "sharegpt"
    assert report.columns_used == ["conversations", "system"] and report.columns_ignored == []
    assert [e.message for e in report.errors] == [
        "sharegpt.jsonl line 3: turn 1 is from 'humna' (did you mean 'human'?); allowed: human, gpt, system, "
        "function_call, observation"
    ]
    text = report.to_text()
    assert "  format       sharegpt" in text and "  used         conversations, system" in text


def test_sharegpt_rows_train_assistant_turns_only(tmp_path, tiny_tokenizer):
    rows = [json.loads(line) for line in (FIXTURES / "sharegpt.jsonl").read_text().splitlines()[:2]]
    p = tmp_path / "s.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    prepared = prepare_dataset(
        str(p), DataOptions(cutoff_len=256), tokenizer=tiny_tokenizer, split_fractions={"train": 1.0}
    )
    first = next(ex for ex, row in zip(prepared.train, prepared.train_rows, strict=True) if "system" in row)
    assert tiny_tokenizer.decode(first.input_ids).startswith("<|im_start|>system\nYou answer in one word.<|im_end|>")
    assert trained_text(tiny_tokenizer, first) == "Paris.<|im_end|>|Madrid.<|im_end|>"


def test_sharegpt_tool_calls_and_observations(tool_tokenizer, tiny_tokenizer):
    path = str(FIXTURES / "sharegpt_toolcall.json")
    prepared = prepare_dataset(
        path, DataOptions(cutoff_len=4096), tokenizer=tool_tokenizer, split_fractions={"train": 1.0}
    )
    assert prepared.report.format == "sharegpt" and prepared.report.columns_used == ["conversations", "tools"]
    ex = next(e for e, r in zip(prepared.train, prepared.train_rows, strict=True) if "USD" in json.dumps(r))
    full = tool_tokenizer.decode(ex.input_ids)
    assert '"name": "convert_currency", "description": "Convert currency' in full  # the tool definitions
    assert '<|im_start|>tool\n{"converted_amount": 425.5' in full  # the observation is a tool turn
    assert trained_text(tool_tokenizer, ex) == (
        '<tool_call>{"name": "convert_currency", "arguments": {"amount": 500, "from_currency": "USD", '
        '"to_currency": "EUR"}}</tool_call><|im_end|>|Sure, 500 US dollars is approximately 425.50 Euros.<|im_end|>'
    )
    # A template without tool support would drop the calls: refused per row, not trained as empty turns.
    report = validate_source(path, tokenizer=tiny_tokenizer)
    assert report.error_counts == {"chat_template": 2}
    assert report.errors[0].message == (
        "sharegpt_toolcall.json line 2: the model's chat template does not render tool definitions (tool "
        "'convert_currency' is missing from the rendered text); use a model whose chat template supports tools"
    )


def test_openai_weight_zero_is_not_learned(tiny_tokenizer):
    row = json.loads((FIXTURES / "openai_chat.jsonl").read_text().splitlines()[0])
    conv = ChatFormat().conversation(row)
    assert [m.get("weight", 1) for m in conv.messages if m["role"] == "assistant"] == [0, 1]
    ((ids, flags),) = Encoder(tiny_tokenizer).encode_chats([conv])
    ex = chat_example(ids, flags, cutoff_len=512, train_on_inputs=False)
    assert tiny_tokenizer.decode(ex.input_ids).count("Paris") == 2  # the weight-0 turn is still context ...
    assert trained_text(tiny_tokenizer, ex) == "Paris, as if everyone doesn't know that already.<|im_end|>"  # ... only


def test_openai_tools_developer_content_parts_and_images(tool_tokenizer):
    path = str(FIXTURES / "openai_chat.jsonl")
    report = validate_source(path, DataOptions(cutoff_len=512), tokenizer=tool_tokenizer)
    assert report.format == "chat" and report.columns_used == ["messages", "tools"]
    assert [e.message for e in report.errors] == [
        "openai_chat.jsonl line 3: message 1 (user): content part 2 has type 'image_url'; only text parts "
        '({"type": "text", "text": ...}) can be trained on (images, audio and files are not supported)'
    ]
    assert report.errors[0].field == "messages" and report.errors[0].line == 3
    assert report.n_trainable == 2
    conv = ChatFormat().conversation(json.loads(Path(path).read_text().splitlines()[1]))
    assert conv.messages[0] == {"role": "system", "content": "You are a weather bot."}  # developer = system
    assert conv.messages[1]["content"] == "What is the weather in San Francisco?"  # text parts joined
    assert conv.messages[2]["tool_calls"][0]["function"]["arguments"] == {
        "location": "San Francisco, USA",
        "format": "celsius",
    }  # JSON text -> object, as chat templates read it
    assert conv.messages[3] == {"role": "tool", "content": "21.0", "tool_call_id": "call_id"}


def test_bad_weights_and_tool_calls_name_the_message():
    def problems(messages, **extra):
        return [p.text for p in ChatFormat().check({"messages": messages, **extra}, "field", frozenset())]

    user = {"role": "user", "content": "q"}
    assert problems([user, {"role": "assistant", "content": "a", "weight": 0.5}]) == [
        "message 2 (assistant): weight is 0.5; allowed: 0 (not learned) or 1"
    ]
    assert problems([user, {"role": "assistant", "content": "a", "weight": 0}]) == [
        "every assistant turn has weight 0, so there is nothing to learn"
    ]
    bad_call = {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{x"}}]}
    assert problems([user, bad_call]) == [
        "message 2 (assistant): tool call 1 ('f'): arguments are not valid JSON (Expecting property name enclosed in "
        "double quotes at column 2)"
    ]
    assert problems([user, {"role": "assistant", "content": "a"}], tools=[{"type": "function"}]) == [
        'field \'tools\': tool 1 is not a list of {"type": "function", "function": {"name": ..., "parameters": '
        "...}} tool definitions"
    ]


def test_trl_conversational_prompt_completion(tiny_tokenizer):
    path = str(FIXTURES / "trl_conversational_prompt_completion.jsonl")
    prepared = prepare_dataset(
        path, DataOptions(cutoff_len=256), tokenizer=tiny_tokenizer, split_fractions={"train": 1.0}
    )
    assert prepared.report.format == "chat_prompt_completion"
    by_answer = {trained_text(tiny_tokenizer, ex) for ex in prepared.train}
    assert by_answer == {"It is blue.<|im_end|>", "In the sky.<|im_end|>"}
    row = prepared.train_rows[0]
    assert prepared.render_prompt(row).endswith("<|im_start|>assistant\n")


def test_alpaca_uses_its_own_with_and_no_input_prompts(tiny_tokenizer):
    fmt = AlpacaFormat()
    prompt, completion = fmt.render({"instruction": "Name the color of the sky.", "input": "", "output": "Blue."})
    assert prompt == f"{ALPACA_PREAMBLE}\n\n### Instruction:\nName the color of the sky.\n\n### Response:\n"
    assert completion == "Blue."
    prompt, _ = fmt.render({"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"})
    assert (
        prompt
        == f"{ALPACA_PREAMBLE_INPUT}\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n"
    )
    prompt, _ = fmt.render(
        {"instruction": "And 4 and 4?", "output": "8", "system": "Be exact.", "history": [["Add 2 and 3.", "5"]]}
    )
    assert prompt == (
        "Be exact.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:\n5\n\n### Instruction:\nAnd 4 and "
        "4?\n\n### Response:\n"
    )
    report = validate_source(
        data_path=str(Path(__file__).resolve().parents[1] / "fixtures" / "data" / "alpaca.jsonl"),
        tokenizer=tiny_tokenizer,
    )
    assert report.ok and report.format == "alpaca"
    assert report.columns_used == ["instruction", "input", "output"]
    # A typed table without the optional columns (system, history) is fine too.
    parquet = validate_source(str(FIXTURES.parent / "alpaca.parquet"), tokenizer=tiny_tokenizer)
    assert parquet.ok and parquet.format == "alpaca", parquet.to_text()


def test_alpaca_columns_beside_text_train_alpaca_and_say_so(tiny_tokenizer):
    path = str(FIXTURES / "alpaca_with_text.jsonl")
    report = validate_source(path, tokenizer=tiny_tokenizer)
    assert report.ok and report.format == "alpaca"
    assert report.columns_ignored == ["text"]
    assert [w.message for w in report.warnings if w.kind == "format_choice"] == [
        "alpaca_with_text.jsonl: column 'text' is ignored: the rows also have alpaca columns (instruction, input, "
        "output), which mask the prompt from the loss; set data_format 'text' to train on 'text' instead"
    ]
    assert "  ignored      text" in report.to_text()
    forced = validate_source(path, DataOptions(data_format="text"), tokenizer=tiny_tokenizer)
    assert forced.format == "text" and forced.columns_ignored == ["instruction", "input", "output"]


def test_template_without_input_warns_with_the_rows_it_drops(tiny_tokenizer):
    # MonsterAPI's sample template for tatsu-lab/alpaca
    report = validate_source(
        str(FIXTURES / "monster_alpaca_template.jsonl"),
        DataOptions(prompt_template="### Input: {instruction} ### Output: {output}"),
        tokenizer=tiny_tokenizer,
    )
    assert report.ok and report.format == "template" and report.columns_ignored == ["input"]
    assert [w.message for w in report.warnings if w.kind == "dropped_input"] == [
        "monster_alpaca_template.jsonl: column 'input' is not in prompt_template, but 2 of 4 rows have text in it "
        "(lines 2, 4); that text is dropped from the prompt: add {input} to the template (or leave prompt_template "
        "empty to use data_format 'alpaca')"
    ]
