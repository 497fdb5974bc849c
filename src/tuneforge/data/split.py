"""Deterministic train/validation/test splits from `data_split_config` fractions."""

from __future__ import annotations

import random

from ..errors import TuneforgeError, did_you_mean

SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = {"train": 0.9, "validation": 0.1}
MIN_USEFUL_VALIDATION = 20  # fewer validation rows give a loss too noisy for early stopping / best checkpoint


def check_fractions(fractions: dict[str, float]) -> dict[str, float]:
    """The same rules as the spec's `data_split_config`, for callers that bypass the spec."""
    for key, frac in fractions.items():
        if key not in SPLITS:
            raise TuneforgeError(
                f"data_split_config: unknown split {key!r}{did_you_mean(key, SPLITS)}; allowed: train, validation, test",
                field="data_config.data_split_config",
            )
        if not 0.0 <= frac <= 1.0:
            raise TuneforgeError(f"data_split_config: {key} fraction {frac} must be between 0 and 1")
    if fractions.get("train", 0) <= 0:
        raise TuneforgeError("data_split_config needs a 'train' fraction greater than 0")
    total = sum(fractions.values())
    if total > 1.0 + 1e-9:
        raise TuneforgeError(f"data_split_config: fractions add up to {total:g}, more than 1")
    return {k: float(fractions.get(k, 0.0)) for k in SPLITS}


def small_validation_warning(n_val: int, source: str) -> str | None:
    """The warning for a validation set too small to be useful (None when it is not); `source` says where the rows
    come from ("the 'validation' fraction 0.1 of 50 rows gives"). Shared by training and the UI's data check."""
    if n_val >= MIN_USEFUL_VALIDATION:
        return None
    return (
        f"{source} {n_val} validation row{'s' * (n_val != 1)}; fewer than {MIN_USEFUL_VALIDATION} make the "
        "validation loss too noisy for early stopping and choosing the best checkpoint (add rows or raise the fraction)"
    )


def held_out_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Validation and test rows as asked for, before any are given back to training: a non-zero fraction gets at
    least one row when there are two rows or more."""
    f = check_fractions(fractions)
    held = {}
    for key in ("validation", "test"):
        k = round(n * f[key])
        if f[key] > 0 and k == 0 and n >= 2:
            k = 1
        held[key] = k
    return held


def split_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Rows per split. A non-zero held-out fraction gets at least one row when there are two rows or more; when
    the fractions add up to 1 every row is used, otherwise the rest is left out (e.g. train 0.5 on a quick run)."""
    f = check_fractions(fractions)
    held = held_out_counts(n, f)
    for key in ("test", "validation"):  # never leave training empty: give back held-out rows, test first
        while n - held["validation"] - held["test"] < 1 and held[key] > 0:
            held[key] -= 1
    rest = n - held["validation"] - held["test"]
    n_train = rest if abs(sum(f.values()) - 1.0) < 1e-9 else min(rest, max(1, round(n * f["train"])))
    return {"train": max(0, n_train), "validation": held["validation"], "test": held["test"]}


def split_indices(n: int, fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Row indices per split: a seeded shuffle cut by `split_counts`; each split lists its rows in file order."""
    counts = split_counts(n, fractions)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    v, t, r = counts["validation"], counts["test"], counts["train"]
    return {
        "validation": sorted(order[:v]),
        "test": sorted(order[v : v + t]),
        "train": sorted(order[v + t : v + t + r]),
    }
