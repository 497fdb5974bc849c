"""A lean decode step for Llama-family models: one new token per row, pre-allocated KV cache, LoRA as fused
low-rank matmuls.

Why it exists: at batch 1 a 135M-parameter, 30-layer model is dominated by per-op overhead, not by arithmetic.
The Hugging Face forward runs ~40 Python-level ops per layer (mask building, cache bookkeeping, PEFT's per-adapter
dispatch: 7 adapted projections x (dropout, A, B, scale, add)); this step runs ~20, over the *same* parameter
tensors:

* q/k/v and gate/up are one matmul each: at construction their weights are re-bound as row views of one
  concatenated tensor (no copy is kept; the Hugging Face modules and PEFT keep working on the views).
* The KV cache is a pre-allocated (layers, rows, kv_heads, max_len, head_dim) buffer written in place
  (no `torch.cat` growth per token, no `DynamicCache` bookkeeping).
* LoRA (Hu et al. 2021, arXiv:2106.09685) stays unmerged, with one fused down-projection per projection group:
  x·[A_q;A_k;A_v]ᵀ is one matmul to 3r, then each B maps its slice back (a block-diagonal B would be one matmul
  too, but changes fp32 bits: see `_linear`). No dropout/dispatch layers. Adapters are plain tensors handed to
  the step, so switching adapters between rows costs nothing and no module state (PEFT's active adapter) is
  touched.

* Each projection is a weight-format object called as `wb(x)`: `DenseLinear` over the model's own tensors, or
  `Int8Linear` (`weights="int8"`, CPU: int8 copies run by FBGEMM's dynamic int8 kernel, ~4x fewer bytes per token;
  not bit-identical, checked by tolerance).

Numerics (dense weights): the same ops in the same dtype as the Hugging Face + PEFT forward (the rotary embedding and activation
are the model's own modules, the RMSNorm the fused kernel of the same formula), so fp32 greedy decoding is
token-identical to it (tests/serve/test_fast_decode.py checks that, and the engine re-checks logits at warm-up).
Anything this step does not model (other architectures, sliding windows, DoRA, adapted embeddings) is reported by
`unsupported()` or `adapter_plan()` and served by the plain forward.

`decode_step` works on a batch of rows that share one length and one adapter (a scheduler that batches
requests, issue 15, extends the row dimension); the engine calls it with one row.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

# model_type -> what it needs beyond a plain Llama layer. These share LlamaDecoderLayer's structure:
# pre-norm attention (q/k/v/o, optional biases) and a gated MLP (gate/up/down).
_SUPPORTED = {"llama", "mistral", "qwen2"}
_GROUPS = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}


def unsupported(model) -> str | None:
    """Why the lean step cannot serve `model` (None: it can)."""
    cfg = model.config
    if cfg.model_type not in _SUPPORTED:
        return f"architecture {cfg.model_type!r} (lean decode covers {', '.join(sorted(_SUPPORTED))})"
    if getattr(cfg, "use_sliding_window", False) or (
        getattr(cfg, "sliding_window", None) and cfg.sliding_window < cfg.max_position_embeddings
    ):
        return "sliding-window attention"
    if getattr(cfg, "_attn_implementation", "sdpa") not in ("sdpa", "eager", None):
        return f"attention implementation {cfg._attn_implementation!r}"
    return None


def _base_linear(module):
    """The frozen nn.Linear under a PEFT LoRA wrapper (or the module itself)."""
    return getattr(module, "base_layer", module)


def _fuse_rows(linears: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the linears' weights (and biases) along the output dim and re-bind each module's parameter as
    a view into the concatenation: one matmul computes all of them and no second copy of the weights exists."""
    weights = [lin.weight for lin in linears]
    if len(linears) == 1:
        return weights[0], linears[0].bias
    fused = torch.cat([w.detach() for w in weights])
    bias = None
    if any(lin.bias is not None for lin in linears):
        bias = torch.cat(
            [
                lin.bias.detach()
                if lin.bias is not None
                else torch.zeros(lin.out_features, dtype=fused.dtype, device=fused.device)
                for lin in linears
            ]
        )
    start = 0
    for lin in linears:
        n = lin.out_features
        lin.weight = torch.nn.Parameter(fused[start : start + n], requires_grad=False)
        if bias is not None and lin.bias is not None:
            lin.bias = torch.nn.Parameter(bias[start : start + n], requires_grad=False)
        start += n
    return fused, bias


