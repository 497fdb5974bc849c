"""Row shapes: how a record becomes the text the model sees, and which part of it is learned.

Four shapes:

- template: `prompt_template` with `{column}` placeholders (MonsterAPI style). The completion starts at the last
  placeholder (or at the one `completion_column` names) and runs to the template's end, so text after it (a
  closing tag, a newline) is learned too; everything before is the prompt. `{{` and `}}` are literal braces.
- chat: a `messages` column of OpenAI-style `{"role", "content"}` lists, rendered with the model's chat
  template; only assistant turns are learned.
- prompt_completion: `prompt` and `completion` columns.
- text: one `text` column, learned whole.

`resolve_format` picks the shape (detected from the columns when unambiguous) and reports configuration problems;
each shape's `check` lists what is wrong with one row, in words that name the field and what is allowed.
"""

from __future__ import annotations

import json
import string
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from ..errors import did_you_mean

FORMATS = ("template", "chat", "prompt_completion", "text", "preference")
ROLES = ("system", "user", "assistant")
SHORT_COMPLETION_CHARS = 3  # completions shorter than this (stripped) are flagged as very short


@dataclass(frozen=True, slots=True)
class Problem:
    """A row-level finding, without the location (the validator adds it)."""

    kind: str
    field: str
    text: str
    warning: bool = False


def describe_value(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def check_text(row: dict[str, Any], name: str, noun: str, role: str, *, empty_is_error: bool) -> Problem | None:
    """Missing, null, non-text or empty `row[name]`; `role` says what the value is needed for."""
    if name not in row:
        return Problem("missing_field", name, f"{noun} '{name}' is missing; {role}")
    value = row[name]
    if value is None:
        tail = "" if empty_is_error else ' (use "" if it is meant to be empty)'
        return Problem("null_field", name, f"{noun} '{name}' is null; {role}{tail}")
    if not isinstance(value, str):
        return Problem(
            "not_text",
            name,
            f"{noun} '{name}' is {describe_value(value)}, not text; {role} (write it as a string)",
        )
    if not value.strip():
        if empty_is_error:
            return Problem("empty_field", name, f"{noun} '{name}' is empty; {role}")
        return Problem("empty_prompt_field", name, "", warning=True)
    return None


# --- template -----------------------------------------------------------------------------------------------------


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class Template:
    """A parsed `prompt_template`: literal text and placeholders, split into prompt and completion parts."""

    text: str
    prompt_pieces: tuple[tuple[str, str | None], ...]  # (literal, field or None)
    completion_pieces: tuple[tuple[str, str | None], ...]
    completion: str

    @property
    def fields(self) -> tuple[str, ...]:
        names = [f for _, f in self.prompt_pieces + self.completion_pieces if f is not None]
        return tuple(dict.fromkeys(names))

    @property
    def prompt_fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for _, f in self.prompt_pieces if f is not None))

    @staticmethod
    def parse(text: str, completion_column: str | None = None) -> Template:
        pieces: list[tuple[str, str | None]] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as err:
            raise TemplateError(
                f"prompt_template: {err}; placeholders are written {{column}}, and a literal brace as '{{{{' or '}}}}'"
            ) from None
        for literal, name, spec, conversion in parsed:
            if name is None:
                pieces.append((literal, None))
                continue
            if spec or conversion:
                shown = "{" + name + ("!" + conversion if conversion else "") + (":" + spec if spec else "") + "}"
                raise TemplateError(
                    f"prompt_template: placeholder {shown!r} is not a column name; placeholders are plain "
                    "{column}, and a literal brace is written '{{' or '}}'"
                )
            if not name.strip():
                raise TemplateError(
                    "prompt_template: an empty placeholder '{}'; name a column inside the braces, or write a literal "
                    "brace as '{{' or '}}'"
                )
            pieces.append((literal, name))
        names = [n for _, n in pieces if n is not None]
        if not names:
            raise TemplateError(
                "prompt_template has no {column} placeholders; it needs at least the completion column, e.g. "
                "'### Question: {question}\\n### Answer: {answer}'"
            )
        if completion_column is None:
            completion_column = names[-1]
        elif completion_column not in names:
            raise TemplateError(
                f"completion_column {completion_column!r} is not a placeholder of prompt_template"
                f"{did_you_mean(completion_column, names)}; placeholders: {', '.join(dict.fromkeys(names))}"
            )
        # The completion starts at the last occurrence of its placeholder; its literal prefix stays in the prompt.
        k = max(i for i, (_, n) in enumerate(pieces) if n == completion_column)
        literal_k = pieces[k][0]
        prompt = tuple(pieces[:k]) + ((literal_k, None),)
        completion = (("", completion_column),) + tuple(pieces[k + 1 :])
        if any(n == completion_column for _, n in prompt):
            raise TemplateError(
                f"prompt_template uses the completion column '{completion_column}' in the prompt part too, so the "
                "model would see the answer it is asked to produce"
            )
        return Template(text, prompt, completion, completion_column)

    @staticmethod
    def _fill(pieces: tuple[tuple[str, str | None], ...], row: dict[str, Any]) -> str:
        return "".join(literal + (str(row[name]) if name is not None else "") for literal, name in pieces)

    def render(self, row: dict[str, Any]) -> tuple[str, str]:
        """(prompt, completion) text; the row's fields were checked to be text."""
        return self._fill(self.prompt_pieces, row), self._fill(self.completion_pieces, row)

    def render_whole(self, row: dict[str, Any]) -> str:
        """The whole template filled in: the prompt of a preference pair, whose answers come from other columns."""
        return self._fill(self.prompt_pieces + self.completion_pieces, row)


