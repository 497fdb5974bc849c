"""What a run is, without torch: its step plan, its data (prepared from the spec) and its output folders.

The job service, the worker and `tuneforge estimate` need these but not the training machinery, so they live apart
from recipe.py (which imports torch, PEFT and the model code).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from ..data import DataOptions, PreparedData, prepare_dataset
from ..errors import TuneforgeError
from ..spec import JobSpec


@dataclass(frozen=True)
class Plan:
    """Step arithmetic, fixed before the first step (and recomputed identically on resume)."""

    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    eval_every: int
    save_every: int


def make_plan(spec: JobSpec, n_train: int, *, world_size: int = 1) -> Plan:
    """`world_size`: processes of a distributed run; each takes batch_size examples of every micro-batch, so one
    micro-batch holds batch_size * world_size examples and an epoch has that many fewer steps."""
    t = spec.training_config
    batches = math.ceil(n_train / (t.batch_size * world_size))
    per_epoch = math.ceil(batches / t.gradient_accumulation_steps)
    total = t.max_steps or max(1, math.ceil(t.num_train_epochs * per_epoch))
    warmup = t.warmup_steps if t.warmup_steps is not None else max(1, round(0.05 * total))
    # ceil, not floor: "about 10 evaluations per run" must hold for short runs too (18 steps // 10 = every step).
    eval_every = t.eval_steps or max(1, math.ceil(total / 10))
    return Plan(batches, per_epoch, total, min(warmup, total), eval_every, t.save_steps or eval_every)


def work_dir_for(output_dir: Path) -> Path:
    return output_dir.with_name(output_dir.name + ".partial")


def is_finished_run(path: Path) -> bool:
    return (path / "report.json").is_file() and (path / "adapter" / "adapter_config.json").is_file()


def prepare_spec_data(spec: JobSpec, tokenizer) -> PreparedData:
    """The job's data, validated, tokenized and split as its data_config says (raises DataValidationError)."""
    d, method = spec.data_config, spec.training_config.preference
    options = DataOptions.from_config(d, hf_token=spec.hf_config.hf_token)
    if method:  # preference tuning reads pairs whatever the columns look like: SFT-shaped data is refused by name
        options = replace(options, data_format="preference")
    data = prepare_dataset(
        d.data_path,
        options,
        tokenizer=tokenizer,
        split_fractions=d.data_split_config,
        validation_data_path=d.validation_data_path,
        test_data_path=d.test_data_path,
        seed=spec.training_config.seed,
    )
    if method is None and data.report.format == "preference":
        raise TuneforgeError(
            f"data_config.data_path: {data.report.source!r} holds preference pairs (chosen/rejected) but the job "
            "trains SFT; set training_config.preference_method to one of orpo, dpo, simpo (or "
            "preference_optimization to 'ORPO') to train on them",
            field="data_config.data_path",
            value=d.data_path,
        )
    return data
