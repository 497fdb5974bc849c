"""Refuse a model that cannot fit the device, before anything is downloaded or loaded.

The model's size comes from the catalog (its config sizes) or from a config.json (a local folder, the Hugging Face
cache, or the hub's config.json alone); the memory from memory.estimate_training_memory; the device's memory from
memory.device_memory (CUDA: total memory; CPU: available system memory). Without a training setup (e.g. when a model
is only being resolved), the check asks whether the model fits at all: the smaller of LoRA and QLoRA at batch 1 x 256
tokens with gradient checkpointing. Set TUNEFORGE_SKIP_MEMORY_CHECK=1 to skip the check (it is an estimate).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ..errors import TuneforgeError
from ..runtime import DeviceType, auto_precision, local_device_type
from .catalog import get_entry
from .memory import (
    MINIMAL_SETUP,
    MemoryEstimate,
    ModelShape,
    TrainingSetup,
    device_memory,
    estimate_training_memory,
    format_bytes,
)

SKIP_ENV = "TUNEFORGE_SKIP_MEMORY_CHECK"


def model_shape(model_id: str, config_dir: str | Path | None = None) -> ModelShape | None:
    """The shape of a catalog model (by id or alias), else of the config.json in `config_dir`; None when neither is
    known or the config cannot be built (the loader then reports its own error)."""
    entry = get_entry(model_id)
    if entry is not None and entry.vision:
        return None  # the estimate models token sequences; the catalog's vision models are under 0.1B parameters
    if entry is not None:
        return ModelShape.from_config(entry.transformers_config(), extrapolate=True)
    if config_dir is None or not (Path(config_dir) / "config.json").is_file():
        return None
    try:
        from transformers import AutoConfig

        return ModelShape.from_config(AutoConfig.from_pretrained(str(config_dir)))
    except Exception:  # an architecture transformers does not know, remote code, a malformed config: not ours to judge
        return None


def _describe(setup: TrainingSetup) -> str:
    checkpointing = ", gradient checkpointing" if setup.gradient_checkpointing else ""
    return (
        f"{'QLoRA (4-bit)' if setup.method == 'qlora' else 'LoRA'} on {setup.device}, {setup.precision}, "
        f"batch {setup.batch_size} x {setup.seq_len} tokens, r={setup.lora_r}{checkpointing}{distribution(setup)}"
    )


def distribution(setup: TrainingSetup) -> str:
    """', on N processes (strategy)' and what that divides, for a multi-process setup; '' for one process."""
    if setup.world_size == 1:
        return ""
    held = (
        f"base weights sharded {setup.world_size} ways"
        if setup.strategy == "fsdp"
        else "the whole base on each process"
    )
    shared = f", {setup.nproc_per_node} sharing this machine's memory" if setup.device == "cpu" else ", one per GPU"
    return f", on {setup.world_size} processes ({setup.strategy}: {held}; LoRA weights, gradients and optimizer state whole on each{shared})"


def smallest_estimate(shape: ModelShape, device: DeviceType) -> MemoryEstimate:
    """The least memory any job on `device` could need: the smaller of LoRA and QLoRA in MINIMAL_SETUP."""
    base = dataclasses.replace(MINIMAL_SETUP, device=device, precision=auto_precision(device))
    estimates = [estimate_training_memory(shape, base, method=method) for method in ("qlora", "lora")]
    return min(estimates, key=lambda e: e.total)


def ensure_fits(
    model_id: str,
    *,
    config_dir: str | Path | None = None,
    setup: TrainingSetup | None = None,
    field: str = "pretrainedmodel_config.model_path",
) -> MemoryEstimate | None:
    """Raise a TuneforgeError with the numbers when `model_id` does not fit the device by the estimate; return the
    estimate (None when the model's size is unknown or the check is switched off)."""
    if os.environ.get(SKIP_ENV, "").lower() in {"1", "true", "yes"}:
        return None
    shape = model_shape(model_id, config_dir)
    if shape is None:
        return None
    device = setup.device if setup is not None else local_device_type()
    estimate = estimate_training_memory(shape, setup) if setup is not None else smallest_estimate(shape, device)
    available, what = device_memory(device)
    if estimate.total <= available:
        return estimate
    if setup is None:
        need = f"needs at least {estimate.describe()} even as {_describe(estimate.setup)}"
        advice = "use a machine with more memory or a smaller model"
    else:
        need = f"needs about {estimate.describe()} as {_describe(setup)}"
        advice = (
            "try use_quantization (QLoRA), a smaller batch_size or cutoff_len, use_gradient_checkpointing, "
            "a machine with more memory, or a smaller model"
        )
    raise TuneforgeError(
        f"{field}: {model_id!r} ({shape.params / 1e9:.2f}B parameters) is too large for this device by tuneforge's "
        f"memory estimate: training it {need}, but the {what} is {format_bytes(available)}; {advice} "
        f"(set {SKIP_ENV}=1 to try anyway)",
        field=field,
        value=model_id,
    )
