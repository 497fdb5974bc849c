"""`tuneforge estimate SPEC`: peak memory and time per epoch of a job, before running it.

Memory: models/memory.estimate_training_memory with the job's own settings, the sequence length taken from the
data (the longest tokenized example, capped by cutoff_len) rather than the cutoff alone.

Time: tokens per epoch (from the tokenized data) x training FLOPs per token / (the device's matmul peak x the
model-FLOPs utilisation tuneforge reaches on it). The CPU's peak is measured on the spot (a 1024^3 matmul in the
compute dtype); a GPU's is measured when one is present, else taken from --gpu-tflops. The utilisation constants
come from bench/train_bench.py runs (bench/RESULTS.md).

Image classification (data_config.task 'image_classification'): memory only, from models/vision_memory.py at the
side the model's image processor produces and the data's label count; no time estimate (see _estimate_image_job).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from .data.images import ImageExample
    from .models.memory import MemoryEstimate

from .models.fit import distribution, model_shape
from .models.loader import load_image_processor, load_tokenizer, resolve_model
from .models.memory import GiB, ModelShape, TrainingSetup, device_memory, estimate_training_memory, format_bytes
from .models.vision_memory import VisionShape, estimate_image_training_memory
from .runtime import auto_precision, default_device, dtype_of, resolve_optimizer
from .train.plan import make_plan, prepare_spec_data

# Model-FLOPs utilisation of tuneforge training, measured by bench/train_bench.py (SmolLM2-135M, bf16 autocast on
# a 2-core AVX-512-BF16 CPU: 38% of the bf16 matmul peak; bench/RESULTS.md). CUDA has not been measured yet: 0.35 is
# an assumption until `bash bench/gpu_check.sh` replaces it with a measurement.
MFU = {"cpu": 0.38, "cuda": 0.35}
PADDING_OVERHEAD = 1.05  # length-grouped batches pad ~5% (tests/train/test_components.py bounds it)


def train_flops_per_token(config, mean_len: float) -> float:
    """Useful FLOPs per token of LoRA training on a frozen base: forward 2·N plus the backward pass's input
    gradients 2·N (no weight gradients for frozen weights), N = matmul parameters incl. the output head; plus
    attention scores and values (4·L·T·d forward, the same again backward). LoRA's own r-wide matmuls are <1%."""
    d, layers = config.hidden_size, config.num_hidden_layers
    inter = getattr(config, "intermediate_size", None) or 4 * d
    heads = config.num_attention_heads
    kv = d * (getattr(config, "num_key_value_heads", None) or heads) // heads
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * inter  # q, o, k, v, gate/up/down
    n = layers * per_layer + d * config.vocab_size
    attention = 4 * layers * mean_len * d
    return 2 * (2 * n + attention)


def matmul_peak_flops(dtype_name: str, device: str, n: int = 1024, repeats: int = 5) -> float:
    import torch

    dtype = dtype_of(dtype_name)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


@dataclass
class JobEstimate:
    memory: MemoryEstimate
    device: str
    device_memory_bytes: int | None
    fits: bool | None
    train_examples: int
    tokens_per_epoch: int
    longest_example: int
    flops_per_token: float
    peak_flops: float | None
    peak_source: str
    seconds_per_epoch: float | None
    steps_per_epoch: int
    image_size: int | None = None  # image classification: the side of the images the model sees (no tokens)
    image_tokens: int | None = None  # ViT/DeiT: patches + [CLS] through the encoder

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "memory": self.memory.to_dict(),
            "device_memory_bytes": self.device_memory_bytes,
            "fits": self.fits,
            "train_examples": self.train_examples,
            "tokens_per_epoch": self.tokens_per_epoch,
            "longest_example_tokens": self.longest_example,
            "steps_per_epoch": self.steps_per_epoch,
            "flops_per_token": self.flops_per_token,
            "peak_flops": self.peak_flops,
            "peak_source": self.peak_source,
            "seconds_per_epoch": self.seconds_per_epoch,
            "image_size": self.image_size,
            "image_tokens": self.image_tokens,
        }


def _setup_for(spec, device: str, here: bool) -> TrainingSetup:
    """The spec's training setup on `device`; for a GPU elsewhere (`here` False), precision and optimizer resolved
    as a CUDA run would (bf16; paged AdamW 8-bit for QLoRA)."""
    import dataclasses

    if here:
        return TrainingSetup.from_spec(spec, device=device)
    t, p = spec.training_config, spec.pretrainedmodel_config
    return dataclasses.replace(
        TrainingSetup.from_spec(spec, device="cpu"),
        device="cuda",
        precision=auto_precision("cuda") if t.precision == "auto" else t.precision,
        optimizer=resolve_optimizer(t.optimizer, quantized=bool(p.use_quantization), device_type="cuda"),
    )