# --- shapes -----------------------------------------------------------------------------------------------------


class RowFormat(ABC):
    name = ""
    fields: tuple[str, ...] = ()
    text_fields: tuple[str, ...] = ()  # fields that must hold text (checked against column types up front)

    def describe(self) -> str:
        return ""

    @abstractmethod
    def check(self, row: dict[str, Any], noun: str, skip: frozenset[str]) -> list[Problem]:
        """Everything wrong with `row` for this shape."""

    def render(self, row: dict[str, Any]) -> tuple[str, str]:
        """(prompt text, completion text) for the non-chat shapes."""
        raise TypeError(f"{self.name} rows are rendered with the tokenizer's chat template, not as prompt/completion")

    def completion_text(self, row: dict[str, Any]) -> str | None:
        """The learned answer, for the 'very short completion' warning and exact-match evaluation."""
        return None


class TemplateFormat(RowFormat):
    name = "template"

    def __init__(self, template: Template):
        self.template = template
        self.fields = template.fields
        self.text_fields = template.fields

    def describe(self) -> str:
        return f"completion: {{{self.template.completion}}}"

    def check(self, row: dict[str, Any], noun: str, skip: frozenset[str]) -> list[Problem]:
        out = []
        for name in self.fields:
            if name in skip:
                continue
            is_completion = name == self.template.completion
            role = "the template needs it as the completion" if is_completion else "the template needs it in the prompt"
            p = check_text(row, name, noun, role, empty_is_error=is_completion)
            if p is not None:
                out.append(p)
        return out

    def render(self, row: dict[str, Any]) -> tuple[str, str]:
        return self.template.render(row)

    def completion_text(self, row: dict[str, Any]) -> str | None:
        value = row.get(self.template.completion)
        return value if isinstance(value, str) else None


class PromptCompletionFormat(RowFormat):
    name = "prompt_completion"
    fields = ("prompt", "completion")
    text_fields = ("prompt", "completion")

    def check(self, row: dict[str, Any], noun: str, skip: frozenset[str]) -> list[Problem]:
        out = []
        for name, role, err in (
            ("prompt", "it is the prompt", False),
            ("completion", "it is what the model learns to answer", True),
        ):
            if name not in skip:
                p = check_text(row, name, noun, role, empty_is_error=err)
                if p is not None:
                    out.append(p)
        return out

    def render(self, row: dict[str, Any]) -> tuple[str, str]:
        return row["prompt"], row["completion"]

    def completion_text(self, row: dict[str, Any]) -> str | None:
        value = row.get("completion")
        return value if isinstance(value, str) else None


class TextFormat(RowFormat):
    name = "text"
    fields = ("text",)
    text_fields = ("text",)

    def describe(self) -> str:
        return "loss on all text"

    def check(self, row: dict[str, Any], noun: str, skip: frozenset[str]) -> list[Problem]:
        if "text" in skip:
            return []
        p = check_text(row, "text", noun, "it is the text the model learns", empty_is_error=True)
        return [p] if p is not None else []

    def render(self, row: dict[str, Any]) -> tuple[str, str]:
        return "", row["text"]


