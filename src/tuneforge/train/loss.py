"""Causal-LM loss computed only where it counts.

The usual recipe computes logits for every position and the whole vocabulary — (B, T, V) floats, 49,152 wide for
SmolLM2 — and then throws most of them away, because prompt and padding positions carry no loss. Here the decoder
runs once, the hidden states of the positions that predict a target token are gathered, and only those go through
the output head, in chunks whose logits are recomputed in the backward pass instead of being stored
(cf. Liger-Kernel's fused linear cross-entropy, and torchtune's chunked output). Same loss, a fraction of the
compute and memory of the head.

Architectures whose head does more than a plain linear layer (e.g. logit scaling) fall back to the model's own
forward; `FAST_PATH_TYPES` (models/loss_path.py, which the memory estimate reads too) lists the ones verified to
give identical losses (see tests/models/test_architectures.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..data.example import IGNORE_INDEX
from ..models.loss_path import FAST_PATH_TYPES, chunk_tokens_for


def _head_loss_sum(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    logits = head(hidden).float()  # (N, V); cross-entropy in fp32 for accuracy under bf16 autocast
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def _base_causal_lm(model):
    """The transformers *ForCausalLM under a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if get_base is not None else model


def loss_sum(model, batch: dict[str, torch.Tensor], *, chunk_tokens: int | None = None) -> tuple[torch.Tensor, int]:
    """(sum of token cross-entropies over target positions, number of target positions) for one micro-batch.

    Returning the sum lets gradient accumulation normalise by the number of target tokens in the whole optimizer
    step, so long and short micro-batches weigh by their tokens (as in transformers >= 4.46's `num_items_in_batch`).
    """
    labels = batch["labels"]
    targets = labels[:, 1:]  # position t predicts token t+1
    mask = targets != IGNORE_INDEX  # (B, T-1)
    n_targets = int(mask.sum())
    lm = _base_causal_lm(model)
    if getattr(lm.config, "model_type", None) not in FAST_PATH_TYPES:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        flat = logits[:, :-1].float().reshape(-1, logits.size(-1))
        return F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"), n_targets

    # No attention mask: batches are right-padded (see batching.collate), and under causal attention a real token
    # never sees the padding after it, so the mask changes nothing that reaches the loss. Without it the
    # attention runs as plain causal SDPA (the fused kernel) instead of materialising a (B, 1, T, T) float mask.
    out = lm.get_decoder()(input_ids=batch["input_ids"], use_cache=False)
    hidden = out.last_hidden_state[:, :-1][mask]  # (N, C): only positions that predict a target
    selected = targets[mask]  # (N,)
    head = lm.get_output_embeddings()
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    chunk_tokens = chunk_tokens or chunk_tokens_for(lm.config.vocab_size)
    if n_targets <= chunk_tokens:
        return _head_loss_sum(head, hidden, selected, softcap), n_targets
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, n_targets, chunk_tokens):
        sl = slice(start, start + chunk_tokens)
        # Recompute this chunk's logits in backward rather than keep (N, V) floats alive.
        total = total + checkpoint(_head_loss_sum, head, hidden[sl], selected[sl], softcap, use_reentrant=False)
    return total, n_targets
