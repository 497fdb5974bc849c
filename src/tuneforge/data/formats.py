"""Row shapes: how a record becomes the text the model sees, and which part of it is learned.

The shapes (`data_format` values; `FORMAT_HELP` says what each reads):

- template: `prompt_template` with `{column}` placeholders (MonsterAPI style). The completion starts at the last
  placeholder (or at the one `completion_column` names) and runs to the template's end, so text after it (a
  closing tag, a newline) is learned too; everything before is the prompt. `{{` and `}}` are literal braces.
- chat: OpenAI's chat fine-tuning format (`messages`, with tool calls, `weight`, text parts, a `tools` column);
  sharegpt: `conversations` of `{from, value}` (LLaMA-Factory/Axolotl); chat_prompt_completion: TRL's
  conversational prompt/completion. All three become a `Conversation` rendered with the model's chat template;
  only assistant turns (of weight 1) are learned.
- prompt_completion: `prompt` and `completion` text columns.
- alpaca: instruction/input/output (+ system, history) in Stanford Alpaca's own prompts.
- text: one `text` column, learned whole.

`resolve_format` picks the shape (detected from the columns when unambiguous) and reports configuration problems;
each shape's `check` lists what is wrong with one row, in words that name the field and what is allowed.
"""

from __future__ import annotations

import contextlib
import json
import string
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import did_you_mean
from ..spec import FORMAT_HELP, FORMATS

ROLES = ("system", "user", "assistant")  # of preference pairs given as message lists (pairs.py)
SHORT_COMPLETION_CHARS = 3  # completions shorter than this (stripped) are flagged as very short
# Columns that carry part of the task in instruction datasets (Alpaca's input, Dolly's context): a template that
# leaves them out drops that text, which is worth a warning when a row has some.
DROPPABLE_INPUTS = ("input", "context")


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


