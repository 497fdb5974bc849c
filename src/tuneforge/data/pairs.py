"""Preference pairs: a prompt with a chosen (better) and a rejected (worse) answer, for ORPO, DPO and SimPO.

Row shapes, as the tools people bring data from write them:

- TRL / LLaMA-Factory: `prompt`, `chosen`, `rejected` columns. Each is text, or a list of OpenAI-style chat
  messages (`prompt` the conversation so far, `chosen`/`rejected` the assistant reply). Without a `prompt` column,
  message-list answers carry the whole conversation and the prompt is the part they share (TRL's "implicit prompt").
- OpenAI's DPO fine-tuning JSONL: `input` ({"messages": [...]}), `preferred_output` and `non_preferred_output`
  (lists holding the assistant message).

A `prompt_template` renders the prompt from the row's columns (the whole template is the prompt; the answers are
the `chosen`/`rejected` columns). Text pairs are tokenized like SFT's prompt/completion rows (BOS + prompt, answer +
EOS); message lists are rendered with the model's chat template, the prompt with the generation prompt, so each
answer's tokens are exactly what the model would generate after the prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .example import Example
from .formats import ROLES, Problem, RowFormat, Template, check_text, describe_value
from .tokenize import ChatTemplateError, Encoder, pair_example

TRL_FIELDS = ("prompt", "chosen", "rejected")
OPENAI_FIELDS = ("input", "preferred_output", "non_preferred_output")
NEEDED_COLUMNS = (
    "'chosen' and 'rejected' (with 'prompt', as TRL and LLaMA-Factory write pairs) or OpenAI DPO's 'input', "
    "'preferred_output' and 'non_preferred_output'"
)
_MESSAGES = 'a list of {"role": ..., "content": ...} chat messages'

Messages = list[dict[str, str]]


@dataclass(frozen=True, slots=True)
class PairExample:
    """One tokenized preference pair: the same prompt ids lead both examples; labels mark only the answers."""

    chosen: Example
    rejected: Example

    def __len__(self) -> int:
        # Tokens a training step processes for this pair (both sequences): what length grouping balances.
        return len(self.chosen) + len(self.rejected)

    @property
    def n_targets(self) -> int:
        return self.chosen.n_targets + self.rejected.n_targets


def is_pair_columns(columns: list[str] | set[str]) -> bool:
    have = set(columns)
    return {"chosen", "rejected"} <= have or {"preferred_output", "non_preferred_output"} <= have


def _json_list(value: Any) -> Any:
    """CSV cannot hold lists: a string that parses as a JSON list of messages is taken as that list."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(parsed, list) and parsed and all(isinstance(m, dict) for m in parsed):
            return parsed
    return value


def _message_problems(value: list[Any], where: str, *, answer: bool) -> list[str]:
    out = []
    for i, m in enumerate(value, 1):
        if not isinstance(m, dict):
            out.append(f'{where} message {i} is {describe_value(m)}, not an object {{"role", "content"}}')
            continue
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            shown = "missing" if role is None else repr(role)
            out.append(f"{where} message {i} has role {shown}; allowed roles: {', '.join(ROLES)}")
        elif answer and role != "assistant":
            out.append(f"{where} message {i} has role {role!r}; an answer holds assistant messages only")
        if not isinstance(content, str):
            what = "missing" if "content" not in m else ("null" if content is None else describe_value(content))
            out.append(f"{where} message {i}: content is {what}; it must be text")
        elif answer and not content.strip():
            out.append(f"{where} message {i} (assistant) has empty content; nothing to compare")
    return out


def _clean(messages: list[dict[str, Any]]) -> Messages:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


