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
  `Q8Linear` (`weights="int8"`, CPU: llama.cpp's q8_0 blocks run by tuneforge's C kernels, `cpu_kernels`, ~4x
  fewer bytes per token; not bit-identical, checked by tolerance). With int8 weights a single sequence's decode
  step is one C call (`cpu_kernels.NativeStep`): the same weights without ~600 PyTorch ops per token.

Numerics (dense weights): the same ops in the same dtype as the Hugging Face + PEFT forward (the rotary embedding and activation
are the model's own modules, the RMSNorm the fused kernel of the same formula), so fp32 greedy decoding is
token-identical to it (tests/serve/test_fast_decode.py checks that, and the engine re-checks logits at warm-up).
Anything this step does not model (other architectures, sliding windows, DoRA, adapted embeddings) is reported by
`unsupported()` or `adapter_plan()` and served by the plain forward.

`forward` is the general step the batching scheduler runs: rows of different lengths (per-row positions, a
per-row mask over the padded cache `BatchCache`) and different adapters (the base matmul for the whole batch, then
each adapter's low-rank product on its rows only: the segmented LoRA of Punica/S-LoRA, so adapters of any rank and
targets share a batch), one token per row (decode) or a chunk of one row's prompt (prefill). Adapters are read
from their safetensors into tensors (`load_adapter_plan`), never injected into the module tree.
`decode_step` is the one-adapter, equal-length case (the engine's warm-up check and the round-robin scheduler).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .cpu_kernels import NativeStep, Q8Linear

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


WEIGHT_FORMATS = ("dense", "int8")  # --weights
# The int8 step's warm-up bound: mean KL(model ‖ int8) of the next-token distribution, in nats. SmolLM2-135M's q8_0
# step measures 0.003-0.006 (the engine's `_check_lean`, and 64-token chat answers); a kernel off by 30% ~4.5.
INT8_MAX_KL = 0.05


def next_token_kl(ref: torch.Tensor, mine: torch.Tensor) -> float:
    """KL(softmax(ref) ‖ softmax(mine)) in nats, averaged over rows: how far `mine`'s next-token distribution is
    from the reference's (0 for the same logits up to a constant)."""
    ref_lp, mine_lp = ref.float().log_softmax(-1), mine.float().log_softmax(-1)
    return float(F.kl_div(mine_lp, ref_lp, log_target=True, reduction="batchmean"))


def _norm(module):
    """The model's RMSNorm as one `F.rms_norm` call instead of its ~7 element-wise ops (the same formula,
    x·rsqrt(mean(x²) + eps)·w, computed in fp32; bit-identical in fp32, checked again at the engine's warm-up).
    Measured at the decode shape (1 x 576, 1 thread): 48 us per call against 73 us for the 6 ops written out.
    Norms of another form keep their module."""
    eps, weight = getattr(module, "variance_epsilon", None), getattr(module, "weight", None)
    if type(module).__name__.endswith("RMSNorm") and eps is not None and weight is not None:
        shape = (weight.shape[0],)
        return lambda x: F.rms_norm(x, shape, weight, eps)
    return module


def _rms_norm_params(module) -> tuple[torch.Tensor | None, float]:
    """(weight, epsilon) of a plain RMSNorm (what `_norm` fuses), (None, nan) for any other norm."""
    if _norm(module) is module:
        return None, math.nan
    return module.weight.detach(), float(module.variance_epsilon)


@dataclass
class LoraGroup:
    """One projection group's adapter: x·aᵀ for the whole group in one matmul (a = the adapted projections' A
    stacked), then each projection's B on its slice of that, times its alpha/r, added to its output columns."""

    a: torch.Tensor  # (sum of ranks, in)
    parts: list[tuple[int, int, int, int, torch.Tensor, float]]  # (out lo, out hi, rank lo, rank hi, B, scale)
    # The B's as one block-diagonal (group out, sum of ranks) matrix with the scales folded in: the whole group's
    # LoRA is then 2 matmuls and 1 add instead of up to 10 ops. Only where the base is not bit-exact anyway (int8
    # weights): its zero blocks change how the fp32 kernel groups the sums (see `FastDecoder._linear`).
    b: torch.Tensor | None = None


def _lora_group(a_parts: list[torch.Tensor], parts: list, out: int, fuse_b: bool) -> LoraGroup:
    """A group's LoraGroup from its adapted projections' A's and (out lo, out hi, rank lo, rank hi, B, scale)
    parts; `out` is the group's whole output width; `fuse_b` also builds the block-diagonal B."""
    a = a_parts[0] if len(a_parts) == 1 else torch.cat(a_parts)
    b = None
    if fuse_b:
        b = a.new_zeros(out, a.shape[0])
        for lo, hi, r_lo, r_hi, part, scale in parts:
            b[lo:hi, r_lo:r_hi] = part * scale
    return LoraGroup(a=a, parts=parts, b=b)


class AdapterPlan(list[dict[str, LoraGroup]]):
    """Per layer: group name -> LoraGroup (absent groups are not adapted)."""

    native: object = None  # the C step's view of these tensors (`NativeStep.lora_groups`), built on first use


# Rows of a batch that share one adapter: (their row indices, None for all rows; their plan, None for the base)
Segments = list[tuple[torch.Tensor | None, AdapterPlan | None]]
_PROJ_PARENT = {
    proj: "self_attn" if group in ("qkv", "o") else "mlp" for group, projs in _GROUPS.items() for proj in projs
}


class AdapterMismatchError(Exception):
    """An adapter's files are unreadable or its tensors do not fit this base model (names the file and tensor)."""


def _adapter_tensors(path: Path) -> dict[str, torch.Tensor]:
    st, binary = path / "adapter_model.safetensors", path / "adapter_model.bin"
    try:
        if st.is_file():
            from safetensors.torch import load_file

            return load_file(str(st))
        # older PEFT's pickle format: tensors only (weights_only), never arbitrary objects
        return torch.load(binary, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AdapterMismatchError(f"{st if st.is_file() else binary} could not be read: {exc}") from None


@dataclass
class DecodeState:
    """The KV cache of a batch of rows that advance together: (layers, rows, kv_heads, max_len, head_dim)."""

    keys: torch.Tensor
    values: torch.Tensor
    length: int  # positions filled (the next token goes at this position)

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]


class BatchCache:
    """The KV cache of the running batch: (layers, slots, kv_heads, capacity, head_dim), rows 0..n-1 in use, each
    with its own filled length (a row's padding beyond its length is masked in `FastDecoder.forward`).

    Slots and capacity grow by re-allocation (slots to the next power of two, capacity to the next multiple of
    128 positions) and never on every token; a row that leaves is replaced by the last row (one row's copy), so
    the rows in use stay a contiguous view. Everything is dropped when the batch empties."""

    def __init__(self, decoder: FastDecoder):
        self.decoder = decoder
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.lengths: list[int] = []

    @property
    def rows(self) -> int:
        return len(self.lengths)

    def shape_for(self, rows: int, capacity: int) -> tuple[int, int]:
        """(slots, capacity) the buffers would have to hold `rows` rows needing `capacity` positions."""
        slots = self.keys.shape[1] if self.keys is not None else 0
        cap = self.keys.shape[3] if self.keys is not None else 0
        if rows > slots:
            slots = 1 << (rows - 1).bit_length()
        if capacity > cap:
            cap = self.round_capacity(capacity)
        return slots, cap

    @staticmethod
    def round_capacity(positions: int) -> int:
        """Capacity grows in steps of 128 positions, so a long decode re-allocates rarely."""
        return -(-positions // 128) * 128

    def positions(self, rows: int, capacity: int) -> int:
        """KV positions (slots x capacity) allocated once `rows` rows needing `capacity` positions are held."""
        slots, cap = self.shape_for(rows, capacity)
        return slots * cap

    def add(self, state: DecodeState, capacity: int) -> int:
        """Copy a prefilled one-row state in as the last row (room for `capacity` positions); its row index."""
        slots, cap = self.shape_for(self.rows + 1, capacity)
        if self.keys is None or self.values is None or (slots, cap) != (self.keys.shape[1], self.keys.shape[3]):
            d = self.decoder
            shape = (len(d.layers), slots, d.n_kv, cap, d.head_dim)
            keys = torch.zeros(shape, dtype=d.dtype, device=d.device)
            values = torch.zeros(shape, dtype=d.dtype, device=d.device)
            if self.keys is not None and self.values is not None:
                n, old_cap = self.rows, self.keys.shape[3]
                keys[:, :n, :, :old_cap] = self.keys[:, :n]
                values[:, :n, :, :old_cap] = self.values[:, :n]
            self.keys, self.values = keys, values
        row, n = self.rows, state.length
        self.keys[:, row, :, :n] = state.keys[:, 0, :, :n]
        self.values[:, row, :, :n] = state.values[:, 0, :, :n]
        self.lengths.append(n)
        return row

    def remove(self, row: int) -> None:
        """Drop `row`: the last row moves into its slot (the caller moves its bookkeeping the same way)."""
        assert self.keys is not None and self.values is not None  # a row is held
        last = self.rows - 1
        if row != last:
            n = self.lengths[last]
            self.keys[:, row, :, :n] = self.keys[:, last, :, :n]
            self.values[:, row, :, :n] = self.values[:, last, :, :n]
            self.lengths[row] = n
        self.lengths.pop()
        if not self.lengths:
            self.keys = self.values = None

    def step(self, tokens: torch.Tensor, segments: Segments) -> torch.Tensor:
        """One decode step for every row: `tokens` (rows,) appended at each row's own position."""
        assert self.keys is not None and self.values is not None  # a row is held
        n = self.rows
        logits = self.decoder.forward(
            self.keys[:, :n], self.values[:, :n], tokens.view(n, 1), list(self.lengths), segments
        )
        self.lengths = [x + 1 for x in self.lengths]
        return logits


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
        self.head: DenseLinear | Q8Linear = DenseLinear(head.weight, head.bias)
        self.weights = weights
        self.native: NativeStep | None = None
        if weights == "int8":
            if self.dtype != torch.float32 or self.device.type != "cpu":
                raise ValueError(f"int8 weights run on CPU over float32 models (this one: {self.dtype}, {self.device})")
            # every projection and the output head (for SmolLM2 a fifth of the bytes read per token); embeddings,
            # norms and LoRA weights stay fp32
            for layer in self.layers:
                layer["prefill"] = {group: layer[group] for group in _GROUPS}  # the fp32 projections, see `forward`
                for group in _GROUPS:
                    layer[group] = Q8Linear(*layer[group])
            self.head = Q8Linear(*self.head)
            self.native = self._native_step()
        elif weights != "dense":
            raise ValueError(f"weight format {weights!r} (one of {', '.join(WEIGHT_FORMATS)})")

    def _native_step(self) -> NativeStep | None:
        """The whole one-sequence step in C when every norm is a plain RMSNorm of one epsilon (None otherwise: the
        PyTorch step runs it, over the same q8_0 weights)."""
        inner = self.model.model
        modules = [inner.norm]
        for layer in self.layers:
            modules += [layer["module"].input_layernorm, layer["module"].post_attention_layernorm]
        params = [_rms_norm_params(m) for m in modules]
        weights = [w for w, _ in params if w is not None]
        if len(weights) != len(params) or len({eps for _, eps in params}) != 1:
            return None
        try:
            return NativeStep(self, weights, params[0][1])
        except ValueError:
            return None

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
        plan = AdapterPlan()
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
                    groups[group] = _lora_group(a_parts, parts, row, self.weights != "dense")
            plan.append(groups)
        return plan

    def load_adapter_plan(self, path: str | Path) -> AdapterPlan:
        """An adapter's plan read straight from its folder (adapter_config.json + adapter_model.safetensors),
        without touching the model: safe on a loader thread while the model thread decodes. ValueError for what
        the lean step does not model (the engine then serves the adapter with PEFT on the plain forward);
        AdapterMismatchError for unreadable files or tensors whose shapes do not fit this base."""
        path = Path(path)
        try:
            cfg = json.loads((path / "adapter_config.json").read_text())
        except (OSError, ValueError) as exc:
            raise AdapterMismatchError(f"{path / 'adapter_config.json'} could not be read: {exc}") from None
        if cfg.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"{cfg.get('peft_type')} adapters")
        if cfg.get("use_dora"):
            raise ValueError("DoRA adapters")
        if cfg.get("lora_bias") or cfg.get("bias", "none") != "none":
            raise ValueError("LoRA with bias")
        if cfg.get("modules_to_save"):
            raise ValueError("fully trained modules (modules_to_save)")
        tensors = _adapter_tensors(path)
        from peft.utils.other import get_pattern_key  # PEFT's own rule for rank_pattern/alpha_pattern keys

        alpha, rslora = float(cfg.get("lora_alpha", 8)), bool(cfg.get("use_rslora"))
        alpha_pattern = cfg.get("alpha_pattern") or {}
        weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, float]] = {}
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            module, dot, kind = key.removesuffix(".weight").rpartition(".")
            if kind not in ("lora_A", "lora_B") or not dot or not key.endswith(".weight"):
                raise ValueError(f"adapter tensor {key!r} (only lora_A/lora_B weights are modelled)")
            pairs.setdefault(module, {})[kind] = tensor
        n_layers = len(self.layers)
        for module, ab in pairs.items():
            # PEFT's saved names: base_model.model.model.layers.<i>.<self_attn|mlp>.<proj>
            parts = module.split(".")
            proj = parts[-1]
            if len(parts) < 4 or parts[-4] != "layers" or not parts[-3].isdigit() or proj not in _PROJ_PARENT:
                raise ValueError(f"LoRA on {module!r} (lean decode models the attention and MLP projections)")
            layer = int(parts[-3])
            if parts[-2] != _PROJ_PARENT[proj] or layer >= n_layers:
                raise AdapterMismatchError(f"tensor {module}: this base has no such module ({n_layers} layers)")
            if set(ab) != {"lora_A", "lora_B"}:
                raise AdapterMismatchError(f"tensor {module}: lora_A and lora_B must both be present")
            a, b = ab["lora_A"], ab["lora_B"]
            base = _base_linear(getattr(getattr(self.layers[layer]["module"], parts[-2]), proj))
            r = a.shape[0]
            if a.dim() != 2 or b.dim() != 2 or a.shape[1] != base.in_features or b.shape != (base.out_features, r):
                raise AdapterMismatchError(
                    f"tensor {module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not fit the base's "
                    f"{proj} ({base.in_features} -> {base.out_features}): was it trained on another model?"
                )
            name = module.removeprefix("base_model.model.")
            a_alpha = float(alpha_pattern.get(get_pattern_key(list(alpha_pattern), name), alpha))
            scale = a_alpha / math.sqrt(r) if rslora else a_alpha / r
            weights[(layer, proj)] = (
                a.to(self.device, self.dtype).contiguous(),
                b.to(self.device, self.dtype).contiguous(),
                scale,
            )
        if not weights:
            raise AdapterMismatchError(f"{path}: the adapter holds no LoRA tensors")
        plan = AdapterPlan()
        for i, layer_weights in enumerate(self.layers):
            groups: dict[str, LoraGroup] = {}
            for group, projs in _GROUPS.items():
                a_parts, lora_parts, row, col = [], [], 0, 0
                for proj in projs:
                    parent = getattr(layer_weights["module"], _PROJ_PARENT[proj])
                    out = _base_linear(getattr(parent, proj)).out_features
                    if (i, proj) in weights:
                        a, b, scale = weights[(i, proj)]
                        a_parts.append(a)
                        lora_parts.append((row, row + out, col, col + a.shape[0], b, scale))
                        col += a.shape[0]
                    row += out
                if lora_parts:
                    groups[group] = _lora_group(a_parts, lora_parts, row, self.weights != "dense")
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
    def _linear(x: torch.Tensor, wb: DenseLinear | Q8Linear, lora: LoraGroup | None) -> torch.Tensor:
        y = wb(x)  # the base projection in its weight format; LoRA stays fp32 on top, unmerged
        if lora is not None:
            # The same ops as PEFT's `result + lora_B(lora_A(x)) * scaling`, so fp32 stays bit-identical: the
            # stacked A gives each projection's x·Aᵀ exactly, while one block-diagonal B would not (its zero
            # blocks change how the matmul kernel groups the sum), so each B runs on its own slice.
            xa = F.linear(x, lora.a)
            if lora.b is not None:
                return y.add_(F.linear(xa, lora.b))
            if len(lora.parts) == 1 and lora.parts[0][1] - lora.parts[0][0] == y.shape[-1]:
                return y + F.linear(xa, lora.parts[0][4]) * lora.parts[0][5]
            for lo, hi, r_lo, r_hi, b, scale in lora.parts:
                y[..., lo:hi] += F.linear(xa[..., r_lo:r_hi], b) * scale
        return y

    def _project(
        self, x: torch.Tensor, wb: DenseLinear | Q8Linear, layer: int, group: str, segments: Segments
    ) -> torch.Tensor:
        """`x`'s projection through a group's weights, each row with its own adapter: one matmul over the whole
        batch for the base weights, then per adapter x[rows]·Aᵀ·Bᵀ on its rows (gathered, added back in place)."""
        if len(segments) == 1 and segments[0][0] is None:  # one adapter (or the base) for every row
            plan = segments[0][1]
            return self._linear(x, wb, plan[layer].get(group) if plan is not None else None)
        y = self._linear(x, wb, None)
        for rows, plan in segments:
            lora = plan[layer].get(group) if plan is not None else None
            if lora is None or rows is None:
                continue
            xa = F.linear(x[rows], lora.a)
            if lora.b is not None:
                y.index_add_(0, rows, F.linear(xa, lora.b))
                continue
            for lo, hi, r_lo, r_hi, b, scale in lora.parts:
                y[..., lo:hi].index_add_(0, rows, F.linear(xa[..., r_lo:r_hi], b) * scale)
        return y

    @torch.no_grad()
    def forward(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        tokens: torch.Tensor,
        start: list[int],
        segments: Segments,
    ) -> torch.Tensor:
        """Next-token logits (rows, vocab) after `tokens` (rows, T): row b's tokens go at positions start[b] ..
        start[b] + T - 1 of its cache row in `keys`/`values` ((layers, rows, kv_heads, capacity, head_dim), e.g. a
        `BatchCache`'s first rows) and attend to everything before them in that row. `segments`: (row indices or
        None for all rows, the rows' AdapterPlan or None for the base), each row in at most one segment.
        Decode is T = 1 for many rows; a prefill chunk is T tokens of one row."""
        rows, t = tokens.shape
        end = max(start) + t
        if end > keys.shape[3]:
            raise ValueError(f"the KV cache is full ({keys.shape[3]} positions)")
        if self.native is not None and rows == t == 1 and len(segments) == 1 and segments[0][0] is None:
            # one sequence, one token, one adapter: the whole step in C over the same weights and cache
            return self.native(keys, values, int(tokens[0, 0]), start[0], segments[0][1])
        device = tokens.device
        offsets = torch.arange(t, device=device)
        first = torch.tensor(start, dtype=torch.long, device=device)
        positions = first.view(rows, 1) + offsets  # (B, T)
        h = self.embed(tokens)  # (B, T, H)
        cos, sin = self.rotary(h, positions)  # (B, T, head_dim)
        half = self.head_dim // 2
        # RoPE's rotate_half(x)·sin = cat(-x[half:], x[:half])·sin = roll(x, half)·[-sin[:half], sin[half:]]: the
        # sign moves onto sin once per step (negation is exact, so the same bits), leaving 4 ops per layer, not 7
        # (q and k of one SmolLM2 layer at decode, 1 thread: 29 us against 53 us)
        cos, sin = cos.unsqueeze(1), torch.cat((-sin[..., :half], sin[..., half:]), dim=-1).unsqueeze(1)
        uniform = rows == 1 or all(s == start[0] for s in start)
        # One row, or rows of one length, decoding one token: every cached position is visible (the plain
        # forward's case; no mask keeps the warm-up's bit-identity). A prompt chunk from position 0: causal.
        # Otherwise an explicit mask: key j is visible to query (b, i) when j <= start[b] + i, which hides the
        # padding beyond each row's own length in the shared cache.
        mask = None
        causal = t > 1 and uniform and start[0] == 0
        if not (uniform and t == 1) and not causal:
            mask = torch.arange(end, device=device).view(1, 1, 1, end) <= positions.view(rows, 1, t, 1)
        if uniform:
            slot = slice(start[0], start[0] + t)
        else:
            row_idx = torch.arange(rows, device=device).view(rows, 1).expand(rows, t)
        for i, layer in enumerate(self.layers):
            # A prompt chunk (t > 1) under int8 runs the model's fp32 projections: prefill is compute-bound, where
            # MKL's fp32 GEMM beats the AVX2 q8_0 kernel (400 tokens: 2.2 s against 3.5 s, 1 thread), and its KV
            # cache is then the model's own. Decode (one token per row) is memory-bound: q8_0, for every batch size.
            wb = layer["prefill"] if t > 1 and "prefill" in layer else layer
            x = layer["in_norm"](h)
            qkv = self._project(x, wb["qkv"], i, "qkv", segments)
            qk, v = qkv.split((self.q_size + self.kv_size, self.kv_size), dim=-1)
            qk = qk.view(rows, t, self.n_heads + self.n_kv, self.head_dim).transpose(1, 2)  # (B, heads + kv, T, hd)
            v = v.view(rows, t, self.n_kv, self.head_dim).transpose(1, 2)
            qk = qk * cos + qk.roll(half, dims=-1) * sin
            q, k = qk[:, : self.n_heads], qk[:, self.n_heads :]
            if uniform:
                keys[i, :, :, slot] = k
                values[i, :, :, slot] = v
            else:  # each row at its own position: (B, T) index pairs -> (B, T, kv, hd) slots
                keys[i][row_idx, :, positions] = k.transpose(1, 2)
                values[i][row_idx, :, positions] = v.transpose(1, 2)
            attn = F.scaled_dot_product_attention(
                q,
                keys[i, :, :, :end],
                values[i, :, :, :end],
                attn_mask=mask,
                is_causal=causal,
                scale=self.scaling,
                enable_gqa=self.n_kv != self.n_heads,
            )
            o = attn.transpose(1, 2).reshape(rows, t, self.q_size)
            h = h + self._project(o, wb["o"], i, "o", segments)
            x = layer["post_norm"](h)
            gate, up = self._project(x, wb["gate_up"], i, "gate_up", segments).chunk(2, dim=-1)
            h = h + self._project(layer["act"](gate) * up, wb["down"], i, "down", segments)
        return self.head(self.norm(h[:, -1:]))[:, -1]

    def decode_step(self, state: DecodeState, tokens: torch.Tensor, plan: AdapterPlan | None = None) -> torch.Tensor:
        """Logits (rows, vocab) for the next token after `tokens` (rows,), which are appended to `state`: rows of
        one length and one adapter."""
        rows = tokens.shape[0]
        logits = self.forward(state.keys, state.values, tokens.view(rows, 1), [state.length] * rows, [(None, plan)])
        state.length += 1
        return logits
