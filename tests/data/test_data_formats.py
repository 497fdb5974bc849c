"""Templates and format detection: which text is prompt, which is completion, and what to set when unclear."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge.data import DataOptions, Template, validate_source
from tuneforge.data.formats import ChatFormat, TemplateError, resolve_format

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


def test_last_placeholder_is_the_completion_and_trailing_text_belongs_to_it():
    t = Template.parse("### Q: {question}\n### A: {answer}\n</s>")
    assert t.completion == "answer" and t.fields == ("question", "answer")
    assert t.render({"question": "2+2?", "answer": "4"}) == ("### Q: 2+2?\n### A: ", "4\n</s>")


def test_named_completion_column_and_text_after_it():
    t = Template.parse("Answer: {answer}\nfor question: {question}", completion_column="answer")
    assert t.render({"question": "2+2?", "answer": "4"}) == ("Answer: ", "4\nfor question: 2+2?")


def test_literal_braces_are_escaped_by_doubling():
    t = Template.parse('{{"question": "{q}"}} -> {{"answer": "{a}"}}')
    assert t.fields == ("q", "a")
    assert t.render({"q": "x", "a": "y"}) == ('{"question": "x"} -> {"answer": "', 'y"}')


def test_values_with_braces_are_not_interpreted():
    t = Template.parse("{q} => {a}")
    assert t.render({"q": "{not a field}", "a": "{}"}) == ("{not a field} => ", "{}")


@pytest.mark.parametrize(
    "template, kwargs, message",
    [
        ("no placeholders", {}, "prompt_template has no {column} placeholders"),
        ("{q} {", {}, "prompt_template: Single '{' encountered in format string; placeholders are written {column}"),
        ("{q} }", {}, "prompt_template: Single '}' encountered in format string"),
        ("{q} {}", {}, "prompt_template: an empty placeholder '{}'"),
        ('{"a": 1} {q}', {}, "prompt_template: placeholder '{\"a\": 1}' is not a column name"),
        (
            "{question} {answer}",
            {"completion_column": "anwser"},
            "completion_column 'anwser' is not a placeholder of prompt_template (did you mean 'answer'?); "
            "placeholders: question, answer",
        ),
        ("{a} {q} {a}", {}, "prompt_template uses the completion column 'a' in the prompt part too"),
    ],
)
def test_template_errors(template, kwargs, message):
    with pytest.raises(TemplateError) as exc:
        Template.parse(template, **kwargs)
    assert str(exc.value).startswith(message)


def test_detection_from_columns():
    def fmt(cols, **kw):
        kw = {"data_format": "auto", "prompt_template": None, "completion_column": None, **kw}
        choice = resolve_format(cols, source_name="d.jsonl", **kw)
        return choice.format.name if choice.format else choice.errors[0]

    assert fmt(["messages"]) == "chat"
    assert fmt(["prompt", "completion", "id"]) == "prompt_completion"
    assert fmt(["text", "meta"]) == "text"
    assert fmt(["a", "b"], prompt_template="{a} {b}") == "template"
    assert fmt(["text", "messages"]) == "chat"
    assert fmt(["text", "messages"], data_format="text") == "text"
    assert fmt(["conversations"]) == "chat"  # no rows to look at: {role, content} is assumed
    assert fmt(["conversations"], head=[{"conversations": [{"from": "human", "value": "hi"}]}]) == "sharegpt"
    assert fmt(["messages"], head=[{"messages": '[{"from": "human", "value": "hi"}]'}]) == "sharegpt"
    assert fmt(["prompt", "completion"], head=[{"prompt": [{"role": "user", "content": "a"}]}]) == (
        "chat_prompt_completion"
    )
    assert fmt(["instruction", "input", "output"]) == "alpaca"
    assert fmt(["instruction", "output", "text"]) == "alpaca"  # the richer format wins over a rendered 'text'
    assert fmt(["instruction", "output", "text"], data_format="text") == "text"
    assert fmt(["messages", "instruction", "output"]) == (
        "d.jsonl: the columns fit several formats (chat: messages; alpaca: instruction, output); set data_format to "
        "one of them"
    )
    assert fmt(["a"], data_format="chats") == (
        "data_format 'chats' is unknown (did you mean 'chat'?); allowed: auto, template, chat, sharegpt, "
        "chat_prompt_completion, prompt_completion, alpaca, text, preference"
    )
    assert fmt(["prompt", "chosen", "rejected"]) == "preference"
    assert fmt(["input", "preferred_output", "non_preferred_output"]) == "preference"
    assert (
        fmt(["a"], data_format="template")
        == "data_format 'template' needs a prompt_template with {column} placeholders"
    )
    assert fmt(["a"], data_format="chat", prompt_template="{a}").startswith(
        "prompt_template is given but data_format is 'chat'"
    )
    assert fmt(["prompt", "completion"], completion_column="completion").startswith(
        "completion_column 'completion' is used only with a prompt_template"
    )


def test_undetectable_columns_suggest_a_template(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text('{"question": "a?", "answer": "b"}\n{"question": "c?", "answer": "d"}\n')
    report = validate_source(data_path=str(p))
    assert report.error_counts == {"format": 1}
    assert report.errors[0].message.startswith(
        "qa.jsonl: cannot tell how to turn rows into text from the columns (question, answer); give a "
        "prompt_template such as '### question: {question}\\n### answer: {answer}', or set data_format: chat = "
        "OpenAI chat: 'messages' of {role, content}"
    )
    assert report.n_rows == 2  # still read to the end: the report counts the rows


def test_template_fields_missing_null_empty_or_not_text():
    report = validate_source(
        str(FIXTURES / "fields.jsonl"),
        DataOptions(prompt_template="### Instruction: {instruction}\n### Input: {input}\n### Response: {output}"),
    )
    assert [e.message for e in report.errors] == [
        "fields.jsonl line 2: field 'input' is missing; the template needs it in the prompt",
        "fields.jsonl line 3: field 'output' is null; the template needs it as the completion",
        "fields.jsonl line 4: field 'output' is empty; the template needs it as the completion",
        "fields.jsonl line 5: field 'output' is a number (5), not text; the template needs it as the completion "
        "(write it as a string)",
        "fields.jsonl line 6: field 'instruction' is a list, not text; the template needs it in the prompt (write it "
        "as a string)",
        "fields.jsonl line 7: field 'output' is empty; the template needs it as the completion",
    ]
    assert report.error_counts == {"missing_field": 1, "null_field": 1, "empty_field": 2, "not_text": 2}
    assert [(e.line, e.row, e.field) for e in report.errors[:2]] == [(2, 2, "input"), (3, 3, "output")]
    assert report.n_trainable == 1


def test_csv_empty_completion_message_names_the_file_line(tmp_path):
    p = tmp_path / "data.csv"
    p.write_text('instruction,output\n"multi\nline",ok\nempty,\n', encoding="utf-8")
    report = validate_source(str(p), DataOptions(prompt_template="{instruction} => {output}"))
    assert [e.message for e in report.errors] == [
        "data.csv line 4: column 'output' is empty; the template needs it as the completion"
    ]


def test_field_missing_from_every_row_is_reported_once_as_a_column():
    report = validate_source(
        str(FIXTURES / "alpaca.jsonl"), DataOptions(prompt_template="{instruction} {inptu} {output}")
    )
    assert report.error_counts == {"missing_column": 1}
    assert report.errors[0].message == (
        "alpaca.jsonl: no row has a field 'inptu' (did you mean 'input'?); the fields are: instruction, input, output"
    )


def test_tabular_missing_column_is_checked_up_front():
    report = validate_source(str(FIXTURES / "alpaca.parquet"), DataOptions(prompt_template="{instruction} {reponse}"))
    assert report.error_counts == {"missing_column": 1}
    assert report.errors[0].message == (
        "alpaca.parquet: no column 'reponse'; the template needs it as the completion; the columns are: instruction, "
        "input, output"
    )


def test_empty_prompt_fields_are_a_warning_not_an_error():
    report = validate_source(
        str(FIXTURES / "alpaca.jsonl"),
        DataOptions(prompt_template="### Instruction: {instruction}\n### Input: {input}\n### Response: {output}"),
    )
    assert report.ok
    assert any(
        w.message.startswith("1 of 6 rows (16.7%) have an empty 'input' (allowed")
        and "alpaca.jsonl line 3" in w.message
        for w in report.warnings
    )


def test_chat_rows_unknown_role_no_assistant_and_other_shapes():
    report = validate_source(data_path=str(FIXTURES / "bad_chat.jsonl"))
    assert report.format == "chat"
    assert [e.message for e in report.errors] == [
        "bad_chat.jsonl line 2: message 2 has role 'assitant' (did you mean 'assistant'?); allowed roles: system, "
        "developer, user, assistant, tool",
        "bad_chat.jsonl line 3: the conversation has no assistant turn, so there is nothing to learn (roles: system, "
        "user)",
        "bad_chat.jsonl line 4: the messages use ShareGPT keys 'from'/'value' while the file was read as OpenAI chat "
        '{"role", "content"}; use one format per file (data_format \'sharegpt\' reads ShareGPT)',
        "bad_chat.jsonl line 5: message 2 (assistant): content is null; it must be text or a list of text parts",
        "bad_chat.jsonl line 6: field 'messages' is text that is not a JSON list (Expecting value at column 1); it "
        'must be a list of {"role": ..., "content": ...} messages (OpenAI chat format)',
        "bad_chat.jsonl line 7: field 'messages' is an empty list; it must be a list of "
        '{"role": ..., "content": ...} messages (OpenAI chat format)',
    ]
    assert report.error_counts == {"unknown_role": 1, "no_assistant_turn": 1, "bad_messages": 4}
    assert report.n_trainable == 1


def test_chat_messages_as_json_text_in_csv(tmp_path):
    p = tmp_path / "chat.csv"
    p.write_text(
        'messages\n"[{""role"": ""user"", ""content"": ""hi""}, {""role"": ""assistant"", ""content"": ""yo""}]"\n'
    )
    report = validate_source(data_path=str(p))
    assert report.ok and report.format == "chat"
    assert ChatFormat.messages({"messages": '[{"role": "user", "content": "a"}]'}) == [{"role": "user", "content": "a"}]
