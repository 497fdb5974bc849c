"""Preference tuning objectives: ORPO, DPO and SimPO over (prompt, chosen, rejected) pairs.

One forward pass per micro-batch runs the chosen and rejected sequences of every pair together (2B rows, TRL's
"concatenated forward"). As in SFT (loss.py), only the hidden states of positions that predict an answer token go
through the output head, so the prompt and padding cost no logits; each sequence's answer log-probability is the
sum of its tokens' log-probabilities.

- ORPO (Hong et al. 2024, arXiv:2403.07691, eq. 6-7): L = NLL(chosen) - lambda * log sigmoid(log odds ratio), with
  log odds(y) = log p - log(1 - p) and p = exp(mean token log-prob of y). No reference model.
- DPO (Rafailov et al. 2023, arXiv:2305.18290, eq. 7): L = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))
  over summed log-probs. The reference is the base model itself, run with the LoRA adapter disabled (PEFT's
  `disable_adapter()`), so no second copy of the weights exists; its log-probs are computed once per micro-batch
  under no_grad (and once per run for the validation pairs, which do not change).
- SimPO (Meng et al. 2024, arXiv:2405.14734, eq. 6): L = -log sigmoid(beta * (mean_c - mean_r) - gamma), length-
  normalised and reference-free.

Rewards follow TRL's conventions: DPO beta * (policy - reference) summed log-probs; ORPO lambda * mean log-prob;
SimPO beta * mean log-prob. Reward accuracy is the share of pairs whose chosen reward is strictly higher; the
margin is chosen minus rejected reward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..data.example import IGNORE_INDEX
from ..data.pairs import PairExample
from .batching import collate
from .loss import FAST_PATH_TYPES, _base_causal_lm, chunk_tokens_for

METHODS = ("orpo", "dpo", "simpo")
# Per-pair sums that the train records and evaluations average; "pairs" is the count they divide by.
STAT_KEYS = ("loss", "reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps")


# --- log-probabilities --------------------------------------------------------------------------------------------


def _head_logps(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    logits = head(hidden).float()  # (N, V), fp32 under bf16 autocast
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return -F.cross_entropy(logits, targets, reduction="none")  # (N,) log p(target)


def sequence_logps(
    model, batch: dict[str, torch.Tensor], *, chunk_tokens: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob of each row's target tokens (B,), number of target tokens per row (B,))."""
    labels = batch["labels"]
    targets = labels[:, 1:]  # position t predicts token t+1
    mask = targets != IGNORE_INDEX  # (B, T-1)
    counts = mask.sum(dim=1)
    rows = torch.arange(labels.size(0), device=labels.device).unsqueeze(1).expand_as(mask)[mask]  # (N,) row of each
    lm = _base_causal_lm(model)
    if getattr(lm.config, "model_type", None) not in FAST_PATH_TYPES:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        token_logps = torch.log_softmax(logits[mask].float(), dim=-1).gather(1, targets[mask].unsqueeze(1)).squeeze(1)
    else:
        # Right-padded rows under causal attention need no mask (see loss.loss_sum): plain causal SDPA.
        hidden = lm.get_decoder()(input_ids=batch["input_ids"], use_cache=False).last_hidden_state[:, :-1][mask]
        selected = targets[mask]
        head = lm.get_output_embeddings()
        softcap = getattr(lm.config, "final_logit_softcapping", None)
        chunk = chunk_tokens or chunk_tokens_for(lm.config.vocab_size)
        n = int(selected.numel())
        if n <= chunk:
            token_logps = _head_logps(head, hidden, selected, softcap)
        else:
            token_logps = torch.cat(
                [
                    checkpoint(
                        _head_logps, head, hidden[s : s + chunk], selected[s : s + chunk], softcap, use_reentrant=False
                    )
                    for s in range(0, n, chunk)
                ]
            )
    sums = torch.zeros(labels.size(0), dtype=torch.float32, device=labels.device).index_add(
        0, rows, token_logps.float()
    )
    return sums, counts


# --- the papers' losses, on per-pair log-probabilities --------------------------------------------------------------


@dataclass
class PairTerms:
    losses: torch.Tensor  # (B,) per-pair loss
    chosen_rewards: torch.Tensor  # (B,)
    rejected_rewards: torch.Tensor  # (B,)
    chosen_logps: torch.Tensor  # (B,) what the method compares: summed (DPO) or mean per token (ORPO, SimPO)
    rejected_logps: torch.Tensor


