"""Device and precision: CUDA (bf16 where supported) when present, else the CPU (bf16 where it has native bf16)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import TuneforgeError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    compute_dtype: torch.dtype  # dtype of matmuls (autocast) and of the frozen base's linear weights

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def precision(self) -> Literal["bf16", "fp16", "fp32"]:
        names: dict[torch.dtype, Literal["bf16", "fp16", "fp32"]] = {
            torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
        return names[self.compute_dtype]

    def autocast(self):
        if self.compute_dtype == torch.float32:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.compute_dtype)


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 matmuls (AVX-512 BF16 or AMX): there bf16 runs ~2x fp32. Elsewhere it is
    emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_runtime(precision: str = "auto", device: str | None = None) -> Runtime:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TuneforgeError("device 'cuda' was asked for but no CUDA device is available", field="device", value=device)
    if precision == "auto":
        if dev.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.bfloat16 if cpu_has_bf16() else torch.float32
    else:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        if dtype == torch.float16 and dev.type == "cpu":
            raise TuneforgeError(
                "training_config.precision: 'fp16' needs a CUDA device; on the CPU use 'bf16' or 'fp32'",
                field="training_config.precision",
                value=precision,
            )
    return Runtime(device=dev, compute_dtype=dtype)
