"""Token ids and loss masks: rendered text -> `Example`.

Prompt/completion shapes: prompt ids are the tokenizer's leading special tokens (BOS, if it has one) plus the
prompt's tokens; completion ids are the completion's tokens plus EOS, so the model learns to stop. Prompt and
completion are tokenized separately, which is also how generation sees them: the prompt is tokenized alone and
the model continues it.

Chat: the conversation is rendered with the model's chat template and tokenized as one text, the way
`apply_chat_template(tokenize=True)` and inference do. The assistant turns are found as character spans by
rendering the conversation prefix by prefix: the text between "everything before turn i, plus the generation
prompt" and "everything through turn i" is turn i's content and end-of-turn token. Most chat templates (ChatML
among them) have no `{% generation %}` markers, so `return_assistant_tokens_mask` cannot be relied on; the prefix
property holds for them. Templates that rewrite earlier turns once later ones exist fall back to finding the
content text itself. Tokens whose characters start inside a span are trained.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import TuneforgeError
from .example import IGNORE_INDEX, Example
from .formats import Conversation, learned


class ChatTemplateError(ValueError):
    """The chat template failed on (or cannot be aligned with) one conversation."""


class Encoder:
    """Tokenizes rows for one tokenizer. Pure apart from the tokenizer; deterministic."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise TuneforgeError(
                "the tokenizer has no EOS token, so examples cannot teach the model to stop; use a model whose "
                "tokenizer defines eos_token"
            )
        self.prefix = self._special_prefix()
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
        for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
            if getattr(tok, "special", False):
                specials.add(tok.content)
        self.special_texts = tuple(sorted((s for s in specials if s), key=len, reverse=True))

    def _ids(self, text: str, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _special_prefix(self) -> list[int]:
        """The special tokens the tokenizer puts before a text (BOS). Trailing ones (EOS/SEP, added by some
        tokenizers) are left out on purpose: the prompt must not end the sequence before the completion."""
        bare = self._ids("a", False)
        full = self._ids("a", True)
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return full[:start]
        return []

    # --- prompt / completion ------------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> list[int]:
        return self.prefix + self._ids(prompt, False) if prompt else list(self.prefix)

    def encode_pairs(self, prompts: Sequence[str], completions: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """[(prompt ids, completion ids + EOS)], tokenized in one batch call each (fast tokenizers parallelise)."""
        if not prompts:
            return []
        p_ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        c_ids = self.tokenizer(list(completions), add_special_tokens=False)["input_ids"]
        return [(self.prefix + list(p), list(c) + [self.eos_id]) for p, c in zip(p_ids, c_ids, strict=True)]

    # --- chat -------------------------------------------------------------------------------------------------------
    def _render(
        self, messages: list[dict[str, Any]], generation_prompt: bool = False, tools: list[dict[str, Any]] | None = None
    ) -> str:
        # `weight` is tuneforge's loss flag, not template input.
        messages = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as err:  # jinja's raise_exception (e.g. "roles must alternate") and template bugs
            raise ChatTemplateError(f"the model's chat template rejects this conversation: {err}") from None
        return text

    def chat_prompt(self, conv: Conversation) -> str:
        """The conversation up to its last learned assistant turn, with the generation prompt: what the model
        continues."""
        messages = conv.messages
        last = max(i for i, m in enumerate(messages) if learned(m))
        if last:
            return self._render(messages[:last], generation_prompt=True, tools=conv.tools)
        return self._render_generation_only()

    def _render_generation_only(self) -> str:
        # A conversation that opens with the assistant: the prompt is whatever the template emits before it.
        text = self._render([{"role": "assistant", "content": "\x00"}])
        return text[: text.index("\x00")]

    def _trim(self, full: str, start: int, end: int) -> tuple[int, int]:
        """Drop whitespace after the end-of-turn token (ChatML's '\\n' after <|im_end|>): it is template glue, not
        something the model needs to learn; generation stops at the end-of-turn token."""
        stripped = full[start:end].rstrip()
        if any(stripped.endswith(s) for s in self.special_texts):
            return start, start + len(stripped)
        return start, end

    def chat_spans(self, conv: Conversation) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans of its learned assistant turns."""
        messages, tools = conv.messages, conv.tools
        full = self._render(messages, tools=tools)
        # A template without tool support drops tool calls and definitions silently: training would then learn
        # empty turns. Refuse the row instead.
        for t in tools or ():
            if t["function"]["name"] not in full:
                raise ChatTemplateError(
                    f"the model's chat template does not render tool definitions (tool '{t['function']['name']}' is "
                    "missing from the rendered text); use a model whose chat template supports tools"
                )
        for i, m in enumerate(messages, 1):
            for call in m.get("tool_calls") or ():
                if call["function"]["name"] not in full:
                    raise ChatTemplateError(
                        f"the model's chat template does not render tool calls (message {i}'s call to "
                        f"'{call['function']['name']}' is missing from the rendered text); use a model whose chat "
                        "template supports tools"
                    )
        spans: list[tuple[int, int]] = []
        pos = 0
        for i, m in enumerate(messages):
            if not learned(m):
                continue
            span = None
            if i > 0:
                before = self._render(messages[:i], generation_prompt=True, tools=tools)
                through = self._render(messages[: i + 1], tools=tools)
                if len(before) >= pos and through.startswith(before) and full.startswith(through):
                    span = (len(before), len(through))
            if span is None and not m["content"]:
                raise ChatTemplateError(
                    f"cannot find assistant message {i + 1} in the conversation as the chat template renders it"
                )
            if span is None:
                start = full.find(m["content"], pos)
                if start < 0:
                    raise ChatTemplateError(
                        f"cannot find assistant message {i + 1} in the conversation as the chat template renders it"
                    )
                end = start + len(m["content"])
                for s in self.special_texts:  # the end-of-turn token right after the content is learned too
                    if full.startswith(s, end):
                        end += len(s)
                        break
                span = (start, end)
            span = self._trim(full, *span)
            spans.append(span)
            pos = span[1]
        return full, spans

    def encode_chats(
        self, conversations: Sequence[Conversation]
    ) -> list[tuple[list[int], list[bool]] | ChatTemplateError]:
        """[(ids, trained flags)] per conversation, or the ChatTemplateError for that conversation."""
        rendered: list[tuple[str, list[tuple[int, int]]] | ChatTemplateError] = []
        for conv in conversations:
            try:
                rendered.append(self.chat_spans(conv))
            except ChatTemplateError as err:
                rendered.append(err)
        texts = [r[0] for r in rendered if not isinstance(r, ChatTemplateError)]
        encoded: Iterator[tuple[list[int], list[tuple[int, int]]]]
        if getattr(self.tokenizer, "is_fast", False) and texts:
            enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
            encoded = iter(zip(enc["input_ids"], enc["offset_mapping"], strict=True))
        else:
            encoded = iter(self._encode_by_pieces(r) for r in rendered if not isinstance(r, ChatTemplateError))
        out: list[tuple[list[int], list[bool]] | ChatTemplateError] = []
        for r in rendered:
            if isinstance(r, ChatTemplateError):
                out.append(r)
                continue
            ids, offsets = next(encoded)
            out.append((list(ids), _trained_flags(offsets, r[1])))
        return out

    def _encode_by_pieces(self, rendered: tuple[str, list[tuple[int, int]]]) -> tuple[list[int], list[tuple[int, int]]]:
        """Slow tokenizers have no offsets: tokenize the text between span boundaries piece by piece."""
        full, spans = rendered
        cuts = sorted({0, len(full), *(b for s in spans for b in s)})
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        for a, b in itertools.pairwise(cuts):
            piece = self._ids(full[a:b], False)
            ids.extend(piece)
            offsets.extend([(a, b)] * len(piece))
        return ids, offsets


def _trained_flags(offsets: Sequence[Sequence[int]], spans: list[tuple[int, int]]) -> list[bool]:
    flags = []
    k = 0
    for start, _end in offsets:
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        flags.append(k < len(spans) and spans[k][0] <= start < spans[k][1])
    return flags


# --- examples -----------------------------------------------------------------------------------------------------


def pair_example(
    prompt_ids: list[int], completion_ids: list[int], *, cutoff_len: int, train_on_inputs: bool
) -> Example:
    ids = prompt_ids + completion_ids
    labels = ids if train_on_inputs else [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    return Example(tuple(ids[:cutoff_len]), tuple(labels[:cutoff_len]))


def chat_example(ids: list[int], trained: list[bool], *, cutoff_len: int, train_on_inputs: bool) -> Example:
    labels = ids if train_on_inputs else [t if keep else IGNORE_INDEX for t, keep in zip(ids, trained, strict=True)]
    return Example(tuple(ids[:cutoff_len]), tuple(labels[:cutoff_len]))
