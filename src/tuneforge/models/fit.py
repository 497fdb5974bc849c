"""Refuse a model that cannot fit the device, before anything is downloaded or loaded.

The model's size comes from the catalog (its config sizes) or from a config.json (a local folder, the Hugging Face
cache, or the hub's config.json alone); the memory from memory.estimate_training_memory; the device's memory from
memory.device_memory (CUDA: total memory; CPU: available system memory). Without a training setup (e.g. when a model
is only being resolved), the check asks whether the model fits at all: the smaller of LoRA and QLoRA at batch 1 x 256
tokens with gradient checkpointing. Image classifiers (catalog vision models, local folders of a vision architecture):
models/vision_memory at the image side, LoRA only (QLoRA is refused for them), batch 1 for the least. Set TUNEFORGE_SKIP_MEMORY_CHECK=1 to skip the check (it is an estimate).
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
from .vision_memory import VisionShape, estimate_image_training_memory

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


def vision_shape(model_id: str, config_dir: str | Path | None = None) -> VisionShape | None:
    """The shape of an image classifier: a catalog vision model (at its published image side), else the config.json
    in `config_dir` when it is a vision architecture (at its image processor's output side); None otherwise."""
    entry = get_entry(model_id)
    if entry is not None:
        if not entry.vision:
            return None
        return VisionShape.from_config(entry.transformers_config(), image_size=entry.context_length)
    if config_dir is None or not (Path(config_dir) / "config.json").is_file():
        return None
    try:
        from transformers import AutoConfig

        from .classifier import image_classification_types

        config = AutoConfig.from_pretrained(str(config_dir))
        if config.model_type not in image_classification_types():
            return None
        return VisionShape.from_config(config, image_size=_processor_side(Path(config_dir)))
    except Exception:  # as in model_shape: an unknown or malformed config is the loader's to report
        return None


def _processor_side(folder: Path) -> int | None:
    """The side of the images the folder's image processor produces (its crop, else its resize), if it says."""
    import json

    try:
        data = json.loads((folder / "preprocessor_config.json").read_text())
    except (OSError, ValueError):
        return None
    for key in ("crop_size", "size"):
        size = data.get(key) if data.get("do_center_crop", True) or key == "size" else None
        if isinstance(size, dict):
            side = size.get("height") or size.get("shortest_edge")
            if side:
                return int(side)
        elif isinstance(size, int):
            return size
    return None


def _describe(setup: TrainingSetup, image_size: int | None = None) -> str:
    checkpointing = ", gradient checkpointing" if setup.gradient_checkpointing else ""
    rows = f"{image_size}x{image_size} images" if image_size else f"{setup.seq_len} tokens"
    return (
        f"{'QLoRA (4-bit)' if setup.method == 'qlora' else 'LoRA'} on {setup.device}, {setup.precision}, "
        f"batch {setup.batch_size} x {rows}, r={setup.lora_r}{checkpointing}{distribution(setup)}"
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
    vision = vision_shape(model_id, config_dir)
    shape = vision.backbone if vision is not None else model_shape(model_id, config_dir)
    if shape is None:
        return None
    device = setup.device if setup is not None else local_device_type()
    if vision is not None:
        # LoRA only (QLoRA is refused for image classification); no gradient checkpointing for CNNs.
        least = dataclasses.replace(MINIMAL_SETUP, method="lora", device=device, precision=auto_precision(device))
        estimate = estimate_image_training_memory(vision, setup or least)
    elif setup is not None:
        estimate = estimate_training_memory(shape, setup)
    else:
        estimate = smallest_estimate(shape, device)
    available, what = device_memory(device)
    if estimate.total <= available:
        return estimate
    side = vision.image_size if vision is not None else None
    if setup is None:
        need = f"needs at least {estimate.describe()} even as {_describe(estimate.setup, side)}"
        advice = "use a machine with more memory or a smaller model"
    else:
        need = f"needs about {estimate.describe()} as {_describe(estimate.setup, side)}"
        advice = (
            "try a smaller batch_size, use_gradient_checkpointing (ViT/DeiT), a machine with more memory, or a "
            "smaller model"
            if vision is not None
            else "try use_quantization (QLoRA), a smaller batch_size or cutoff_len, use_gradient_checkpointing, "
            "a machine with more memory, or a smaller model"
        )
    raise TuneforgeError(
        f"{field}: {model_id!r} ({shape.params / 1e9:.2f}B parameters) is too large for this device by tuneforge's "
        f"memory estimate: training it {need}, but the {what} is {format_bytes(available)}; {advice} "
        f"(set {SKIP_ENV}=1 to try anyway)",
        field=field,
        value=model_id,
    )
