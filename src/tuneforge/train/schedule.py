"""Learning-rate schedules: transformers' named schedules, plus reduce-on-plateau with warm-up."""

from __future__ import annotations

import math

import torch


class WarmupPlateau:
    """Linear warm-up, then the rate is halved whenever the validation loss fails to improve for `patience`
    evaluations in a row (torch's ReduceLROnPlateau counts the same way; it has no warm-up, hence this class).

    `step()` is called after every optimizer step, `on_eval(loss)` after every evaluation.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int,
        *,
        factor: float = 0.5,
        patience: int = 1,
        min_scale: float = 1e-3,
        threshold: float = 0.0,
    ):
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.warmup_steps = warmup_steps
        self.factor, self.patience, self.min_scale, self.threshold = factor, patience, min_scale, threshold
        self.steps = 0
        self.scale = 1.0
        self.best = math.inf
        self.bad_evals = 0
        self._apply()

    def _apply(self) -> None:
        warm = min(1.0, (self.steps + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * warm * self.scale

    def step(self) -> None:
        self.steps += 1
        self._apply()

    def on_eval(self, loss: float) -> None:
        if loss < self.best - self.threshold:
            self.best, self.bad_evals = loss, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience and self.scale > self.min_scale:
            self.scale = max(self.min_scale, self.scale * self.factor)
            self.bad_evals = 0
            self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("base_lrs", "steps", "scale", "best", "bad_evals")}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
        self._apply()


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int):
    """An object with step(), get_last_lr(), state_dict(), load_state_dict(); `on_eval` only for plateau."""
    if name == "reduce_lr_on_plateau":
        return WarmupPlateau(optimizer, warmup_steps)
    from transformers import get_scheduler

    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
