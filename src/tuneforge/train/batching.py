"""Batch order and collation.

Length grouping (cf. transformers' LengthGroupedSampler): examples are shuffled, cut into mega-batches of 50
batches, sorted by length inside each mega-batch, then the batches are shuffled again. Batches hold examples of
similar length, so padding (wasted compute) is small, while the order stays random. The batch with the most tokens
goes first so an out-of-memory error shows in the first step, not hours in.

Everything here is a pure function of (lengths, batch size, seed, epoch): a resumed run recomputes exactly the same
order and skips what it already consumed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..data.example import IGNORE_INDEX, Example

MEGABATCH_FACTOR = 50


def epoch_batches(
    lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int, group_by_length: bool
) -> list[list[int]]:
    """Indices of the examples in each micro-batch of one epoch."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    mega = batch_size * MEGABATCH_FACTOR
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches)).tolist()
    batches = [batches[i] for i in perm]
    biggest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]) * len(batches[b]))
    batches.insert(0, batches.pop(biggest))
    return batches


def collate(examples: Sequence[Example], pad_id: int, pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids, attention_mask, labels — each (B, T)."""
    longest = max(len(e) for e in examples)
    if pad_to_multiple_of > 1:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex)
        input_ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
