"""The int8 serving kernels in `cpu_kernels.c`: built on first use with the system C compiler, loaded with ctypes.

`Q8Linear` is one projection in llama.cpp's q8_0 format (blocks of 32 int8 weights with one scale each); the
PyTorch lean step calls it for several rows at once (prefill, batches). `NativeStep` runs a whole single-sequence
decode step in C (see the C file's header for why). Both need `library()`, which compiles the kernels once per
source, compiler flags and CPU into tuneforge's cache folder (~1 s) and raises `KernelBuildError` with the
compiler's message when that fails: the engine then serves with the PyTorch path and says why in one log line.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

QK = 32  # values per q8_0 block (the C file's QK)
_SOURCE = Path(__file__).with_name("cpu_kernels.c")
_c_float_p = ctypes.POINTER(ctypes.c_float)


class KernelBuildError(RuntimeError):
    """The C kernels could not be compiled or loaded here (the message says why)."""


class _Q8Matrix(ctypes.Structure):
    _fields_ = [
        ("q", ctypes.c_void_p),
        ("d", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("rows", ctypes.c_int64),
        ("cols", ctypes.c_int64),
    ]


class _LoraGroup(ctypes.Structure):
    _fields_ = [("a", ctypes.c_void_p), ("b", ctypes.c_void_p), ("r", ctypes.c_int64)]


class _Layer(ctypes.Structure):
    _fields_ = [
        ("in_norm", ctypes.c_void_p),
        ("post_norm", ctypes.c_void_p),
        ("qkv", _Q8Matrix),
        ("o", _Q8Matrix),
        ("gate_up", _Q8Matrix),
        ("down", _Q8Matrix),
    ]


class _Model(ctypes.Structure):
    _fields_ = [
        ("hidden", ctypes.c_int64),
        ("n_layers", ctypes.c_int64),
        ("n_heads", ctypes.c_int64),
        ("n_kv", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("inter", ctypes.c_int64),
        ("vocab", ctypes.c_int64),
        ("eps", ctypes.c_float),
        ("scaling", ctypes.c_float),
        ("embed", ctypes.c_void_p),
        ("final_norm", ctypes.c_void_p),
        ("head", _Q8Matrix),
        ("layers", ctypes.POINTER(_Layer)),
    ]


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise KernelBuildError("no C compiler found (install gcc, or set CC)")
    return cc


def build_flags() -> list[str]:
    """-O3 with OpenMP, plus AVX2/FMA when this CPU has them (the C file has a scalar path otherwise)."""
    flags = ["-O3", "-std=c11", "-shared", "-fPIC", "-fopenmp"]
    if platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma"} <= _cpu_flags():
        flags += ["-mavx2", "-mfma"]
    return flags


@cache
def library() -> ctypes.CDLL:
    """The compiled kernels (built once per source + compiler + flags, cached on disk; KernelBuildError if not)."""
    from ..models.loader import cache_dir

    cc, flags = _compiler(), build_flags()
    source = _SOURCE.read_bytes()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelBuildError(f"{cc} --version failed: {exc}") from None
    key = hashlib.sha256(source + " ".join([cc, version, *flags]).encode()).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"cpu_kernels-{key}.so"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        # compiled beside the target and renamed into place: processes building at once never load half a file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            done = subprocess.run(
                [cc, *flags, str(_SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=300
            )
            if done.returncode != 0:
                # gcc opens with "file.c: In function ...": the first line naming an error says more
                lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit status {done.returncode}"]
                message = next((line for line in lines if "error" in line), lines[0])
                raise KernelBuildError(f"{cc} failed on {_SOURCE.name}: {message}")
            os.replace(tmp, target)
        except (OSError, subprocess.SubprocessError) as exc:
            raise KernelBuildError(f"{cc} could not build {_SOURCE.name}: {exc}") from None
        finally:
            Path(tmp).unlink(missing_ok=True)
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        raise KernelBuildError(f"{target} could not be loaded: {exc}") from None
    lib.tf_q8_matmul.argtypes = [_c_float_p, ctypes.c_int64, ctypes.POINTER(_Q8Matrix), _c_float_p, ctypes.c_int]
    lib.tf_q8_matmul.restype = None
    lib.tf_q8_step.argtypes = [
        ctypes.POINTER(_Model),
        ctypes.c_int64,
        ctypes.c_int64,
        _c_float_p,
        _c_float_p,
        ctypes.c_int64,
        ctypes.c_int64,
        _c_float_p,
        _c_float_p,
        ctypes.POINTER(_LoraGroup),
        _c_float_p,
        ctypes.c_int,
    ]
    lib.tf_q8_step.restype = None
    lib.tf_kernels_simd.restype = ctypes.c_int
    return lib


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.cast(t.data_ptr(), _c_float_p)


def quantize_q8_0(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values (out, in), fp32 block scales (out, in / 32)): llama.cpp's q8_0, d = max|w| / 127 per block."""
    out, k = weight.shape
    if k % QK:
        raise ValueError(f"q8_0 needs input widths that are multiples of {QK} (this projection: {k})")
    w = weight.detach().float().reshape(out, k // QK, QK)
    d = w.abs().amax(dim=-1) / 127
    q = torch.round(w / d.clamp(min=torch.finfo(torch.float32).tiny).unsqueeze(-1)).clamp(-127, 127)
    return q.to(torch.int8).reshape(out, k).contiguous(), d.contiguous()


class Q8Linear:
    """`x·Wᵀ + b` with W in q8_0 (activations quantized per block of 32 by the kernel, int32 block sums). Holds
    int8 copies; the model's fp32 weights are not touched (the plain forward keeps using them)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.lib = library()
        self.q, self.d = quantize_q8_0(weight)
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.out_features, self.in_features = weight.shape
        self.matrix = _Q8Matrix(
            self.q.data_ptr(),
            self.d.data_ptr(),
            None if self.bias is None else self.bias.data_ptr(),
            self.out_features,
            self.in_features,
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).float().contiguous()
        y = torch.empty(x2.shape[0], self.out_features)
        self.lib.tf_q8_matmul(_ptr(x2), x2.shape[0], self.matrix, _ptr(y), torch.get_num_threads())
        return y.view(*x.shape[:-1], self.out_features)


@dataclass
class _Rope:
    cos: torch.Tensor  # (positions, head_dim)
    sin: torch.Tensor


class NativeStep:
    """A FastDecoder's whole int8 decode step for one sequence as one C call: the same q8_0 weights (its
    `Q8Linear`s), norms, embeddings and RoPE tables as the PyTorch step, and LoRA plans' fused tensors."""

    def __init__(self, decoder, norms: list[torch.Tensor], eps: float):
        """`norms`: the RMSNorm weights, the final norm's first, then each layer's input and post-attention norms;
        `eps` their (one) epsilon."""
        self.lib = library()
        d = decoder
        cfg = d.model.config
        if getattr(cfg, "hidden_act", "silu") not in ("silu", "swish"):
            raise ValueError(f"activation {cfg.hidden_act!r} (the C step runs SiLU)")
        if d.n_heads % d.n_kv:
            raise ValueError(f"{d.n_heads} heads over {d.n_kv} key/value heads")
        self.rotary, self.vocab = d.rotary, d.head.out_features  # the model's own RoPE module, for `_rope_at`
        self._keep = [t.float().contiguous() for t in (d.embed.weight.detach(), *norms)]  # alive while C reads them
        embed, final, per_layer = self._keep[0], self._keep[1], self._keep[2:]
        self.embed_rows = embed.shape[0]
        layers = (_Layer * len(d.layers))()
        for i, layer in enumerate(d.layers):
            layers[i] = _Layer(
                per_layer[2 * i].data_ptr(),
                per_layer[2 * i + 1].data_ptr(),
                layer["qkv"].matrix,
                layer["o"].matrix,
                layer["gate_up"].matrix,
                layer["down"].matrix,
            )
        self._layers = layers
        self.model = _Model(
            embed.shape[1],
            len(d.layers),
            d.n_heads,
            d.n_kv,
            d.head_dim,
            d.layers[0]["down"].in_features,
            self.vocab,
            eps,
            d.scaling,
            embed.data_ptr(),
            final.data_ptr(),
            d.head.matrix,
            layers,
        )
        self._rope = _Rope(torch.empty(0, d.head_dim), torch.empty(0, d.head_dim))
        self._lock = threading.Lock()

    def _rope_at(self, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE's cos/sin at `pos` from the model's own rotary module (its scaling rules included), tabulated in
        doubling steps so a long decode rebuilds the table rarely."""
        if pos >= self._rope.cos.shape[0]:
            with self._lock:
                n = max(256, 1 << pos.bit_length())
                h = torch.zeros(1, 1, 1)
                cos, sin = self.rotary(h, torch.arange(n).view(1, n))
                self._rope = _Rope(cos[0].float().contiguous(), sin[0].float().contiguous())
        rope = self._rope
        return rope.cos[pos], rope.sin[pos]

    @staticmethod
    def lora_groups(plan) -> ctypes.Array:
        """The plan's tensors as the C step's (layers x 4) LoRA groups, built once per plan and kept on it."""
        groups = getattr(plan, "native", None)
        if groups is None:
            groups = (_LoraGroup * (4 * len(plan)))()
            for i, layer in enumerate(plan):
                for j, name in enumerate(("qkv", "o", "gate_up", "down")):
                    g = layer.get(name)
                    if g is not None:
                        groups[4 * i + j] = _LoraGroup(g.a.data_ptr(), g.b.data_ptr(), g.a.shape[0])
            plan.native = groups
        return groups

    def __call__(self, keys: torch.Tensor, values: torch.Tensor, token: int, pos: int, plan) -> torch.Tensor:
        """Logits (1, vocab) after `token` at `pos`, whose key and value are written into row 0 of `keys`/`values`
        ((layers, rows, kv_heads, capacity, head_dim) views; positions 0..pos attended)."""
        if not 0 <= token < self.embed_rows:
            # C reads the embedding row without bounds: refuse here what nn.Embedding would refuse
            raise IndexError(f"token id {token} is outside the vocabulary (0..{self.embed_rows - 1})")
        hd = self.model.head_dim
        if keys.dtype != torch.float32 or keys.stride()[3:] != (hd, 1) or values.stride() != keys.stride():
            raise ValueError(f"the C step needs float32 caches with rows of {hd} contiguous floats")
        cos, sin = self._rope_at(pos)
        logits = torch.empty(1, self.vocab)
        self.lib.tf_q8_step(
            self.model,
            token,
            pos,
            _ptr(keys),
            _ptr(values),
            keys.stride(0),
            keys.stride(2),
            _ptr(cos),
            _ptr(sin),
            None if plan is None else self.lora_groups(plan),
            _ptr(logits),
            torch.get_num_threads(),
        )
        return logits
