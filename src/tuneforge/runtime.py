"""Device, precision and optimizer rules: one place that says what 'auto' means, for training and for every estimate.

The recipe, the memory estimate (`TrainingSetup.from_spec`), the fit check, `tuneforge estimate`, the model list
and the UI's estimate route all resolve the same three choices; they read them here so an estimate never assumes
a precision or an optimizer the run would not use. Sits below train/ and models/ (both import it).

torch is imported where a rule needs it, not with the module: the memory estimate, the model list and the job
service import this module and stay torch-free until they ask about a device.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .errors import TuneforgeError

if TYPE_CHECKING:
    import torch

Precision = Literal["fp32", "bf16", "fp16"]  # a compute precision, "auto" resolved
DeviceType = Literal["cuda", "cpu"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16")


def dtype_of(precision: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    compute_dtype: torch.dtype  # dtype of matmuls (autocast) and of the frozen base's linear weights

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def precision(self) -> Precision:
        return next(name for name in PRECISIONS if dtype_of(name) == self.compute_dtype)

    def autocast(self):
        import torch

        if self.compute_dtype == torch.float32:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.compute_dtype)


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 matmuls (AVX-512 BF16 or AMX): there bf16 runs ~2x fp32. Elsewhere it is
    emulated and slower than fp32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def local_device_type() -> DeviceType:
    """CUDA when present, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_nproc_per_node(device_type: str) -> int:
    """How many processes a multi-process run starts per machine when the spec does not say: one per visible GPU on
    CUDA, one on the CPU."""
    import torch

    return torch.cuda.device_count() if device_type == "cuda" else 1


def default_device(device: str | None = None) -> str:
    """`device` as given, else CUDA when present, else the CPU."""
    return device or local_device_type()


def auto_precision(device_type: str) -> Precision:
    """What precision 'auto' means on a device type: bf16 on CUDA (fp16 on GPUs without bf16), bf16 on CPUs with
    native bf16, else fp32. For a CUDA device this machine does not have (an estimate for a GPU elsewhere): bf16."""
    import torch

    if device_type == "cuda":
        return "fp16" if torch.cuda.is_available() and not torch.cuda.is_bf16_supported() else "bf16"
    return "bf16" if cpu_has_bf16() else "fp32"


def resolve_optimizer(optimizer: str, *, quantized: bool, device_type: str) -> str:
    """What optimizer 'auto' means: paged 8-bit AdamW for a quantized (QLoRA) base on CUDA, else AdamW (bitsandbytes'
    optimizers need CUDA). Any other name is returned as given."""
    if optimizer != "auto":
        return optimizer
    return "paged_adamw_8bit" if (quantized and device_type == "cuda") else "adamw"


def pick_runtime(precision: str = "auto", device: str | None = None) -> Runtime:
    """The device and compute dtype of a run; refuses a CUDA device that is not there and fp16 on the CPU."""
    import torch

    dev = torch.device(default_device(device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TuneforgeError(
            "device 'cuda' was asked for but no CUDA device is available", field="device", value=device
        )
    if precision == "auto":
        precision = auto_precision(dev.type)
    elif precision == "fp16" and dev.type == "cpu":
        raise TuneforgeError(
            "training_config.precision: 'fp16' needs a CUDA device; on the CPU use 'bf16' or 'fp32'",
            field="training_config.precision",
            value=precision,
        )
    return Runtime(device=dev, compute_dtype=dtype_of(precision))


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(expected_parent: int | None) -> None:
    """Ask the kernel to SIGKILL us when our parent dies (Linux only; elsewhere heartbeats still requeue). A job's
    training process and each process of a multi-process run call it, so a killed worker or launcher never leaves
    training behind that would race the job's next attempt for the same run folder."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    # The parent may have died before the prctl took effect: then we were re-parented already.
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(70)