class PreferenceFormat(RowFormat):
    """Pairs for preference tuning; `parts(row)` -> (prompt, chosen, rejected), each text or a message list."""

    name = "preference"

    def __init__(self, style: str, template: Template | None = None, has_prompt: bool = True):
        self.style = style  # "trl" or "openai"
        self.template = template
        self.has_prompt = has_prompt
        if style == "openai":
            self.fields = OPENAI_FIELDS
            self.answer_fields = ("preferred_output", "non_preferred_output")
        else:
            prompt_fields = template.fields if template else (("prompt",) if has_prompt else ())
            self.fields = (*prompt_fields, "chosen", "rejected")
            self.answer_fields = ("chosen", "rejected")
        # Only template placeholders must be text column-wide; prompt/chosen/rejected may hold message lists.
        self.text_fields = template.fields if template else ()

    @staticmethod
    def from_columns(columns: list[str], template: Template | None) -> PreferenceFormat | None:
        have = set(columns)
        if {"chosen", "rejected"} <= have:
            return PreferenceFormat("trl", template, has_prompt="prompt" in have)
        if {"preferred_output", "non_preferred_output"} <= have and template is None:
            return PreferenceFormat("openai")
        return None

    def describe(self) -> str:
        if self.style == "openai":
            return "pairs: input.messages -> preferred_output vs non_preferred_output (OpenAI DPO)"
        prompt = "prompt_template" if self.template else ("prompt" if self.has_prompt else "shared messages")
        return f"pairs: {prompt} -> chosen vs rejected"

    # --- checks ---------------------------------------------------------------------------------------------------
    def check(self, row: dict[str, Any], noun: str, skip: frozenset[str]) -> list[Problem]:
        if self.style == "openai":
            return self._check_openai(row, noun, skip)
        out: list[Problem] = []
        if self.template is not None:
            for name in self.template.fields:
                if name not in skip:
                    p = check_text(row, name, noun, "the template needs it in the prompt", empty_is_error=False)
                    if p is not None:
                        out.append(p)
        elif "prompt" in row and "prompt" not in skip:
            value = _json_list(row["prompt"])
            if isinstance(value, list):
                out.extend(
                    Problem("bad_messages", "prompt", t) for t in _message_problems(value, "'prompt'", answer=False)
                )
            else:
                p = check_text(row, "prompt", noun, f"it is the prompt (text or {_MESSAGES})", empty_is_error=False)
                if p is not None:
                    out.append(p)
        answers: dict[str, Any] = {}
        for name in self.answer_fields:
            if name in skip:
                continue
            p = self._check_answer(row, name, noun)
            if p is not None:
                out.append(p)
            else:
                answers[name] = _json_list(row[name])
        if out or len(answers) < 2:
            return out
        chosen, rejected = answers["chosen"], answers["rejected"]
        if "prompt" not in row and self.template is None:
            if not (isinstance(chosen, list) and isinstance(rejected, list)):
                return [
                    Problem(
                        "missing_field",
                        "prompt",
                        f"{noun} 'prompt' is missing: text answers need the prompt they answer (or give chosen and "
                        f"rejected as {_MESSAGES} holding the whole conversation)",
                    )
                ]
            try:
                self.parts(row)
            except ValueError as err:
                return [Problem("bad_messages", "chosen", str(err))]
        if chosen == rejected:
            return [
                Problem(
                    "identical_pair",
                    "rejected",
                    "'chosen' and 'rejected' are identical, so there is no preference to learn (fix or drop the row)",
                )
            ]
        return out

    def _check_answer(self, row: dict[str, Any], name: str, noun: str) -> Problem | None:
        role = (
            "the answer the model should prefer"
            if name in ("chosen", "preferred_output")
            else "the answer it should avoid"
        )
        if name not in row:
            return Problem("missing_field", name, f"{noun} '{name}' is missing; it is {role}")
        value = _json_list(row[name])
        if value is None:
            return Problem("null_field", name, f"{noun} '{name}' is null; it is {role}")
        if isinstance(value, list):
            if not value:
                return Problem("empty_field", name, f"{noun} '{name}' is an empty list; it is {role}")
            # Without a prompt (TRL's implicit prompt) each answer is the whole conversation, user turns included.
            whole = self.style == "trl" and self.template is None and "prompt" not in row
            problems = _message_problems(value, f"'{name}'", answer=not whole)
            if problems:
                return Problem("bad_messages", name, "; ".join(problems[:3]))
            return None
        if self.style == "openai":
            return Problem("bad_messages", name, f"{noun} '{name}' is {describe_value(value)}; it must be {_MESSAGES}")
        if not isinstance(value, str):
            return Problem(
                "not_text",
                name,
                f"{noun} '{name}' is {describe_value(value)}, not text; it is {role} (write it as a string or as "
                f"{_MESSAGES})",
            )
        if not value.strip():
            return Problem("empty_field", name, f"{noun} '{name}' is empty; it is {role}")
        return None

    def _check_openai(self, row: dict[str, Any], noun: str, skip: frozenset[str]) -> list[Problem]:
        out: list[Problem] = []
        if "input" not in skip:
            value = row.get("input")
            messages = value.get("messages") if isinstance(value, dict) else None
            if "input" not in row:
                out.append(
                    Problem("missing_field", "input", f"{noun} 'input' is missing; it holds the prompt's messages")
                )
            elif not isinstance(messages, list) or not messages:
                out.append(
                    Problem(
                        "bad_messages",
                        "input",
                        f"{noun} 'input' must be an object {{\"messages\": [...]}} with {_MESSAGES}, got "
                        f"{describe_value(value)}",
                    )
                )
            else:
                out.extend(
                    Problem("bad_messages", "input", t) for t in _message_problems(messages, "'input'", answer=False)
                )
        for name in self.answer_fields:
            if name not in skip:
                p = self._check_answer(row, name, noun)
                if p is not None:
                    out.append(p)
        if not out and self._answers(row)[0] == self._answers(row)[1]:
            out.append(
                Problem(
                    "identical_pair",
                    "non_preferred_output",
                    "'preferred_output' and 'non_preferred_output' are identical, so there is no preference to learn",
                )
            )
        return out

    # --- reading a checked row ---------------------------------------------------------------------------------------
    def _answers(self, row: dict[str, Any]) -> tuple[Any, Any]:
        a, b = (_json_list(row[n]) for n in self.answer_fields)
        return a, b

    def parts(self, row: dict[str, Any]) -> tuple[str | Messages, str | Messages, str | Messages]:
        """(prompt, chosen, rejected) of a checked row. Message lists stay lists; the prompt of a message-list
        pair without a prompt column is the longest message prefix the two conversations share."""
        chosen, rejected = self._answers(row)
        if self.style == "openai":
            return _clean(row["input"]["messages"]), _clean(chosen), _clean(rejected)
        if self.template is not None:
            prompt: str | Messages = self.template.render_whole(row)
        elif "prompt" in row:
            prompt = _json_list(row["prompt"])
            prompt = _clean(prompt) if isinstance(prompt, list) else prompt
        else:
            k = 0
            while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
                k += 1
            if k == 0 or not any(m.get("role") == "user" for m in chosen[:k]):
                raise ValueError(
                    "without a 'prompt' column, chosen and rejected must start with the same conversation (at least "
                    "one user message) and differ in the assistant's reply"
                )
            if any(m.get("role") != "assistant" for m in chosen[k:] + rejected[k:]):
                raise ValueError("after the shared conversation, chosen and rejected must hold assistant messages only")
            return _clean(chosen[:k]), _clean(chosen[k:]), _clean(rejected[k:])
        return (
            prompt,
            (_clean(chosen) if isinstance(chosen, list) else chosen),
            (_clean(rejected) if isinstance(rejected, list) else rejected),
        )

    def completion_text(self, row: dict[str, Any]) -> str | None:
        chosen = self.parts(row)[1]
        return chosen if isinstance(chosen, str) else (chosen[-1]["content"] if chosen else None)


