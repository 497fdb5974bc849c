"""How a request picks its tokens: the sampling parameters it may set and the per-request sampler.

The engine computes next-token logits for a request's row (alone or in a batch) and hands them to that request's
`TokenSampler`, which owns everything per-request about the choice: its seeded generator (so seeded sampling is
reproducible however requests interleave or batch), OpenAI's logit processing in OpenAI's order (logit bias, then
presence/frequency penalties over the tokens generated so far, then the output grammar's mask), and the log
probabilities to report.

Reported log probabilities are those of the model's own distribution, before temperature, penalties, bias and
the grammar's mask (vLLM's default, "raw_logprobs"): they say how likely the model found each token, which is
what a client scoring or calibrating outputs wants, also for a constrained answer.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..errors import TuneforgeError

if TYPE_CHECKING:
    from .grammar import TokenConstraint

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for top_logprobs


@dataclass
class SamplingParams:
    """What a request may set. The defaults are OpenAI's (temperature 1, top_p 1)."""

    max_tokens: int | None = None  # None: the engine's default_max_tokens, capped by the context length
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = None
    ignore_eos: bool = False  # keep going past end-of-sequence (benchmarks want a fixed token count)
    presence_penalty: float = 0.0  # subtracted once from the logit of every token already generated
    frequency_penalty: float = 0.0  # subtracted per occurrence of a token already generated
    logit_bias: Mapping[int, float] = field(default_factory=dict)  # token id -> added to its logit, -100..100
    logprobs: int | None = None  # None: none reported; k: the chosen token's and the k most likely tokens'
    json_schema: dict | None = None  # constrain the output to JSON documents matching this schema
    json_schema_field: str = "response_format"  # the request field the schema came from (named in its errors)

    def check(self, vocab_size: int | None = None) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise TuneforgeError(f"max_tokens must be at least 1, got {self.max_tokens}", field="max_tokens")
        if not 0 <= self.temperature <= 2:
            raise TuneforgeError(f"temperature must be between 0 and 2, got {self.temperature}", field="temperature")
        if not 0 < self.top_p <= 1:
            raise TuneforgeError(f"top_p must be in (0, 1], got {self.top_p}", field="top_p")
        if len(self.stop) > 4:
            raise TuneforgeError(f"stop: at most 4 stop strings, got {len(self.stop)}", field="stop")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise TuneforgeError("stop: stop strings must be non-empty strings", field="stop")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2 <= value <= 2:
                raise TuneforgeError(f"{name} must be between -2 and 2, got {value}", field=name, value=value)
        for token, bias in self.logit_bias.items():
            if vocab_size is not None and not 0 <= token < vocab_size:
                raise TuneforgeError(
                    f"logit_bias: token id {token} is not in this model's vocabulary [0, {vocab_size})",
                    field="logit_bias",
                    value=token,
                )
            if not -100 <= bias <= 100:
                raise TuneforgeError(
                    f"logit_bias: the bias of token {token} must be between -100 and 100, got {bias}",
                    field="logit_bias",
                    value=bias,
                )
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise TuneforgeError(
                f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {self.logprobs}",
                field="top_logprobs",
                value=self.logprobs,
            )


@dataclass
class TokenLogprob:
    """A generated token's log probability and the `top` most likely alternatives at its position (id, logprob),
    most likely first."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """One token id from the last position's logits (V,): greedy at temperature 0, else nucleus sampling
    (Holtzman et al. 2019, arXiv:1904.09751) over softmax(logits / temperature)."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        pick = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(order[pick])
    return int(torch.multinomial(probs, 1, generator=generator))


class TokenSampler:
    """One request's token choice: its parameters, its own seeded generator, the counts of the tokens it chose
    (for the penalties), its output grammar's state, and the log probabilities of its last choice."""

    def __init__(self, params: SamplingParams, device: torch.device | str, constraint: TokenConstraint | None = None):
        self.params = params
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.constraint = constraint
        self.last_logprob: TokenLogprob | None = None  # set by choose() when params.logprobs is not None
        self._counts: torch.Tensor | None = None  # occurrences of each token id in the output (penalties only)
        self._bias: tuple[torch.Tensor, torch.Tensor] | None = None

    def _processed(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits after logit bias, penalties and the grammar's mask (a copy when any applies)."""
        p = self.params
        penalize = bool(p.presence_penalty or p.frequency_penalty)
        if not (p.logit_bias or penalize or self.constraint is not None):
            return logits
        x = logits.float().clone()
        if p.logit_bias:
            if self._bias is None:
                self._bias = (
                    torch.tensor(list(p.logit_bias), dtype=torch.long, device=x.device),
                    torch.tensor(list(p.logit_bias.values()), dtype=x.dtype, device=x.device),
                )
            x.index_add_(0, *self._bias)
        if penalize and self._counts is not None:
            c = self._counts
            x -= c * p.frequency_penalty + (c > 0).to(x.dtype) * p.presence_penalty
        if self.constraint is not None:
            self.constraint.mask(x)
        return x

    def choose(self, logits: torch.Tensor) -> int:
        """The next token id from this request's next-token logits (V,); advances its grammar and records the
        token's log probabilities (`last_logprob`) when asked for."""
        p = self.params
        token = sample_next(self._processed(logits), p.temperature, p.top_p, self.generator)
        if p.logprobs is not None:
            logp = torch.log_softmax(logits.float(), dim=-1)
            top = torch.topk(logp, p.logprobs) if p.logprobs else None
            self.last_logprob = TokenLogprob(
                token,
                float(logp[token]),
                [] if top is None else list(zip(top.indices.tolist(), top.values.tolist(), strict=True)),
            )
        if p.presence_penalty or p.frequency_penalty:
            if self._counts is None:
                self._counts = torch.zeros(logits.shape[-1], dtype=torch.float32, device=logits.device)
            self._counts[token] += 1
        if self.constraint is not None:
            self.constraint.advance(token)
        return token

    @property
    def finished(self) -> bool:
        """The output grammar is complete: nothing may follow."""
        return self.constraint is not None and self.constraint.done
