"""Greedy, batched generation for evaluation, and the answer-length budget derived from the references."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

MAX_NEW_TOKENS_CAP = 512  # a bound on the budget however long the references are: base models rarely stop


def max_new_tokens_for(reference_lengths: Sequence[int], *, cap: int = MAX_NEW_TOKENS_CAP) -> int:
    """Enough room for the longest reference plus a quarter and its end-of-sequence token, at least 8, at most
    `cap`: an answer longer than that is wrong anyway, and a base model that never stops costs no more."""
    longest = max(reference_lengths, default=0)
    return max(8, min(cap, math.ceil(longest * 1.25) + 1))


@torch.no_grad()
def greedy_generate(
    model, tokenizer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, batch_size: int = 16, autocast=None
) -> list[str]:
    """Greedy completions for prompts given as token ids (exactly as training tokenized them), in their order.

    Prompts are batched longest first so that each batch pads little, with left padding so that every row's next
    token sits in the same column. Only the new tokens are decoded, without special tokens.
    """
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + list(prompts[i]) for i in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in chunk], device=device)
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
                top_p=None,
                top_k=None,
                temperature=None,
                use_cache=True,
            )
        for i, row in zip(chunk, out, strict=True):
            answers[i] = tokenizer.decode(row[width:], skip_special_tokens=True)
    if was_training:
        model.train()
    return answers