# --- tokenizing --------------------------------------------------------------------------------------------------


def _as_messages(value: str | Messages, role: str) -> Messages:
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def chat_pair_texts(
    encoder: Encoder, prompt: str | Messages, answers: tuple[str | Messages, ...]
) -> tuple[str, list[str]]:
    """The prompt as the chat template renders it for generation, and each answer's text after it (through the
    end-of-turn token). Raises ChatTemplateError when the template does not render the prompt as a prefix."""
    prompt_msgs = _as_messages(prompt, "user")
    prompt_text = encoder._render(prompt_msgs, generation_prompt=True)
    texts = []
    for answer in answers:
        full = encoder._render(prompt_msgs + _as_messages(answer, "assistant"))
        if not full.startswith(prompt_text):
            raise ChatTemplateError(
                "the chat template does not render the prompt as the start of the conversation, so the answer's "
                "tokens cannot be separated from the prompt's"
            )
        start, end = encoder._trim(full, len(prompt_text), len(full))
        texts.append(full[start:end])
    return prompt_text, texts


def encode_preference(
    encoder: Encoder, fmt: PreferenceFormat, rows: list[dict[str, Any]], *, cutoff_len: int
) -> list[tuple[PairExample, int, int] | ChatTemplateError]:
    """Per row: (pair, untruncated length of the longer side, prompt length), or the ChatTemplateError."""
    out: list[tuple[PairExample, int, int] | ChatTemplateError] = []
    for row in rows:
        prompt, chosen, rejected = fmt.parts(row)
        if isinstance(prompt, list) or isinstance(chosen, list) or isinstance(rejected, list):
            if not encoder.has_chat_template:
                out.append(
                    ChatTemplateError(
                        "the pair holds chat messages but the tokenizer has no chat template; use a model with one "
                        "(an instruct/chat model) or give prompt, chosen and rejected as text"
                    )
                )
                continue
            try:
                prompt_text, (c_text, r_text) = chat_pair_texts(encoder, prompt, (chosen, rejected))
            except ChatTemplateError as err:
                out.append(err)
                continue
            # The chat template writes its own BOS and end-of-turn token: no special tokens are added here.
            p_ids = encoder._ids(prompt_text, False)
            c_ids, r_ids = encoder._ids(c_text, False), encoder._ids(r_text, False)
        else:
            (p_ids, c_ids), (_, r_ids) = encoder.encode_pairs([prompt, prompt], [chosen, rejected])
        pair = PairExample(
            pair_example(p_ids, c_ids, cutoff_len=cutoff_len, train_on_inputs=False),
            pair_example(p_ids, r_ids, cutoff_len=cutoff_len, train_on_inputs=False),
        )
        out.append((pair, len(p_ids) + max(len(c_ids), len(r_ids)), len(p_ids)))
    return out


def pair_prompt(encoder: Encoder, fmt: PreferenceFormat, row: dict[str, Any]) -> tuple[str, list[int]]:
    """The prompt of a pair as text and as token ids exactly as training tokenized it (for generating from it)."""
    prompt, chosen, rejected = fmt.parts(row)
    if isinstance(prompt, list) or isinstance(chosen, list) or isinstance(rejected, list):
        text = encoder._render(_as_messages(prompt, "user"), generation_prompt=True)
        return text, encoder._ids(text, False)
    return prompt, encoder.prompt_ids(prompt)
