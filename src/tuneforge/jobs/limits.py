"""The service's limits on what one request or one job may ask for (settings `TUNEFORGE_MAX_*`).

Every refusal names the limit and the setting that raises it, so that a user knows what to change and an operator
knows what to configure. The request body itself is limited earlier, by `api.limits.BodyLimit`.
"""

from __future__ import annotations

import math
from typing import Any

from ..settings import Settings
from ..spec import JobSpec


def string_problems(data: Any, max_chars: int, prefix: str = "") -> list[str]:
    """One line per string field of `data` (nested dicts and lists) that is longer than `max_chars` or holds a NUL
    byte (which no path, id, name or template needs, and which os calls and databases refuse)."""
    out: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            out += string_problems(value, max_chars, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += string_problems(value, max_chars, f"{prefix}[{i}]")
    elif isinstance(data, str):
        if len(data) > max_chars:
            out.append(
                f"{prefix}: {len(data):,} characters is over this server's limit of {max_chars:,} "
                "(TUNEFORGE_MAX_FIELD_CHARS)"
            )
        if "\x00" in data:
            out.append(f"{prefix}: contains a NUL byte (\\x00), which is not allowed in any field")
    return out


def planned_steps(spec: JobSpec, n_rows: int) -> int:
    """The optimizer steps the recipe will plan for `n_rows` rows of data (an upper bound: some rows go to the
    validation split or are dropped as invalid)."""
    from ..train.recipe import make_plan

    return make_plan(spec, max(1, n_rows)).total_steps


def size_problems(spec: JobSpec, settings: Settings, n_rows: int | None) -> list[str]:
    """Steps and tokens of the job against `max_steps_per_job` and `max_tokens_per_job`. `n_rows`: the rows of the
    training data when known (an uploaded dataset, or once the job has read its data); without it, only an
    explicit `max_steps` can be checked."""
    t = spec.training_config
    if t.max_steps is not None:
        steps, how = t.max_steps, f"max_steps {t.max_steps:,}"
    elif n_rows is not None:
        steps = planned_steps(spec, n_rows)
        how = (
            f"{t.num_train_epochs:g} epoch(s) of {n_rows:,} rows in batches of {t.batch_size} x "
            f"{t.gradient_accumulation_steps} = {steps:,} steps"
        )
    else:
        return []
    problems = []
    if steps > settings.max_steps_per_job:
        field = "training_config.max_steps" if t.max_steps is not None else "training_config.num_train_epochs"
        problems.append(
            f"{field}: {how} is over this server's limit of {settings.max_steps_per_job:,} steps per "
            "job (TUNEFORGE_MAX_STEPS_PER_JOB)"
        )
        return problems
    tokens = steps * t.batch_size * t.gradient_accumulation_steps * spec.data_config.cutoff_len
    if tokens > settings.max_tokens_per_job:
        problems.append(
            f"training_config: {steps:,} steps x batch_size {t.batch_size} x gradient_accumulation_steps "
            f"{t.gradient_accumulation_steps} x cutoff_len {spec.data_config.cutoff_len} = {_short(tokens)} tokens "
            f"is over this server's limit of {_short(settings.max_tokens_per_job)} tokens per job "
            "(TUNEFORGE_MAX_TOKENS_PER_JOB)"
        )
    return problems


def _short(n: int) -> str:
    if n < 10_000:
        return f"{n:,}"
    exp = min(int(math.log10(n)) // 3, 4)
    return f"{n / 10 ** (3 * exp):.3g}{' kMGT'[exp]}"