class DenseLinear(NamedTuple):
    """`x·Wᵀ + b` over the model's own tensors (the fused views): the default weight format, bit-identical to the
    model's forward."""

    weight: torch.Tensor  # (out, in)
    bias: torch.Tensor | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Int8Linear:
    """The same projection with int8 weights: per-output-channel symmetric scales (w ≈ scale[o]·q[o, i], q in
    [-127, 127]), run by FBGEMM's dynamic-quantization kernel (`quantized::linear_dynamic`: each call quantizes the
    activations to 7 bits with one scale per tensor (per row at decode, M = 1) and accumulates in int32, as llama.cpp's q8_0 does per block of 32).

    Why this kernel: at decode shapes (one row, K = 576) on an AVX2 CPU it was the only int8 path faster than fp32
    `F.linear` (bench/RESULTS.md): `aten._weight_int8pack_mm` (gpt-fast/torchao's weight-only CPU path) and
    `torch._int_mm` have no AVX2-vectorised kernel in torch 2.13 and measured 2-100x slower than fp32. A token
    reads 1 byte per weight instead of 4, which is what a memory-bound decode step pays for.

    `reduce_range` keeps activations to 7 bits: without VNNI, AVX2's u8·s8 pair-multiply (vpmaddubsw) saturates
    at int16 for full-range inputs (PyTorch's dynamic quantization makes the same choice on x86). The fp32 weights
    are not touched (the prefill and the plain forward keep using them); this holds a packed int8 copy."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        with warnings.catch_warnings():
            # torch 2.13 deprecates quantized tensor creation (pytorch#184982); the kernel itself is current. If a
            # later torch drops it, building this raises and the engine's warm-up serves fp32 with one log line.
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            qw = torch._make_per_channel_quantized_tensor(
                q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0
            )
            self.packed = torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.detach().float())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, self.in_features), self.packed, True)
        return y.view(*x.shape[:-1], self.out_features)


WEIGHT_FORMATS = ("dense", "int8")  # --weights


def _norm(module):
    """The model's RMSNorm as one fused `F.rms_norm` call instead of its ~7 element-wise ops (the same formula,
    x·rsqrt(mean(x²) + eps)·w, computed in fp32; bit-identical in fp32, checked again at the engine's warm-up).
    Norms of another form keep their module."""
    eps, weight = getattr(module, "variance_epsilon", None), getattr(module, "weight", None)
    if type(module).__name__.endswith("RMSNorm") and eps is not None and weight is not None:
        shape = (weight.shape[0],)
        return lambda x: F.rms_norm(x, shape, weight, eps)
    return module


@dataclass
class LoraGroup:
    """One projection group's adapter: x·aᵀ for the whole group in one matmul (a = the adapted projections' A
    stacked), then each projection's B on its slice of that, times its alpha/r, added to its output columns."""

    a: torch.Tensor  # (sum of ranks, in)
    parts: list[tuple[int, int, int, int, torch.Tensor, float]]  # (out lo, out hi, rank lo, rank hi, B, scale)


AdapterPlan = list[dict[str, LoraGroup]]  # per layer: group name -> LoraGroup (absent groups are not adapted)


@dataclass
class DecodeState:
    """The KV cache of a batch of rows that advance together: (layers, rows, kv_heads, max_len, head_dim)."""

    keys: torch.Tensor
    values: torch.Tensor
    length: int  # positions filled (the next token goes at this position)

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]