def _log1m_exp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 (where log1p(-exp(x)) loses precision)."""
    x = x.clamp(max=-1e-7)  # a mean log-prob of exactly 0 (p = 1) would make the odds infinite
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_terms(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, lam: float) -> PairTerms:
    """ORPO on mean token log-probs: NLL of the chosen answer plus lambda times the odds-ratio loss."""
    log_odds = (chosen_mean - rejected_mean) - (_log1m_exp(chosen_mean) - _log1m_exp(rejected_mean))
    losses = -chosen_mean - lam * F.logsigmoid(log_odds)
    return PairTerms(losses, lam * chosen_mean.detach(), lam * rejected_mean.detach(), chosen_mean, rejected_mean)


def dpo_terms(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> PairTerms:
    """DPO on summed log-probs of the policy and the reference."""
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    return PairTerms(
        losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach(), policy_chosen, policy_rejected
    )


def simpo_terms(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, beta: float, gamma: float) -> PairTerms:
    """SimPO on mean token log-probs with target margin gamma."""
    losses = -F.logsigmoid(beta * (chosen_mean - rejected_mean) - gamma)
    return PairTerms(losses, beta * chosen_mean.detach(), beta * rejected_mean.detach(), chosen_mean, rejected_mean)


# --- the objective the recipe calls ------------------------------------------------------------------------------


class PreferenceObjective:
    """Loss and metrics of one preference method for batches of `PairExample`s."""

    def __init__(self, method: str, *, beta: float, gamma: float = 0.0):
        if method not in METHODS:
            raise ValueError(f"unknown preference method {method!r}; allowed: {', '.join(METHODS)}")
        self.method, self.beta, self.gamma = method, beta, gamma
        # id(pair) -> (pair, (chosen, rejected) reference log-probs); the pair is kept so its id is never reused.
        self._reference_cache: dict[int, tuple[PairExample, tuple[float, float]]] = {}

    @property
    def needs_reference(self) -> bool:
        return self.method == "dpo"

    def collate(self, pairs: Sequence[PairExample], pad_id: int) -> dict[str, torch.Tensor]:
        """Rows 0..B-1 are the chosen sequences, B..2B-1 the rejected ones."""
        return collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)

    def reference_logps(self, model, batch: dict[str, torch.Tensor], runtime) -> torch.Tensor:
        """Summed log-probs under the base model: the same weights with the LoRA adapter switched off."""
        disable = getattr(model, "disable_adapter", None)
        if disable is None:
            raise TypeError("DPO's reference is the base model with the adapter disabled; the model has no adapter")
        with torch.no_grad(), disable(), runtime.autocast():
            return sequence_logps(model, batch)[0]

    def terms(self, model, batch: dict[str, torch.Tensor], runtime, reference: torch.Tensor | None = None) -> PairTerms:
        """Per-pair loss and rewards; `reference` (2B,) are DPO's reference log-probs (computed here when None)."""
        if self.needs_reference and reference is None:
            reference = self.reference_logps(model, batch, runtime)
        with runtime.autocast():
            sums, counts = sequence_logps(model, batch)
        b = sums.size(0) // 2
        if self.method == "dpo":
            assert reference is not None
            return dpo_terms(sums[:b], sums[b:], reference[:b].to(sums), reference[b:].to(sums), self.beta)
        means = sums / counts.clamp(min=1)
        if self.method == "orpo":
            return orpo_terms(means[:b], means[b:], self.beta)
        return simpo_terms(means[:b], means[b:], self.beta, self.gamma)

    @staticmethod
    def stat_sums(t: PairTerms) -> dict[str, float]:
        """Sums over the batch's pairs of every reported quantity (divide by 'pairs' for means)."""
        return {
            "pairs": float(t.losses.numel()),
            "loss": float(t.losses.detach().sum()),
            "reward_accuracy": float((t.chosen_rewards > t.rejected_rewards).float().sum()),
            "reward_margin": float((t.chosen_rewards - t.rejected_rewards).sum()),
            "chosen_logps": float(t.chosen_logps.detach().sum()),
            "rejected_logps": float(t.rejected_logps.detach().sum()),
        }

    @staticmethod
    def means(sums: dict[str, float], prefix: str = "") -> dict[str, float]:
        n = max(sums.get("pairs", 0.0), 1.0)
        return {prefix + k: sums.get(k, 0.0) / n for k in STAT_KEYS}

    @torch.no_grad()
    def evaluate(
        self, model, pairs: Sequence[PairExample], *, batch_size: int, pad_id: int, runtime
    ) -> dict[str, float]:
        """eval_loss, eval_reward_accuracy, eval_reward_margin, eval_chosen_logps, eval_rejected_logps over `pairs`
        (deterministic, length-sorted batches). DPO's reference log-probs of the pairs are computed on the first
        call and reused: the reference never changes."""
        was_training = model.training
        model.eval()
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i]))
        total: dict[str, float] = {}
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = {k: v.to(runtime.device) for k, v in self.collate([pairs[i] for i in idx], pad_id).items()}
            reference = None
            if self.needs_reference:
                cache = self._reference_cache
                if any(id(pairs[i]) not in cache for i in idx):
                    ref = self.reference_logps(model, batch, runtime).cpu()
                    for k, i in enumerate(idx):
                        cache[id(pairs[i])] = (pairs[i], (float(ref[k]), float(ref[len(idx) + k])))
                values = [cache[id(pairs[i])][1] for i in idx]
                reference = torch.tensor([c for c, _ in values] + [r for _, r in values], device=runtime.device)
            for name, v in self.stat_sums(self.terms(model, batch, runtime, reference)).items():
                total[name] = total.get(name, 0.0) + v
        if was_training:
            model.train()
        return self.means(total, prefix="eval_")