def check_texts(
    row: dict[str, Any], noun: str, skip: frozenset[str], fields: tuple[tuple[str, str, bool], ...]
) -> list[Problem]:
    """`check_text` over (column, its role, empty is an error) triples, skipping the columns in `skip`."""
    out = []
    for name, role, empty_is_error in fields:
        if name not in skip:
            p = check_text(row, name, noun, role, empty_is_error=empty_is_error)
            if p is not None:
                out.append(p)
    return out


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
            if "." in name or "[" in name:
                # str.format would read attributes and items here ('{question.__class__}'); placeholders are only
                # ever looked up as whole column names, so say so instead of looking for a column of that name.
                raise TemplateError(
                    f"prompt_template: placeholder {'{' + name + '}'!r} uses attribute or index access, which is not "
                    "allowed; placeholders are plain {column} names"
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
    extra_fields: tuple[str, ...] = ()  # optional columns the shape reads when present (e.g. 'tools', 'system')
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
        # MonsterAPI's sample template for Alpaca data has {instruction} and {output} but no {input}: rows whose
        # input holds the text the task is about would be trained without it. Say so, with the rows.
        for name in DROPPABLE_INPUTS:
            value = row.get(name)
            if name not in self.fields and isinstance(value, str) and value.strip():
                out.append(Problem("dropped_input", name, "", warning=True))
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
        return check_texts(
            row,
            noun,
            skip,
            (("prompt", "it is the prompt", False), ("completion", "it is what the model learns to answer", True)),
        )

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


# --- conversations ------------------------------------------------------------------------------------------------


@dataclass
class Conversation:
    """A row as chat-template input: OpenAI-style messages (plain-text content; `tool_calls` with arguments as
    objects, as transformers' chat templates expect them) and the row's tool definitions, if any. An assistant
    message carrying `"weight": 0` is rendered but not learned (OpenAI's fine-tuning `weight`)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None


def learned(message: dict[str, Any]) -> bool:
    return message["role"] == "assistant" and message.get("weight", 1) != 0


def _content_text(content: Any, where_: str) -> tuple[str | None, str | None]:
    """(text, None) for a string or an array of text parts (OpenAI concatenates them), else (None, why)."""
    if isinstance(content, str):
        return content, None
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content, 1):
            if not isinstance(part, dict):
                return (
                    None,
                    f'{where_}: content part {j} is {describe_value(part)}; parts are {{"type": "text", "text": ...}}',
                )
            kind = part.get("type")
            if kind != "text":
                return None, (
                    f'{where_}: content part {j} has type {kind!r}; only text parts ({{"type": "text", "text": '
                    "...}) can be trained on (images, audio and files are not supported)"
                )
            if not isinstance(part.get("text"), str):
                return None, f"{where_}: content part {j} has no 'text' string"
            texts.append(part["text"])
        return "".join(texts), None
    what = "null" if content is None else describe_value(content)
    return None, f"{where_}: content is {what}; it must be text or a list of text parts"


def _tool_call(call: Any, where_: str) -> tuple[dict[str, Any] | None, str | None]:
    """An OpenAI tool call ({"id", "type": "function", "function": {"name", "arguments": JSON text}}) in the shape
    chat templates read: arguments as an object."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        return None, f'{where_} is not {{"type": "function", "function": {{"name": ..., "arguments": ...}}}}'
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as err:
            return None, f"{where_} ('{fn['name']}'): arguments are not valid JSON ({err.msg} at column {err.colno})"
    if not isinstance(args, dict):
        return None, f"{where_} ('{fn['name']}'): arguments must be a JSON object, got {describe_value(args)}"
    out: dict[str, Any] = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out, None


def _json_list(value: Any, name: str, noun: str, allowed: str) -> tuple[list | None, Problem | None]:
    """`value` as a list (CSV and Parquet exports often hold lists as JSON text), or the problem with it."""
    if value is None:
        return None, Problem("null_field", name, f"{noun} '{name}' is null; it must be {allowed}")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            return None, Problem(
                "bad_messages",
                name,
                f"{noun} '{name}' is text that is not a JSON list ({err.msg} at column {err.colno}); it must be {allowed}",
            )
    if not isinstance(value, list):
        return None, Problem("bad_messages", name, f"{noun} '{name}' is {describe_value(value)}; it must be {allowed}")
    if not value:
        return None, Problem("bad_messages", name, f"{noun} '{name}' is an empty list; it must be {allowed}")
    return value, None


def _tools(row: dict[str, Any], noun: str) -> tuple[list[dict[str, Any]] | None, Problem | None]:
    """The row's `tools` (OpenAI function definitions) or legacy `functions`; absent or empty means none."""
    for name in ("tools", "functions"):
        value = row.get(name)
        if value is None or value == "" or value == []:
            continue
        allowed = 'a list of {"type": "function", "function": {"name": ..., "parameters": ...}} tool definitions'
        tools, problem = _json_list(value, name, noun, allowed)
        if problem is not None:
            return None, Problem("bad_tools", name, problem.text)
        assert tools is not None
        out = []
        for i, t in enumerate(tools, 1):
            # OpenAI wraps each as {"type": "function", "function": {...}}; LLaMA-Factory's ShareGPT and the legacy
            # `functions` list the bare function objects.
            fn = t.get("function", t) if isinstance(t, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                return None, Problem("bad_tools", name, f"{noun} '{name}': tool {i} is not {allowed}")
            out.append({"type": "function", "function": fn})
        return out, None
    return None, None


class MessagesFormat(RowFormat):
    """Shapes rendered with the model's chat template: each turns a row into a `Conversation`."""

    def describe(self) -> str:
        return "messages rendered with the model's chat template; loss on assistant turns"

    @abstractmethod
    def parse(self, row: dict[str, Any], noun: str) -> tuple[Conversation | None, list[Problem]]:
        """The row's conversation, or the problems that stop it from being one."""

    def conversation(self, row: dict[str, Any]) -> Conversation:
        conv, problems = self.parse(row, "field")
        if conv is None:
            raise ValueError(problems[0].text if problems else "not a conversation")
        return conv

    def check(self, row: dict[str, Any], noun: str, skip: frozenset[str]) -> list[Problem]:
        if any(f in skip for f in self.fields):
            return []
        conv, problems = self.parse(row, noun)
        if problems or conv is None:
            return problems
        roles = [m["role"] for m in conv.messages]
        if "assistant" not in roles:
            present = ", ".join(dict.fromkeys(roles))
            return [
                Problem(
                    "no_assistant_turn",
                    self.fields[0],
                    f"the conversation has no assistant turn, so there is nothing to learn (roles: {present})",
                )
            ]
        if not any(learned(m) for m in conv.messages):
            return [
                Problem(
                    "no_assistant_turn",
                    self.fields[0],
                    "every assistant turn has weight 0, so there is nothing to learn",
                )
            ]
        return []

    def completion_text(self, row: dict[str, Any]) -> str | None:
        last = [m for m in self.conversation(row).messages if learned(m)]
        return last[-1]["content"] if last and last[-1]["content"] else None


class ChatFormat(MessagesFormat):
    """OpenAI's chat fine-tuning format: `messages` with system/developer/user/assistant/tool roles, assistant
    `tool_calls` and `weight`, content as text or text parts, and an optional `tools` column."""

    name = "chat"
    fields = ("messages",)
    extra_fields = ("tools", "functions")
    ROLES = ("system", "developer", "user", "assistant", "tool")

    def __init__(self, column: str = "messages"):
        self.fields = (column,)

    @staticmethod
    def messages(row: dict[str, Any]) -> list[dict[str, Any]]:
        return ChatFormat().conversation(row).messages

    def parse(self, row: dict[str, Any], noun: str) -> tuple[Conversation | None, list[Problem]]:
        col = self.fields[0]
        allowed = 'a list of {"role": ..., "content": ...} messages (OpenAI chat format)'
        if col not in row:
            return None, [Problem("missing_field", col, f"{noun} '{col}' is missing; it must be {allowed}")]
        value, problem = _json_list(row[col], col, noun, allowed)
        if problem is not None:
            return None, [problem]
        assert value is not None
        if any(isinstance(m, dict) and "role" not in m and "from" in m and "value" in m for m in value):
            return None, [
                Problem(
                    "bad_messages",
                    col,
                    "the messages use ShareGPT keys 'from'/'value' while the file was read as OpenAI chat "
                    '{"role", "content"}; use one format per file (data_format \'sharegpt\' reads ShareGPT)',
                )
            ]
        out: list[Problem] = []
        messages: list[dict[str, Any]] = []
        for i, m in enumerate(value, 1):
            if not isinstance(m, dict):
                out.append(
                    Problem(
                        "bad_messages", col, f'message {i} is {describe_value(m)}, not an object {{"role", "content"}}'
                    )
                )
                continue
            role = m.get("role")
            if role not in self.ROLES:
                hint = did_you_mean(role, self.ROLES) if isinstance(role, str) else ""
                shown = "missing" if role is None else repr(role)
                out.append(
                    Problem(
                        "unknown_role",
                        col,
                        f"message {i} has role {shown}{hint}; allowed roles: {', '.join(self.ROLES)}",
                    )
                )
                continue
            at = f"message {i} ({role})"
            msg: dict[str, Any] = {"role": "system" if role == "developer" else role}  # developer: OpenAI's system
            calls = m.get("tool_calls") if role == "assistant" else None
            if calls:
                if not isinstance(calls, list):
                    out.append(
                        Problem("bad_messages", col, f"{at}: tool_calls is {describe_value(calls)}; it must be a list")
                    )
                    continue
                parsed = [_tool_call(c, f"{at}: tool call {j}") for j, c in enumerate(calls, 1)]
                bad = [why for _, why in parsed if why]
                if bad:
                    out.append(Problem("bad_messages", col, bad[0]))
                    continue
                msg["tool_calls"] = [c for c, _ in parsed]
            content = m.get("content")
            if content is None and calls:
                text = ""  # OpenAI: an assistant message that only calls tools has null content
            elif "content" not in m:
                out.append(Problem("bad_messages", col, f"{at}: content is missing; it must be text"))
                continue
            else:
                content_text, why = _content_text(content, at)
                if content_text is None:  # `why` says what is wrong
                    out.append(Problem("bad_messages", col, str(why)))
                    continue
                text = content_text
            if role == "assistant" and not calls and not text.strip():
                out.append(Problem("empty_field", col, f"{at} has empty content; nothing to learn from it"))
                continue
            msg["content"] = text
            if role == "tool":
                for key in ("tool_call_id", "name"):
                    if isinstance(m.get(key), str):
                        msg[key] = m[key]
            if role == "assistant" and "weight" in m:
                if m["weight"] not in (0, 1) or isinstance(m["weight"], bool):
                    out.append(
                        Problem("bad_weight", col, f"{at}: weight is {m['weight']!r}; allowed: 0 (not learned) or 1")
                    )
                    continue
                if m["weight"] == 0:
                    msg["weight"] = 0
            messages.append(msg)
        tools, problem = _tools(row, noun)
        if problem is not None:
            out.append(problem)
        if out:
            return None, out
        return Conversation(messages, tools), []


class ShareGPTFormat(MessagesFormat):
    """ShareGPT as LLaMA-Factory and Axolotl read it: `conversations` of {"from", "value"} with the roles
    human/gpt/system/function_call/observation, an optional `system` column and an optional `tools` column.
    A `function_call` turn is the assistant calling a tool (its value is {"name", "arguments"} JSON); an
    `observation` is the tool's answer."""

    name = "sharegpt"
    extra_fields = ("system", "tools")
    ROLES: ClassVar[dict[str, str]] = {
        "human": "user",
        "user": "user",
        "gpt": "assistant",
        "assistant": "assistant",
        "model": "assistant",
        "system": "system",
        "function_call": "assistant",
        "observation": "tool",
        "tool": "tool",
    }

    def __init__(self, column: str = "conversations"):
        self.fields = (column,)

    def parse(self, row: dict[str, Any], noun: str) -> tuple[Conversation | None, list[Problem]]:
        col = self.fields[0]
        allowed = 'a list of {"from": "human" | "gpt" | ..., "value": ...} turns (ShareGPT)'
        if col not in row:
            return None, [Problem("missing_field", col, f"{noun} '{col}' is missing; it must be {allowed}")]
        value, problem = _json_list(row[col], col, noun, allowed)
        if problem is not None:
            return None, [problem]
        assert value is not None
        out: list[Problem] = []
        messages: list[dict[str, Any]] = []
        system = row.get("system")
        if isinstance(system, str) and system.strip():
            messages.append({"role": "system", "content": system})
        for i, turn in enumerate(value, 1):
            if not isinstance(turn, dict) or "from" not in turn:
                out.append(Problem("bad_messages", col, f'turn {i} is not an object {{"from", "value"}}'))
                continue
            who = turn["from"]
            role = self.ROLES.get(who) if isinstance(who, str) else None
            if role is None:
                names = ("human", "gpt", "system", "function_call", "observation")
                hint = did_you_mean(who, names) if isinstance(who, str) else ""
                out.append(Problem("unknown_role", col, f"turn {i} is from {who!r}{hint}; allowed: {', '.join(names)}"))
                continue
            text = turn.get("value")
            if not isinstance(text, str):
                what = "missing" if "value" not in turn else ("null" if text is None else describe_value(text))
                out.append(Problem("bad_messages", col, f"turn {i} ({who}): value is {what}; it must be text"))
                continue
            if who == "function_call":
                try:
                    call = json.loads(text)
                except json.JSONDecodeError as err:
                    out.append(Problem("bad_messages", col, f"turn {i} (function_call): value is not JSON ({err.msg})"))
                    continue
                calls = call if isinstance(call, list) else [call]
                parsed = [_tool_call({"function": c}, f"turn {i} (function_call)") for c in calls]
                bad = [why for _, why in parsed if why]
                if bad:
                    out.append(Problem("bad_messages", col, bad[0]))
                    continue
                messages.append({"role": "assistant", "content": "", "tool_calls": [c for c, _ in parsed]})
                continue
            if role == "assistant" and not text.strip():
                out.append(Problem("empty_field", col, f"turn {i} ({who}) is empty; nothing to learn from it"))
                continue
            messages.append({"role": role, "content": text})
        tools, problem = _tools(row, noun)
        if problem is not None:
            out.append(problem)
        if out:
            return None, out
        return Conversation(messages, tools), []


class ChatPromptCompletionFormat(MessagesFormat):
    """TRL's conversational prompt/completion: `prompt` and `completion` are lists of messages; the completion's
    assistant turns are learned."""

    name = "chat_prompt_completion"
    fields = ("prompt", "completion")
    extra_fields = ("tools",)

    def describe(self) -> str:
        return "prompt + completion messages rendered with the model's chat template; loss on the completion"

    def parse(self, row: dict[str, Any], noun: str) -> tuple[Conversation | None, list[Problem]]:
        joined: list[Any] = []
        for col in self.fields:
            if col not in row:
                return None, [
                    Problem("missing_field", col, f"{noun} '{col}' is missing; it must be a list of messages")
                ]
            value, problem = _json_list(row[col], col, noun, 'a list of {"role": ..., "content": ...} messages')
            if problem is not None:
                return None, [problem]
            assert value is not None
            if col == "prompt":
                # Only the completion is learned: an assistant turn in the prompt is context (few-shot).
                value = [
                    dict(m, weight=0) if isinstance(m, dict) and m.get("role") == "assistant" else m for m in value
                ]
            joined.extend(value)
        conv, problems = ChatFormat().parse({"messages": joined, "tools": row.get("tools")}, noun)
        return conv, [Problem(p.kind, "prompt/completion", p.text, p.warning) for p in problems]


# --- alpaca -------------------------------------------------------------------------------------------------------

# Stanford Alpaca's own prompts (tatsu-lab/stanford_alpaca, train.py PROMPT_DICT): a row without input uses the
# no-input prompt, never an empty "### Input:" section.
ALPACA_PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


def alpaca_prompt(
    instruction: str, input_text: str = "", system: str | None = None, history: list[tuple[str, str]] | None = None
) -> str:
    """The Alpaca prompt up to "### Response:\\n"; `system` replaces the preamble, `history` holds earlier
    (instruction, response) turns (LLaMA-Factory's alpaca `history`)."""
    has_input = bool(input_text.strip())
    preamble = system if system and system.strip() else (ALPACA_PREAMBLE_INPUT if has_input else ALPACA_PREAMBLE)
    parts = [preamble, ""]
    for q, a in history or ():
        parts.append(f"### Instruction:\n{q}\n\n### Response:\n{a}\n")
    parts.append(f"### Instruction:\n{instruction}\n")
    if has_input:
        parts.append(f"### Input:\n{input_text}\n")
    parts.append("### Response:\n")
    return "\n".join(parts)


class AlpacaFormat(RowFormat):
    name = "alpaca"
    fields = ("instruction", "output")
    extra_fields = ("input", "system", "history")
    text_fields = ("instruction", "output")

    def describe(self) -> str:
        return "Alpaca's prompt (with-input or no-input per row) over instruction/input; completion: {output}"

    @staticmethod
    def _history(value: Any) -> tuple[list[tuple[str, str]] | None, str | None]:
        if value is None or value == "" or value == []:
            return [], None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return None, "is text that is not a JSON list"
        if not isinstance(value, list) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in value
        ):
            return None, "must be a list of [instruction, response] pairs of text"
        return [(q, a) for q, a in value], None

    def check(self, row: dict[str, Any], noun: str, skip: frozenset[str]) -> list[Problem]:
        out = check_texts(
            row,
            noun,
            skip,
            (
                ("instruction", "it is the task in the prompt", True),
                ("output", "it is what the model learns to answer", True),
            ),
        )
        for name in ("input", "system"):
            value = row.get(name)
            if value is not None and not isinstance(value, str):
                out.append(Problem("not_text", name, f"{noun} '{name}' is {describe_value(value)}, not text"))
        _, why = self._history(row.get("history"))
        if why:
            out.append(Problem("bad_history", "history", f"{noun} 'history' {why}"))
        return out

    def render(self, row: dict[str, Any]) -> tuple[str, str]:
        history, _ = self._history(row.get("history"))
        return alpaca_prompt(row["instruction"], row.get("input") or "", row.get("system"), history), row["output"]

    def completion_text(self, row: dict[str, Any]) -> str | None:
        value = row.get("output")
        return value if isinstance(value, str) else None


# --- choosing -------------------------------------------------------------------------------------------------------

# The data_format values and what each reads are the spec's (spec.py), listed once there.


@dataclass
class FormatChoice:
    format: RowFormat | None
    errors: list[str]  # configuration problems (kind "config"/"format"/"template"), as full messages
    kind: str = "config"
    warnings: list[str] = field(default_factory=list)  # e.g. a column left out because a richer format won


def suggest_template(columns: list[str]) -> str:
    if len(columns) >= 2:
        *first, last = columns[:3] if len(columns) >= 3 else columns
        parts = "\\n".join(f"### {c}: {{{c}}}" for c in first)
        return f"'{parts}\\n### {last}: {{{last}}}'"
    return "'### Input: {input}\\n### Output: {output}'"


def _first(head: list[dict[str, Any]], col: str) -> Any:
    """The first non-empty value of `col` in the sample rows, lists given as JSON text decoded."""
    for row in head:
        value = row.get(col)
        if isinstance(value, str) and value[:1] in "[{":
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        if value not in (None, "", []):
            return value
    return None


def _sharegpt_turns(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "from" in value[0]


def _messages_format(column: str, head: list[dict[str, Any]], forced: str | None = None) -> RowFormat:
    if forced == "sharegpt" or (forced is None and _sharegpt_turns(_first(head, column))):
        return ShareGPTFormat(column)
    return ChatFormat(column)


def _detect(columns: list[str], head: list[dict[str, Any]]) -> list[RowFormat]:
    """Every shape the columns fit, richest first. A new shape plugs in here and in `_forced`."""
    have = set(columns)
    found: list[RowFormat] = []
    for col in ("messages", "conversations"):
        if col in have:
            found.append(_messages_format(col, head))
    if {"prompt", "completion"} <= have:
        first = _first(head, "prompt")
        found.append(ChatPromptCompletionFormat() if isinstance(first, list) else PromptCompletionFormat())
    if {"instruction", "output"} <= have:
        found.append(AlpacaFormat())
    if "text" in have:
        found.append(TextFormat())
    return found


def _forced(data_format: str, columns: list[str], head: list[dict[str, Any]]) -> RowFormat:
    if data_format in ("chat", "sharegpt"):
        default = "messages" if data_format == "chat" else "conversations"
        other = "conversations" if data_format == "chat" else "messages"
        column = other if default not in columns and other in columns else default
        return _messages_format(column, head, data_format)
    makers: dict[str, Callable[[], RowFormat]] = {
        "chat_prompt_completion": ChatPromptCompletionFormat,
        "prompt_completion": PromptCompletionFormat,
        "alpaca": AlpacaFormat,
        "text": TextFormat,
    }
    return makers[data_format]()


def resolve_format(
    columns: list[str],
    *,
    data_format: str,
    prompt_template: str | None,
    completion_column: str | None,
    source_name: str,
    head: list[dict[str, Any]] | None = None,
) -> FormatChoice:
    """The row shape from the arguments and the data's columns (and a sample of rows, `head`, which tells
    lists of messages from text); a problem is a message saying what to set."""
    head = head or []
    if data_format not in ("auto", *FORMATS):
        return FormatChoice(
            None,
            [
                f"data_format {data_format!r} is unknown{did_you_mean(data_format, FORMATS)}; allowed: auto, {', '.join(FORMATS)}"
            ],
        )
    template = prompt_template if prompt_template and prompt_template.strip() else None
    if data_format == "preference":
        return _preference_format(columns, template, completion_column, source_name)
    if template is not None:
        if data_format not in ("auto", "template"):
            return FormatChoice(
                None,
                [
                    f"prompt_template is given but data_format is {data_format!r}; a template is used only with "
                    "data_format 'template' (or 'auto'): remove one of them"
                ],
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
            [
                f"completion_column {completion_column!r} is used only with a prompt_template; give a template such as "
                f"'... {{question}} ... {{{completion_column}}}' or remove completion_column"
            ],
        )
    if data_format != "auto":
        return FormatChoice(_forced(data_format, columns, head), [])
    matches = _detect(columns, head)
    warnings = []
    richer = [f for f in matches if f.name != "text"]
    if richer and len(richer) < len(matches):
        # Alpaca exports (tatsu-lab/alpaca among them) carry a pre-rendered 'text' beside the columns: training on
        # it alone would learn the prompt too and ignore the structure, so the structured format wins, loudly.
        used = ", ".join(c for c in columns if c in richer[0].fields or c in richer[0].extra_fields)
        warnings.append(
            f"{source_name}: column 'text' is ignored: the rows also have {richer[0].name} columns ({used}), which "
            f"mask the prompt from the loss; set data_format 'text' to train on 'text' instead"
        )
        matches = richer
    if not matches:
        from .pairs import is_pair_columns

        if is_pair_columns(columns):  # shown as pairs by `tuneforge data validate`; SFT training refuses them
            return _preference_format(columns, None, None, source_name)
    if len(matches) == 1:
        return FormatChoice(matches[0], [], warnings=warnings)
    cols = ", ".join(columns) if columns else "none"
    if len(matches) > 1:
        names = "; ".join(f"{f.name}: {', '.join(c for c in f.fields if c in columns)}" for f in matches)
        return FormatChoice(
            None,
            [f"{source_name}: the columns fit several formats ({names}); set data_format to one of them"],
            kind="format",
        )
    return FormatChoice(
        None,
        [
            f"{source_name}: cannot tell how to turn rows into text from the columns ({cols}); give a "
            f"prompt_template such as {suggest_template(columns)}, or set data_format: "
            + "; ".join(f"{k} = {v}" for k, v in FORMAT_HELP.items() if k != "template")
        ],
        kind="format",
    )


def _preference_format(
    columns: list[str], template: str | None, completion_column: str | None, source_name: str
) -> FormatChoice:
    from .pairs import NEEDED_COLUMNS, PreferenceFormat

    if completion_column:
        return FormatChoice(
            None,
            [
                (
                    "completion_column is for SFT templates; preference pairs take their answers "
                    "from 'chosen' and 'rejected': remove completion_column"
                )
            ],
        )
    parsed = None
    if template is not None:
        try:
            parsed = Template.parse(template)
        except TemplateError as err:
            return FormatChoice(None, [str(err)], kind="template")
        answers = [f for f in parsed.fields if f in ("chosen", "rejected", "preferred_output", "non_preferred_output")]
        if answers:
            return FormatChoice(
                None,
                [
                    (
                        f"prompt_template uses {', '.join(repr('{' + a + '}') for a in answers)}; for preference pairs the "
                        "template renders the prompt only (e.g. '### Question: {prompt}\\n### Answer: '), and the answers "
                        "come from the 'chosen' and 'rejected' columns"
                    )
                ],
                kind="template",
            )
    fmt = PreferenceFormat.from_columns(columns, parsed)
    if fmt is None:
        found = ", ".join(columns) if columns else "none"
        return FormatChoice(
            None,
            [f"{source_name}: preference tuning needs pairs: columns {NEEDED_COLUMNS}; found: {found}"],
            kind="format",
        )
    return FormatChoice(fmt, [])