class FastDecoder:
    """The lean decode step over a loaded Llama-family model (see the module docstring)."""

    def __init__(self, model, weights: str = "dense"):
        reason = unsupported(model)
        if reason:
            raise ValueError(f"lean decode does not support {reason}")
        cfg = model.config
        inner = model.model
        self.model = model
        self.embed = inner.embed_tokens
        self.norm = _norm(inner.norm)
        self.rotary = inner.rotary_emb
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.scaling = self.head_dim**-0.5
        self.q_size, self.kv_size = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        self.layers = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv_w, qkv_b = _fuse_rows([_base_linear(attn.q_proj), _base_linear(attn.k_proj), _base_linear(attn.v_proj)])
            gu_w, gu_b = _fuse_rows([_base_linear(mlp.gate_proj), _base_linear(mlp.up_proj)])
            o, down = _base_linear(attn.o_proj), _base_linear(mlp.down_proj)
            self.layers.append(
                {
                    "in_norm": _norm(layer.input_layernorm),
                    "post_norm": _norm(layer.post_attention_layernorm),
                    "act": mlp.act_fn,
                    "qkv": DenseLinear(qkv_w, qkv_b),
                    "o": DenseLinear(o.weight, o.bias),
                    "gate_up": DenseLinear(gu_w, gu_b),
                    "down": DenseLinear(down.weight, down.bias),
                    "module": layer,
                }
            )
        self.dtype = self.layers[0]["qkv"].weight.dtype
        self.device = self.layers[0]["qkv"].weight.device
        head = _base_linear(model.lm_head)
        self.head: DenseLinear | Int8Linear = DenseLinear(head.weight, head.bias)
        self.weights = weights
        if weights == "int8":
            if self.dtype != torch.float32 or self.device.type != "cpu":
                raise ValueError(f"int8 weights run on CPU over float32 models (this one: {self.dtype}, {self.device})")
            # every projection and the output head (for SmolLM2 a fifth of the bytes read per token); embeddings,
            # norms and LoRA weights stay fp32
            for layer in self.layers:
                for group in _GROUPS:
                    layer[group] = Int8Linear(*layer[group])
            self.head = Int8Linear(*self.head)
        elif weights != "dense":
            raise ValueError(f"weight format {weights!r} (one of {', '.join(WEIGHT_FORMATS)})")

    # ------------------------------------------------------------------ adapters
    def adapter_plan(self, peft_model, name: str) -> AdapterPlan:
        """Adapter `name`'s LoRA weights, gathered per layer into fused groups. ValueError for what the lean step
        does not model (DoRA, LoRA on embeddings or the output head, LoRA biases)."""
        peft_cfg = peft_model.peft_config[name]
        if getattr(peft_cfg, "use_dora", False):
            raise ValueError("DoRA adapters")
        if getattr(peft_cfg, "lora_bias", False):
            raise ValueError("LoRA with bias")
        for mod_name, module in peft_model.named_modules():
            if hasattr(module, "lora_embedding_A") and name in module.lora_embedding_A:
                raise ValueError(f"LoRA on an embedding ({mod_name})")
            if name in (getattr(module, "modules_to_save", None) or {}):
                raise ValueError(f"fully trained modules ({mod_name})")
        if name in (getattr(self.model.lm_head, "lora_A", None) or {}):
            raise ValueError("LoRA on the output head")
        plan: AdapterPlan = []
        for layer in self.layers:
            # the modules as they are now: PEFT replaced the projections with LoRA wrappers after __init__
            attn, mlp = layer["module"].self_attn, layer["module"].mlp
            modules = {
                proj: getattr(attn if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else mlp, proj)
                for projs in _GROUPS.values()
                for proj in projs
            }
            groups: dict[str, LoraGroup] = {}
            for group, projs in _GROUPS.items():
                a_parts, parts, row, col = [], [], 0, 0
                for proj in projs:
                    mod = modules[proj]
                    out = _base_linear(mod).out_features
                    if hasattr(mod, "lora_A") and name in mod.lora_A:
                        if type(mod.lora_A[name]) is not torch.nn.Linear:
                            raise ValueError(f"LoRA layer type {type(mod.lora_A[name]).__name__}")
                        a, b = mod.lora_A[name].weight, mod.lora_B[name].weight  # (r, in), (out, r)
                        a_parts.append(a.detach())
                        parts.append((row, row + out, col, col + a.shape[0], b.detach(), float(mod.scaling[name])))
                        col += a.shape[0]
                    row += out
                if parts:
                    groups[group] = LoraGroup(a=a_parts[0] if len(a_parts) == 1 else torch.cat(a_parts), parts=parts)
            plan.append(groups)
        return plan

    # ------------------------------------------------------------------ cache
    def new_state(self, rows: int, capacity: int) -> DecodeState:
        shape = (len(self.layers), rows, self.n_kv, capacity, self.head_dim)
        return DecodeState(
            torch.zeros(shape, dtype=self.dtype, device=self.device),
            torch.zeros(shape, dtype=self.dtype, device=self.device),
            0,
        )

    def state_from_cache(self, cache, capacity: int) -> DecodeState:
        """A DecodeState holding a Hugging Face cache's keys/values (after a prefill), with room for `capacity`."""
        layers = cache.layers
        k0 = layers[0].keys
        state = self.new_state(k0.shape[0], capacity)
        n = k0.shape[2]
        for i, layer in enumerate(layers):
            state.keys[i, :, :, :n] = layer.keys
            state.values[i, :, :, :n] = layer.values
        state.length = n
        return state

    # ------------------------------------------------------------------ the step
    @staticmethod
    def _linear(x: torch.Tensor, wb: DenseLinear | Int8Linear, lora: LoraGroup | None) -> torch.Tensor:
        y = wb(x)  # the base projection in its weight format; LoRA stays fp32 on top, unmerged
        if lora is not None:
            # The same ops as PEFT's `result + lora_B(lora_A(x)) * scaling`, so fp32 stays bit-identical: the
            # stacked A gives each projection's x·Aᵀ exactly, while one block-diagonal B would not (its zero
            # blocks change how the matmul kernel groups the sum), so each B runs on its own slice.
            xa = F.linear(x, lora.a)
            if len(lora.parts) == 1 and lora.parts[0][1] - lora.parts[0][0] == y.shape[-1]:
                return y + F.linear(xa, lora.parts[0][4]) * lora.parts[0][5]
            for lo, hi, r_lo, r_hi, b, scale in lora.parts:
                y[..., lo:hi] += F.linear(xa[..., r_lo:r_hi], b) * scale
        return y

    @torch.no_grad()
    def decode_step(self, state: DecodeState, tokens: torch.Tensor, plan: AdapterPlan | None = None) -> torch.Tensor:
        """Logits (rows, vocab) for the next token after `tokens` (rows,), which are appended to `state`."""
        rows, pos = tokens.shape[0], state.length
        if pos >= state.capacity:
            raise ValueError(f"the KV cache is full ({state.capacity} positions)")
        h = self.embed(tokens.view(rows, 1))  # (B, 1, H)
        position_ids = torch.full((rows, 1), pos, dtype=torch.long, device=tokens.device)
        cos, sin = self.rotary(h, position_ids)  # (B, 1, head_dim)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        half = self.head_dim // 2
        length = pos + 1
        for i, layer in enumerate(self.layers):
            lora = plan[i] if plan is not None else {}
            x = layer["in_norm"](h)
            qkv = self._linear(x, layer["qkv"], lora.get("qkv"))
            qk, v = qkv.split((self.q_size + self.kv_size, self.kv_size), dim=-1)
            qk = qk.view(rows, 1, self.n_heads + self.n_kv, self.head_dim).transpose(1, 2)  # (B, heads + kv, 1, hd)
            v = v.view(rows, 1, self.n_kv, self.head_dim).transpose(1, 2)
            # rotary embedding (Su et al. 2021, arXiv:2104.09864), as transformers' apply_rotary_pos_emb, on the
            # query and key heads at once (element-wise, so the same bits as applying it to each)
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
            q, k = qk[:, : self.n_heads], qk[:, self.n_heads :]
            state.keys[i, :, :, pos:length] = k
            state.values[i, :, :, pos:length] = v
            attn = F.scaled_dot_product_attention(
                q,
                state.keys[i, :, :, :length],
                state.values[i, :, :, :length],
                scale=self.scaling,
                enable_gqa=self.n_kv != self.n_heads,
            )
            h = h + self._linear(attn.transpose(1, 2).reshape(rows, 1, self.q_size), layer["o"], lora.get("o"))
            x = layer["post_norm"](h)
            gate, up = self._linear(x, layer["gate_up"], lora.get("gate_up")).chunk(2, dim=-1)
            h = h + self._linear(layer["act"](gate) * up, layer["down"], lora.get("down"))
        state.length = length
        return self.head(self.norm(h))[:, -1]