class ChatFormat(RowFormat):
    name = "chat"
    fields = ("messages",)

    def describe(self) -> str:
        return "messages rendered with the model's chat template; loss on assistant turns"

    @staticmethod
    def messages(row: dict[str, Any]) -> list[dict[str, Any]]:
        value = row["messages"]
        if isinstance(value, str):  # CSV cannot hold lists: accept the list as a JSON string there
            value = json.loads(value)
        return [{"role": m["role"], "content": m["content"]} for m in value]

    def check(self, row: dict[str, Any], noun: str, skip: frozenset[str]) -> list[Problem]:
        if "messages" in skip:
            return []
        allowed = "a list of {\"role\": ..., \"content\": ...} messages (OpenAI chat format)"
        if "messages" not in row:
            return [Problem("missing_field", "messages", f"{noun} 'messages' is missing; it must be {allowed}")]
        value = row["messages"]
        if value is None:
            return [Problem("null_field", "messages", f"{noun} 'messages' is null; it must be {allowed}")]
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                return [
                    Problem(
                        "bad_messages",
                        "messages",
                        f"{noun} 'messages' is text that is not a JSON list ({err.msg} at column {err.colno}); it "
                        f"must be {allowed}",
                    )
                ]
        if not isinstance(value, list):
            return [Problem("bad_messages", "messages", f"{noun} 'messages' is {describe_value(value)}; it must be {allowed}")]
        if not value:
            return [Problem("bad_messages", "messages", f"{noun} 'messages' is an empty list; it must be {allowed}")]
        if any(isinstance(m, dict) and "role" not in m and "from" in m and "value" in m for m in value):
            return [
                Problem(
                    "bad_messages",
                    "messages",
                    "the messages use ShareGPT keys 'from'/'value'; tuneforge reads OpenAI-style "
                    "{\"role\": \"user\" | \"assistant\" | \"system\", \"content\": ...}",
                )
            ]
        out: list[Problem] = []
        roles: list[str] = []
        for i, m in enumerate(value, 1):
            if not isinstance(m, dict):
                out.append(Problem("bad_messages", "messages", f"message {i} is {describe_value(m)}, not an object {{\"role\", \"content\"}}"))
                continue
            role = m.get("role")
            if role not in ROLES:
                hint = did_you_mean(role, ROLES) if isinstance(role, str) else ""
                shown = "missing" if role is None else repr(role)
                out.append(
                    Problem(
                        "unknown_role",
                        "messages",
                        f"message {i} has role {shown}{hint}; allowed roles: {', '.join(ROLES)}",
                    )
                )
                continue
            roles.append(role)
            content = m.get("content")
            if not isinstance(content, str):
                what = "missing" if "content" not in m else ("null" if content is None else describe_value(content))
                out.append(Problem("bad_messages", "messages", f"message {i} ({role}): content is {what}; it must be text"))
            elif role == "assistant" and not content.strip():
                out.append(Problem("empty_field", "messages", f"message {i} (assistant) has empty content; nothing to learn from it"))
        if not out and "assistant" not in roles:
            present = ", ".join(dict.fromkeys(roles))
            out.append(
                Problem(
                    "no_assistant_turn",
                    "messages",
                    f"the conversation has no assistant turn, so there is nothing to learn (roles: {present})",
                )
            )
        return out

    def completion_text(self, row: dict[str, Any]) -> str | None:
        last = [m["content"] for m in self.messages(row) if m["role"] == "assistant"]
        return last[-1] if last else None


# --- choosing -------------------------------------------------------------------------------------------------------


@dataclass
class FormatChoice:
    format: RowFormat | None
    errors: list[str]  # configuration problems (kind "config"/"format"/"template"), as full messages
    kind: str = "config"


def suggest_template(columns: list[str]) -> str:
    if len(columns) >= 2:
        *first, last = columns[:3] if len(columns) >= 3 else columns
        parts = "\\n".join(f"### {c}: {{{c}}}" for c in first)
        return f"'{parts}\\n### {last}: {{{last}}}'"
    return "'### Input: {input}\\n### Output: {output}'"


