"""Constrained decoding: a JSON schema becomes a per-token mask over the vocabulary, so the output always parses
and matches the schema (OpenAI's `response_format` json_object / json_schema, and forced tool calls).

The grammar engine is llguidance (the library behind vLLM's and llama.cpp's "guidance" backends): it compiles
a JSON schema against the tokenizer's byte-level vocabulary and computes the allowed-token bitmask for the next
position in tens of microseconds per token, lazily, without building a whole-vocabulary automaton up front (so a
new schema costs milliseconds, not seconds). Measured on the real 49k-token SmolLM2 vocabulary in
`bench/bench_constrained.py`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from ..errors import TuneforgeError

# llguidance's own limits are generous; a request must not be able to make the model thread compile for seconds.
_MAX_SCHEMA_CHARS = 100_000


class TokenConstraint:
    """One request's grammar state: masks the logits of the next position, advances on the chosen token."""

    def __init__(self, matcher: Any, vocab_size: int):
        self.matcher = matcher
        self.vocab_size = vocab_size

    def allowed(self) -> torch.Tensor:
        """A bool tensor (vocab_size,): the tokens the grammar allows next."""
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        # the bitmask is little-endian 32-bit words: bit i of byte k is token 8k + i. numpy's unpackbits is one C
        # loop (measured ~12x faster than the same unpacking in torch ops on a 49k vocabulary)
        return torch.from_numpy(np.unpackbits(bits, bitorder="little")[: self.vocab_size].view(np.bool_))

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits of the tokens the grammar forbids to -inf, in place."""
        allowed = self.allowed()
        if not bool(allowed.any()):
            raise RuntimeError(f"the output grammar allows no token: {self.matcher.get_error() or 'dead end'}")
        n = min(len(allowed), logits.shape[-1])
        logits[:n].masked_fill_(~allowed[:n].to(logits.device), float("-inf"))
        logits[n:] = float("-inf")  # rows past the tokenizer's vocabulary (padding of the embedding matrix)

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the output grammar refused token {token}: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        """True once the grammar is complete and nothing may follow (only end-of-sequence is left)."""
        return bool(self.matcher.is_stopped())


class GrammarCompiler:
    """Compiles JSON schemas for one tokenizer. The tokenizer's llguidance view is built on first use (about a
    second for a 50k vocabulary) and shared by every request after it."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Iterable[int]):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = sorted(eos_ids)
        self._ll: Any = None
        self._lock = threading.Lock()
        self._compiled: dict[str, str] = {}  # schema text -> grammar (n choices, or clients reusing one schema)
        self._cache_lock = threading.Lock()

    def prepare(self) -> None:
        """Build the tokenizer's llguidance view now (a background thread calls this at engine start, so the
        first constrained request does not wait for it)."""
        self._lltokenizer()

    def _lltokenizer(self) -> Any:
        with self._lock:
            if self._ll is None:
                import llguidance.hf

                try:
                    self._ll = llguidance.hf.from_tokenizer(
                        self.tokenizer, n_vocab=self.vocab_size, eos_token=self.eos_ids or None
                    )
                except ValueError as exc:  # a slow (Python) tokenizer: llguidance reads the Rust one
                    raise TuneforgeError(
                        f"constrained output and logprobs need a fast tokenizer; this model's cannot be used: {exc}",
                        field="response_format",
                    ) from None
            return self._ll

    def json_schema(self, schema: dict[str, Any], *, field: str) -> str:
        """The grammar of JSON documents matching `schema`; TuneforgeError naming `field` when it cannot compile."""
        import llguidance

        if not isinstance(schema, dict):
            raise TuneforgeError(f"{field}: a JSON schema must be an object, got {type(schema).__name__}", field=field)
        text = json.dumps(schema)  # key order kept: the output lists properties in the schema's order
        with self._cache_lock:
            if text in self._compiled:
                return self._compiled[text]
        if len(text) > _MAX_SCHEMA_CHARS:
            raise TuneforgeError(
                f"{field}: the schema is {len(text)} characters; at most {_MAX_SCHEMA_CHARS} are accepted", field=field
            )
        try:
            # compact separators, as OpenAI's structured outputs write them; any whitespace in between is not
            # worth the tokens a small model may waste on it
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                text, defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
            )
        except ValueError as exc:
            raise TuneforgeError(f"{field}: not a usable JSON schema: {exc}", field=field) from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self._lltokenizer())
        if is_error:
            raise TuneforgeError(f"{field}: this JSON schema is not supported: {messages[0]}", field=field)
        with self._cache_lock:
            if len(self._compiled) >= 256:  # bounded: a client sending a new schema each time must not grow it
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[text] = grammar
        return grammar

    def token_bytes(self, token: int) -> bytes:
        """The exact bytes of one token (a byte-level piece may be part of a UTF-8 character; a special token
        gives its name), as OpenAI's logprobs report them."""
        return bytes(self._lltokenizer().decode_bytes([token]))

    def constraint(self, grammar: str) -> TokenConstraint:
        import llguidance

        matcher = llguidance.LLMatcher(self._lltokenizer(), grammar, log_level=0)
        if matcher.is_error():
            raise TuneforgeError(f"response_format: {matcher.get_error()}", field="response_format")
        return TokenConstraint(matcher, self.vocab_size)