def _estimate_image_job(spec, *, device: str, gpu_memory_gb: float | None) -> JobEstimate:
    """Memory of an image-classification job (models/vision_memory.py) at the image size the model's processor
    produces and the data's label count. No time estimate: the utilisation constants are measured on transformer
    matmuls, and a CNN's convolutions reach a different share of the peak."""
    import torch
    from transformers import AutoConfig

    from .data.images import open_image
    from .train.tasks import pixel_batch

    p = spec.pretrainedmodel_config
    resolved = resolve_model(p.model_path, setup=None)
    processor = load_image_processor(p.model_path, hf_token=spec.hf_config.hf_token)
    data = prepare_spec_data(spec, processor)
    # The processor's output side (resize, then centre crop) for one training image: what every batch has.
    first = cast("ImageExample", data.train[0])
    side = int(pixel_batch(processor, [open_image(first.image)]).shape[-1])
    config = AutoConfig.from_pretrained(resolved.load_from)
    shape = VisionShape.from_config(config, image_size=side, num_labels=len(data.labels))
    here = device == "cpu" or torch.cuda.is_available()
    memory = estimate_image_training_memory(shape, _setup_for(spec, device, here))
    available = int(gpu_memory_gb * GiB) if gpu_memory_gb else (device_memory(device)[0] if here else None)
    n = len(data.train)
    return JobEstimate(
        memory=memory,
        device=device,
        device_memory_bytes=available,
        fits=None if available is None else memory.total <= available,
        train_examples=n,
        tokens_per_epoch=0,
        longest_example=0,
        flops_per_token=0.0,
        peak_flops=None,
        peak_source="not estimated for image classification (run a few steps with training_config.max_steps)",
        seconds_per_epoch=None,
        steps_per_epoch=make_plan(spec, n).steps_per_epoch,
        image_size=side,
        image_tokens=shape.tokens or None,
    )


def estimate_job(
    spec, *, device: str | None = None, gpu_memory_gb: float | None = None, gpu_tflops: float | None = None
) -> JobEstimate:
    import dataclasses

    import torch
    from transformers import AutoConfig

    device = default_device(device)
    p, d = spec.pretrainedmodel_config, spec.data_config
    if d.task == "image_classification":
        return _estimate_image_job(spec, device=device, gpu_memory_gb=gpu_memory_gb)
    resolved = resolve_model(p.model_path, setup=None)
    tokenizer = load_tokenizer(p.model_path, hf_token=spec.hf_config.hf_token)
    data = prepare_spec_data(spec, tokenizer)
    lengths = [len(e) for e in data.train]
    longest = max(lengths)
    shape = model_shape(resolved.model_id, resolved.load_from if resolved.is_local else None)
    if shape is None:
        shape = ModelShape.from_config(AutoConfig.from_pretrained(resolved.load_from))
    here = device == "cpu" or torch.cuda.is_available()
    setup = _setup_for(spec, device, here)
    # The longest batch sets the activation peak: the data's longest example, not the cutoff it may never reach.
    setup = dataclasses.replace(setup, seq_len=min(longest, d.cutoff_len))
    memory = estimate_training_memory(shape, setup)
    available = int(gpu_memory_gb * GiB) if gpu_memory_gb else (device_memory(device)[0] if here else None)

    config = AutoConfig.from_pretrained(resolved.load_from)
    flops_tok = train_flops_per_token(config, sum(lengths) / len(lengths))
    if here:
        peak, source = matmul_peak_flops(setup.precision, device), f"measured ({setup.precision} matmul)"
    elif gpu_tflops:
        peak, source = gpu_tflops * 1e12, "--gpu-tflops"
    else:
        peak, source = None, "unknown: pass --gpu-tflops for a time estimate"
    tokens = sum(lengths)
    seconds = tokens * PADDING_OVERHEAD * flops_tok / (peak * MFU[device]) if peak else None
    return JobEstimate(
        memory=memory,
        device=device,
        device_memory_bytes=available,
        fits=None if available is None else memory.total <= available,
        train_examples=len(lengths),
        tokens_per_epoch=tokens,
        longest_example=longest,
        flops_per_token=flops_tok,
        peak_flops=peak,
        peak_source=source,
        seconds_per_epoch=seconds,
        steps_per_epoch=make_plan(spec, len(lengths)).steps_per_epoch,
    )


def _data_line(est: JobEstimate) -> str:
    if est.image_size is not None:
        tokens = f" ({est.image_tokens} tokens through the encoder)" if est.image_tokens else ""
        return (
            f"data              {est.train_examples} training images at {est.image_size}x{est.image_size} "
            f"pixels{tokens}, {est.steps_per_epoch} optimizer steps per epoch"
        )
    return (
        f"data              {est.train_examples} training examples, {est.tokens_per_epoch:,} tokens per epoch, "
        f"longest {est.longest_example} tokens, {est.steps_per_epoch} optimizer steps per epoch"
    )


def format_estimate(est: JobEstimate) -> str:
    m = est.memory
    lines = [
        f"device            {est.device}"
        + (f" ({format_bytes(est.device_memory_bytes)} available)" if est.device_memory_bytes else ""),
        _data_line(est),
        f"peak memory       {format_bytes(m.total)}"
        + ("" if est.fits is None else ("  (fits)" if est.fits else "  (DOES NOT FIT)")),
    ]
    if m.setup.world_size > 1:
        lines.append(f"processes         {distribution(m.setup).removeprefix(', on ')}")
        if m.processes_per_device > 1:
            lines.append(f"per process       {format_bytes(m.per_process)}")
    for name, value in m.to_dict()["breakdown_bytes"].items():
        lines.append(f"  {name:<15} {format_bytes(value)}")
    if est.seconds_per_epoch is not None and est.peak_flops is not None:
        lines.append(
            f"time per epoch    {est.seconds_per_epoch / 60:.1f} min  ({est.flops_per_token / 1e9:.2f} GFLOP/token, "
            f"peak {est.peak_flops / 1e12:.2f} TFLOP/s {est.peak_source}, utilisation {MFU[est.device]:.0%})"
        )
    else:
        lines.append(f"time per epoch    {est.peak_source}")
    return "\n".join(lines)
