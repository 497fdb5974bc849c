"""How a request picks its tokens: the sampling parameters it may set and the per-request sampler.

The engine computes next-token logits for a request's row (alone or in a batch) and hands them to that request's
`TokenSampler`, which owns everything per-request about the choice (its seeded generator, so seeded sampling is
reproducible however requests interleave or batch).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import TuneforgeError


@dataclass
class SamplingParams:
    """What a request may set. The defaults are OpenAI's (temperature 1, top_p 1)."""

    max_tokens: int | None = None  # None: the engine's default_max_tokens, capped by the context length
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = None
    ignore_eos: bool = False  # keep going past end-of-sequence (benchmarks want a fixed token count)

    def check(self) -> None:
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
    """One request's token choice: its parameters and its own seeded generator."""

    def __init__(self, params: SamplingParams, device: torch.device | str):
        self.params = params
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def choose(self, logits: torch.Tensor) -> int:
        """The next token id from this request's next-token logits (V,)."""
        return sample_next(logits, self.params.temperature, self.params.top_p, self.generator)