def resolve_format(
    columns: list[str],
    *,
    data_format: str,
    prompt_template: str | None,
    completion_column: str | None,
    source_name: str,
) -> FormatChoice:
    """The row shape from the arguments and the data's columns; a problem is a message saying what to set."""
    if data_format not in ("auto", *FORMATS):
        return FormatChoice(
            None,
            [f"data_format {data_format!r} is unknown{did_you_mean(data_format, FORMATS)}; allowed: auto, {', '.join(FORMATS)}"],
        )
    template = prompt_template if prompt_template and prompt_template.strip() else None
    if data_format == "preference":
        return _preference_format(columns, template, completion_column, source_name)
    if template is not None:
        if data_format not in ("auto", "template"):
            return FormatChoice(
                None,
                [f"prompt_template is given but data_format is {data_format!r}; a template is used only with "
                 "data_format 'template' (or 'auto'): remove one of them"],
            )
        try:
            return FormatChoice(TemplateFormat(Template.parse(template, completion_column)), [])
        except TemplateError as err:
            return FormatChoice(None, [str(err)], kind="template")
    if data_format == "template":
        return FormatChoice(None, ["data_format 'template' needs a prompt_template with {column} placeholders"])
    if completion_column:
        return FormatChoice(
            None,
            [f"completion_column {completion_column!r} is used only with a prompt_template; give a template such as "
             f"'... {{question}} ... {{{completion_column}}}' or remove completion_column"],
        )
    by_shape = {
        "chat": ChatFormat,
        "prompt_completion": PromptCompletionFormat,
        "text": TextFormat,
    }
    if data_format != "auto":
        return FormatChoice(by_shape[data_format](), [])
    have = set(columns)
    matches = []
    if "messages" in have:
        matches.append("chat")
    if {"prompt", "completion"} <= have:
        matches.append("prompt_completion")
    if "text" in have:
        matches.append("text")
    if not matches:
        from .pairs import is_pair_columns

        if is_pair_columns(columns):  # shown as pairs by `tuneforge data validate`; SFT training refuses them
            return _preference_format(columns, None, None, source_name)
    if len(matches) == 1:
        return FormatChoice(by_shape[matches[0]](), [])
    cols = ", ".join(columns) if columns else "none"
    if len(matches) > 1:
        return FormatChoice(
            None,
            [f"{source_name}: the columns fit several formats ({', '.join(matches)}); set data_format to one of them"],
            kind="format",
        )
    hint = ""
    if "conversations" in have:
        hint = " ('conversations' looks like ShareGPT data: convert it to a 'messages' column of {role, content})"
    return FormatChoice(
        None,
        [
            f"{source_name}: cannot tell how to turn rows into text from the columns ({cols}){hint}; give a "
            f"prompt_template such as {suggest_template(columns)}, or provide a 'messages', "
            "'prompt'+'completion' or 'text' column"
        ],
        kind="format",
    )


def _preference_format(
    columns: list[str], template: str | None, completion_column: str | None, source_name: str
) -> FormatChoice:
    from .pairs import NEEDED_COLUMNS, PreferenceFormat

    if completion_column:
        return FormatChoice(None, [("completion_column is for SFT templates; preference pairs take their answers "
                                    "from 'chosen' and 'rejected': remove completion_column")])
    parsed = None
    if template is not None:
        try:
            parsed = Template.parse(template)
        except TemplateError as err:
            return FormatChoice(None, [str(err)], kind="template")
        answers = [f for f in parsed.fields if f in ("chosen", "rejected", "preferred_output", "non_preferred_output")]
        if answers:
            return FormatChoice(None, [(
                f"prompt_template uses {', '.join(repr('{' + a + '}') for a in answers)}; for preference pairs the "
                "template renders the prompt only (e.g. '### Question: {prompt}\\n### Answer: '), and the answers "
                "come from the 'chosen' and 'rejected' columns")], kind="template")
    fmt = PreferenceFormat.from_columns(columns, parsed)
    if fmt is None:
        found = ", ".join(columns) if columns else "none"
        return FormatChoice(
            None,
            [f"{source_name}: preference tuning needs pairs: columns {NEEDED_COLUMNS}; found: {found}"],
            kind="format",
        )
    return FormatChoice(fmt, [])
