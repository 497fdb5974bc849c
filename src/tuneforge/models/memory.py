"""How much memory LoRA / QLoRA training of a model needs: an analytic estimate, term by term.

    total = weights + LoRA parameters + their gradients + optimizer state + activations + logits + workspace + overhead

`estimate_training_memory(model_shape, setup)` returns the breakdown (`MemoryEstimate`). The model enters only through
a `ModelShape`: parameter counts by how they are stored and the widths that set activation sizes, read off the model's
module structure, which `ModelShape.from_config` builds on the meta device (no weights, no download; the catalog
extrapolates from 1- and 2-layer builds, a few milliseconds each). Each term below says where it comes from; the constants are first-principles values meant to be calibrated
against measured runs (peak `torch.cuda.max_memory_allocated` + context on CUDA, peak RSS on the CPU), which is why
every term is reported separately.

The terms follow what tuneforge's own code does (models/lora.py, train/loss.py), not a generic trainer:
- LoRA, CUDA: the whole base in the compute dtype. LoRA, CPU: loaded in fp32, then the frozen linear weights are
  cast to the compute dtype while embeddings and norms stay fp32 (so loading peaks at 4 bytes/parameter).
- QLoRA: linear weights (not the output head) in 4-bit NF4; every other parameter (embeddings, output head, norms)
  in the compute dtype (norms upcast to fp32 only under fp16; a negligible share). For mixture-of-experts models "every
  other" includes the experts, which transformers 5 stores as fused 3-D parameters that bitsandbytes does not
  quantize — QLoRA saves little on Mixtral. (If models/lora.py went back to PEFT's prepare_model_for_kbit_training,
  which upcasts all of them to fp32, QLORA_UNQUANTIZED_BYTES would become 4.)
- The loss computes the output head only on target positions, chunk_tokens_for(vocab) positions at a time (train/loss.py,
  models/loss_path.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from ..runtime import default_device, default_nproc_per_node, pick_runtime, resolve_optimizer
from .loss_path import FAST_PATH_TYPES, chunk_tokens_for
from .targets import TARGET_PARAMETERS, _linear_types, default_target_modules

GiB = 2**30

# Bytes per element of each dtype.
_DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

# QLoRA (Dettmers et al. 2023, arXiv:2305.14314, sec. 3): NF4 stores 4 bits per weight plus one absmax constant per
# block of 64 weights. Without double quantization the constant is fp32: 32/64 = 0.5 bit/weight. With double
# quantization it is 8-bit, and each block of 256 constants has one fp32 second-level constant:
# 8/64 + 32/(64*256) = 0.127 bit/weight. (bitsandbytes' default blocksize is 64; checked in tests/models.)
NF4_BITS = 4.0
NF4_CONSTANT_BITS = {True: 8 / 64 + 32 / (64 * 256), False: 32 / 64}

# Optimizer state per trainable parameter. torch.optim.AdamW keeps exp_avg and exp_avg_sq in the parameter's dtype
# (fp32 for LoRA weights: 2 x 4 bytes; Loshchilov & Hutter 2019, arXiv:1711.05101). bitsandbytes' 8-bit optimizers
# keep both moments in 8 bits, block-wise quantized (Dettmers et al. 2022, arXiv:2110.02861): 2 x 1 byte. Paged
# variants may page their state out to CPU memory under pressure; counted here as resident.
OPTIMIZER_STATE_BYTES = {"adamw": 8, "paged_adamw_32bit": 8, "adamw_8bit": 2, "paged_adamw_8bit": 2}

# PEFT creates LoRA weights in fp32 even on a bf16 base (get_peft_model(autocast_adapter_dtype=True)), and their
# gradients have the same dtype.
LORA_PARAM_BYTES = 4

# Memory that exists before the first tensor: on CUDA the context, kernels and cuBLAS workspace (~0.3-0.6 GiB by the
# driver version and GPU, not visible to torch.cuda.memory_allocated); on the CPU the interpreter with torch,
# transformers, peft and bitsandbytes imported (measured ~0.45 GiB RSS here).
FRAMEWORK_OVERHEAD_BYTES = {"cuda": int(0.5 * GiB), "cpu": int(0.5 * GiB)}

# Peak RSS over saved activations on the CPU, measured on SmolLM2-135M runs of bench/train_bench.py (LoRA and QLoRA,
# batch 8, sequences up to 512 tokens: 1.9) and of 8 x 256-token batches (2.4). A fixed mmap threshold
# (MALLOC_MMAP_THRESHOLD_=65536) brings it near 1.3 but made training 1.8x slower (page faults), so it is not set.
CPU_ALLOCATOR_FACTOR = 2.1

# Bytes per unquantized parameter under QLoRA; None: the compute dtype's (see the module docstring).
QLORA_UNQUANTIZED_BYTES: int | None = None

# Per layer and token a decoder block keeps the inputs of its two norms for backward (RMSNorm/LayerNorm need them).
_NORM_INPUTS_PER_LAYER = 2


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model, read off its module structure."""

    model_type: str
    params: int  # all parameters (a tied output head counted once)
    quantizable_params: int  # weights that bitsandbytes stores in 4-bit under QLoRA (linear layers, not the head)
    linear_params: int  # weights of nn.Linear layers (subclasses too, not Conv1D, not the head): what
    #   models/lora.py casts to the compute dtype for LoRA on the CPU
    untied_head_params: int  # the output head's weight when not tied to the input embeddings, else 0
    largest_linear: int  # elements of the largest quantizable weight (QLoRA dequantizes one at a time)
    lora_dims: Mapping[str, int]  # linear leaf name -> sum over the model of (in_features + out_features)
    expert_lora_dims: Mapping[str, int]  # fused expert parameter -> sum over the model of experts*(in + out)
    default_targets: tuple[str, ...]  # the architecture's default LoRA target modules (targets.py)
    hidden_size: int
    num_layers: int
    vocab_size: int
    layer_linears: Mapping[str, tuple[int, int]]  # one decoder layer: linear leaf name -> (in, out) features
    layer_experts: tuple[int, int] = (0, 0)  # one layer, one routed expert: (sum of in, sum of out) of its weights
    experts_per_token: int = 0  # mixture of experts: experts each token runs through
    eager_attention_heads: int = 0  # heads whose (T x T) scores are materialised (no SDPA support), else 0
    attention_heads: int = 0
    attention_dropout: float = 0.0  # in training mode SDPA then needs the (T x T) probabilities on the CPU
    layer_extra_activations: int = 0  # per token and layer, saved by an activation written in Python (gelu_new)
    conv1d_params: int = 0  # weights of GPT-2-style Conv1D layers (the CPU LoRA base keeps them fp32)

    @classmethod
    def from_config(cls, config, *, extrapolate: bool = False) -> ModelShape:
        """Build the model on the meta device (no memory, no weights) and read its shape.

        `extrapolate`: build it with 1 and 2 decoder layers only and extend the per-layer difference to all layers —
        exact for models whose layers all have the same parameters, ~20x faster for big models. The catalog uses it
        (a test checks it against the full build for every entry); other models get the full build.
        """
        if not extrapolate or int(config.num_hidden_layers) <= 2:
            return _shape_from_config_json(config.to_json_string(use_diff=False))
        one, two = (_shape_from_config_json(_with_layers(config, n)) for n in (1, 2))
        n = int(config.num_hidden_layers)

        def grow(a: int, b: int) -> int:
            return a + (n - 1) * (b - a)

        def grow_dims(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
            return {k: grow(a.get(k, 0), b.get(k, 0)) for k in sorted(set(a) | set(b))}

        return dataclasses.replace(
            two,
            params=grow(one.params, two.params),
            quantizable_params=grow(one.quantizable_params, two.quantizable_params),
            linear_params=grow(one.linear_params, two.linear_params),
            conv1d_params=grow(one.conv1d_params, two.conv1d_params),
            lora_dims=grow_dims(one.lora_dims, two.lora_dims),
            expert_lora_dims=grow_dims(one.expert_lora_dims, two.expert_lora_dims),
            num_layers=n + _decoder_stack_layers(config),
        )

    @classmethod
    def from_model(cls, model) -> ModelShape:
        import torch.nn as nn

        config = model.config
        linear_types = _linear_types()
        head = model.get_output_embeddings()
        embeddings = model.get_input_embeddings()
        tied = head is not None and embeddings is not None and head.weight is embeddings.weight

        def n_elements(p) -> int:
            return p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)  # two 4-bit values per byte

        def in_out(module) -> tuple[int, int]:
            if hasattr(module, "in_features"):
                return module.in_features, module.out_features
            return module.nx, module.nf  # transformers' Conv1D

        params = sum(n_elements(p) for p in model.parameters())
        quantizable = largest = linear = conv1d = 0
        lora_dims: dict[str, int] = {}
        for name, module in model.named_modules():
            if isinstance(module, linear_types) and module is not head:
                fan_in, fan_out = in_out(module)
                if isinstance(module, nn.Linear):
                    linear += fan_in * fan_out
                elif type(module).__name__ == "Conv1D":
                    conv1d += fan_in * fan_out
                if _bnb_quantizes(module):
                    quantizable += fan_in * fan_out
                    largest = max(largest, fan_in * fan_out)
                leaf = name.rsplit(".", 1)[-1]
                lora_dims[leaf] = lora_dims.get(leaf, 0) + fan_in + fan_out

        expert_names = TARGET_PARAMETERS.get(config.model_type, [])
        expert_lora_dims: dict[str, int] = {}
        for name, p in model.named_parameters():
            for wanted in expert_names:
                if name.endswith(wanted) and p.dim() == 3:  # (experts, out, in)
                    n_experts, fan_out, fan_in = p.shape
                    expert_lora_dims[wanted] = expert_lora_dims.get(wanted, 0) + n_experts * (fan_in + fan_out)

        hidden = int(config.hidden_size)
        layers = _decoder_layers(model, int(config.num_hidden_layers))
        layer_linears: dict[str, tuple[int, int]] = {}
        expert_in = expert_out = top_k = 0
        if layers is not None:
            for name, module in layers[0].named_modules():
                if isinstance(module, linear_types):
                    fan_in, fan_out = in_out(module)
                    leaf = name.rsplit(".", 1)[-1]
                    old_in, old_out = layer_linears.get(leaf, (0, 0))
                    layer_linears[leaf] = (old_in + fan_in, old_out + fan_out)
            for p in layers[0].parameters():
                if p.dim() == 3:  # fused experts (experts, out, in)
                    expert_in += p.shape[2]
                    expert_out += p.shape[1]
            if expert_out:
                top_k = int(getattr(config, "num_experts_per_tok", 1) or 1)
        supports_sdpa = getattr(type(model), "_supports_sdpa", True)
        # transformers' NewGELUActivation (GPT-2, GPT-J, Phi-2) is a chain of elementwise ops in Python: besides its
        # input, autograd keeps ~3 more MLP-wide tensors (x^3, the tanh argument, the tanh) per token and layer.
        activation = getattr(config, "hidden_act", None) or getattr(config, "activation_function", None)
        mlp_width = max((fan_out for _, fan_out in layer_linears.values()), default=0)
        dropout = max(float(getattr(config, key, 0.0) or 0.0) for key in ("attn_pdrop", "attention_dropout"))
        return cls(
            model_type=config.model_type,
            params=int(params),
            quantizable_params=int(quantizable),
            linear_params=int(linear),
            untied_head_params=0 if (tied or head is None) else int(head.weight.numel()),
            largest_linear=int(largest),
            lora_dims=dict(sorted(lora_dims.items())),
            expert_lora_dims=expert_lora_dims,
            default_targets=tuple(default_target_modules(model)[0]),
            hidden_size=hidden,
            num_layers=int(config.num_hidden_layers) + _decoder_stack_layers(config),
            vocab_size=int(config.vocab_size),
            layer_linears=dict(sorted(layer_linears.items())),
            layer_experts=(int(expert_in), int(expert_out)),
            experts_per_token=top_k,
            eager_attention_heads=0 if supports_sdpa else int(config.num_attention_heads),
            attention_heads=int(getattr(config, "num_attention_heads", 0) or 0),
            attention_dropout=dropout,
            layer_extra_activations=3 * mlp_width if activation == "gelu_new" else 0,
            conv1d_params=int(conv1d),
        )


def _bnb_quantizes(module) -> bool:
    """Whether transformers' bitsandbytes integration turns this layer into 4-bit: only layers whose type is exactly
    nn.Linear, or GPT-2's Conv1D (integrations/bitsandbytes.py, replace_with_bnb_linear). Subclasses such as Falcon's
    FalconLinear stay in the compute dtype. Already-quantized layers (Linear4bit) count as quantized."""
    import torch.nn as nn

    name = type(module).__name__
    return type(module) is nn.Linear or name in ("Conv1D", "Linear4bit", "Linear8bitLt")


def _decoder_stack_layers(config) -> int:
    """An encoder-decoder's decoder layers (T5 num_decoder_layers, BART decoder_layers; num_hidden_layers counts the
    encoder's): the activation estimate counts both stacks, each layer like an encoder layer (the decoder's
    cross-attention makes it a little larger). 0 for decoder-only models."""
    if not getattr(config, "is_encoder_decoder", False):
        return 0
    return int(getattr(config, "num_decoder_layers", None) or getattr(config, "decoder_layers", None) or 0)


def _decoder_layers(model, n_layers: int):
    """The ModuleList of decoder blocks (the first list with one entry per layer)."""
    import torch.nn as nn

    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    return None


def _with_layers(config, n: int) -> str:
    """The config as JSON with only the first `n` decoder layers (per-layer lists such as `layer_types` cut too)."""
    import json

    layers = int(config.num_hidden_layers)
    data = json.loads(config.to_json_string(use_diff=False))
    for key, value in data.items():
        if isinstance(value, list) and len(value) == layers:
            data[key] = value[:n]
    key = next((k for k, v in getattr(config, "attribute_map", {}).items() if v and k == "num_hidden_layers"), None)
    data[config.attribute_map[key] if key else "num_hidden_layers"] = n
    return json.dumps(data, sort_keys=True)


@lru_cache(maxsize=256)
def _shape_from_config_json(config_json: str) -> ModelShape:
    import json
    import warnings

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    data = json.loads(config_json)
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            try:
                if getattr(config, "is_encoder_decoder", False):  # T5, BART (BART also has a decoder-only class)
                    from transformers import AutoModelForSeq2SeqLM

                    model = AutoModelForSeq2SeqLM.from_config(config)
                else:
                    model = AutoModelForCausalLM.from_config(config)
            except ValueError:
                # Encoders without a causal LM class (DistilBERT, DeBERTa-v2, ModernBERT) train only as classifiers:
                # their backbone is what LoRA adapts; the small head's parameters do not change the estimate.
                from transformers import AutoModel

                model = AutoModel.from_config(config)
    finally:
        hf_logging.set_verbosity(verbosity)
    return ModelShape.from_model(model)


@dataclass(frozen=True)
class TrainingSetup:
    """The choices of a training job that change its memory (the job spec's fields, see `from_spec`)."""

    method: Literal["lora", "qlora"] = "lora"
    batch_size: int = 1  # sequences per micro-batch
    seq_len: int = 512  # tokens per sequence (the spec's cutoff_len: the longest a batch can be)
    lora_r: int = 8
    target_modules: tuple[str, ...] | None = None  # None: the architecture's defaults
    lora_on_experts: bool = False  # also adapt fused MoE experts (PEFT target_parameters)
    gradient_checkpointing: bool = False
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"  # compute dtype
    device: Literal["cuda", "cpu"] = "cuda"
    double_quant: bool = True  # QLoRA only
    optimizer: str = "adamw"  # a key of OPTIMIZER_STATE_BYTES
    # training_config.distributed: how a multi-process run holds the model, its processes per machine and in all.
    strategy: Literal["none", "ddp", "fsdp"] = "none"
    nproc_per_node: int = 1
    world_size: int = 1

    def __post_init__(self):
        for name in ("batch_size", "seq_len", "lora_r"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        if self.method not in ("lora", "qlora"):
            raise ValueError(f"method must be 'lora' or 'qlora', not {self.method!r}")
        if self.precision not in _DTYPE_BYTES:
            raise ValueError(f"precision must be one of {sorted(_DTYPE_BYTES)}, not {self.precision!r}")
        if self.device not in FRAMEWORK_OVERHEAD_BYTES:
            raise ValueError(f"device must be 'cuda' or 'cpu', not {self.device!r}")
        if self.optimizer not in OPTIMIZER_STATE_BYTES:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_STATE_BYTES)}, not {self.optimizer!r}")
        if self.strategy not in ("none", "ddp", "fsdp"):
            raise ValueError(f"strategy must be 'none', 'ddp' or 'fsdp', not {self.strategy!r}")
        if not 1 <= self.nproc_per_node <= self.world_size or (self.strategy == "none" and self.world_size != 1):
            raise ValueError(
                f"nproc_per_node {self.nproc_per_node} and world_size {self.world_size} do not fit strategy "
                f"{self.strategy!r}: 1 <= nproc_per_node <= world_size, and world_size 1 without a strategy"
            )

    @classmethod
    def from_spec(cls, spec, *, device: str | None = None) -> TrainingSetup:
        """The setup a job spec asks for, on `device` (default: CUDA when present, else the CPU), with the
        precision and optimizer resolved as the training recipe resolves them."""
        p, d, t = spec.pretrainedmodel_config, spec.data_config, spec.training_config
        runtime = pick_runtime(t.precision, device)
        quantized = bool(p.use_quantization)
        optimizer = resolve_optimizer(t.optimizer, quantized=quantized, device_type=runtime.device.type)
        dist = t.distributed
        per_node = (
            (dist.nproc_per_node or default_nproc_per_node(runtime.device.type)) if dist.strategy != "none" else 1
        )
        per_node = max(per_node, 1)  # a CUDA spec estimated on a machine without GPUs: one process
        return cls(
            method="qlora" if quantized else "lora",
            # Preference tuning runs the chosen and the rejected sequence of each pair in one pass: twice the rows.
            batch_size=t.batch_size * (2 if t.preference else 1),
            seq_len=d.cutoff_len,
            lora_r=p.lora_r,
            target_modules=tuple(p.target_modules) if p.target_modules else None,
            lora_on_experts=not p.target_modules,  # models/lora.py adapts fused experts unless modules are given
            gradient_checkpointing=bool(p.use_gradient_checkpointing),
            precision=runtime.precision,
            device="cuda" if runtime.is_cuda else "cpu",
            double_quant=bool(p.double_quantization),
            optimizer=optimizer if optimizer in OPTIMIZER_STATE_BYTES else "adamw",
            strategy=dist.strategy,
            nproc_per_node=per_node,
            world_size=per_node * (dist.nnodes if dist.strategy != "none" else 1),
        )


# The smallest footprint any job could have: what a model must fit in to be trainable on a device at all.
MINIMAL_SETUP = TrainingSetup(method="qlora", batch_size=1, seq_len=256, lora_r=8, gradient_checkpointing=True)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per term; `total` is the estimated peak."""

    weights: int  # the frozen base model, as stored during training
    lora: int  # LoRA parameters
    gradients: int  # gradients of the LoRA parameters
    optimizer: int  # optimizer state
    activations: int  # tensors autograd keeps for the backward pass
    logits: int  # output-head logits and their gradient for one loss chunk
    workspace: int  # QLoRA: one weight dequantized to the compute dtype
    overhead: int  # CUDA context / interpreter and libraries
    loading: int  # peak while loading the weights (before training starts), without overhead
    trainable_params: int
    setup: TrainingSetup = field(compare=False)
    # Processes whose peaks add up in the device's memory: on the CPU every process of a multi-process run on this
    # machine (they share its memory), on CUDA one (each has its own GPU). The terms above are per process.
    processes_per_device: int = 1

    @property
    def training(self) -> int:
        return (
            self.weights
            + self.lora
            + self.gradients
            + self.optimizer
            + self.activations
            + self.logits
            + self.workspace
            + self.overhead
        )

    @property
    def per_process(self) -> int:
        return max(self.training, self.loading + self.overhead)

    @property
    def total(self) -> int:
        """The peak in the device's memory: one process's, times the processes that share the device."""
        return self.per_process * self.processes_per_device

    def to_dict(self) -> dict:
        terms = (
            "weights",
            "lora",
            "gradients",
            "optimizer",
            "activations",
            "logits",
            "workspace",
            "overhead",
            "loading",
        )
        return {
            "total_bytes": self.total,
            "total_gib": round(self.total / GiB, 2),
            "per_process_bytes": self.per_process,
            "processes_per_device": self.processes_per_device,
            "breakdown_bytes": {name: getattr(self, name) for name in terms},
            "trainable_params": self.trainable_params,
            "setup": dataclasses.asdict(self.setup),
        }

    def describe(self) -> str:
        """One line: total and the biggest terms, for error messages and logs."""
        terms = {
            "weights": self.weights,
            "activations": self.activations,
            "optimizer+gradients+LoRA": self.lora + self.gradients + self.optimizer,
            "logits": self.logits,
            "overhead": self.overhead,
        }
        parts = ", ".join(f"{name} {format_bytes(size)}" for name, size in terms.items() if size >= 0.05 * GiB)
        if self.processes_per_device > 1:
            return f"{format_bytes(self.total)} ({self.processes_per_device} processes of {format_bytes(self.per_process)}: {parts} each)"
        return f"{format_bytes(self.total)} ({parts})"


def format_bytes(n: int | float) -> str:
    return f"{n / GiB:.1f} GiB"


def estimate_training_memory(model: ModelShape, setup: TrainingSetup | None = None, **changes) -> MemoryEstimate:
    """Peak memory of LoRA or QLoRA training of `model` with `setup` (fields of TrainingSetup may be given as
    keywords instead: `estimate_training_memory(shape, method="qlora", batch_size=4)`)."""
    s = dataclasses.replace(setup or TrainingSetup(), **changes)
    compute = _DTYPE_BYTES[s.precision]
    on_cpu = s.device == "cpu"
    other = model.params - model.quantizable_params  # embeddings, norms, biases, the head, fused experts

    # -- weights (see the module docstring for why each part has the dtype it has)
    if s.method == "qlora":
        bits = NF4_BITS + NF4_CONSTANT_BITS[s.double_quant]
        weights = model.quantizable_params * bits / 8 + other * (QLORA_UNQUANTIZED_BYTES or compute)
        # transformers quantizes tensor by tensor while loading: no full-precision copy of the model exists.
        loading = weights
        workspace = model.largest_linear * compute
    elif on_cpu:
        # load_base_model: fp32 from_pretrained, then frozen nn.Linear weights (untied head included; not GPT-2's
        # Conv1D) -> compute dtype
        low = model.linear_params + model.untied_head_params
        weights = low * compute + (model.params - low) * 4
        loading = model.params * 4
        # Conv1D weights stay fp32, so autocast casts each to the compute dtype in every forward and autograd keeps
        # the copy for the backward pass: a compute-dtype copy of all of them during a step.
        workspace = model.conv1d_params * compute if compute != 4 else 0
    else:
        weights = model.params * compute
        loading = weights
        workspace = 0

    # -- LoRA (Hu et al. 2021, arXiv:2106.09685): r * (in + out) parameters per adapted m x n weight
    if s.strategy == "fsdp" and s.world_size > 1:
        weights = _fsdp_weights(model, s, weights, embedding_bytes=4 if (on_cpu and s.method == "lora") else compute)
        if not on_cpu:
            # The base is loaded into host memory and each GPU receives only its shard (train/recipe.py).
            loading = weights

    targets = s.target_modules or model.default_targets
    per_rank = sum(model.lora_dims.get(name, 0) for name in targets)
    if s.lora_on_experts:
        per_rank += sum(model.expert_lora_dims.values())  # PEFT target_parameters: one rank-r update per expert
    trainable = s.lora_r * per_rank
    lora = trainable * LORA_PARAM_BYTES
    gradients = trainable * LORA_PARAM_BYTES
    if s.world_size > 1:
        # The cross-process sum of the LoRA gradients goes through a second buffer of their size (DDP's gradient
        # buckets; FSDP: the flat buffer of train/distributed.Parallel.finish_backward). The LoRA weights, their
        # gradients and optimizer state are whole on every process under both strategies: never divided.
        gradients *= 2
    optimizer = trainable * OPTIMIZER_STATE_BYTES[s.optimizer]

    # -- activations: what autograd keeps for the backward pass, per token and decoder layer (measured layer by layer
    # with torch.autograd.graph.saved_tensors_hooks; tests/models/test_memory.py checks the total that way):
    # - each LoRA-adapted layer's input, once more: PEFT casts it for lora_A, and that copy is saved. The frozen base
    #   weights need no saved input (their weight gradient is never computed);
    # - every linear layer's output, consumed by attention (SDPA keeps q, k, v and its output), the MLP's activation
    #   and product, or the residual add;
    # - the inputs of the two norms, in the residual stream's dtype (fp32 on the CPU, where LoRA keeps the embeddings
    #   in fp32);
    # - Python-level activations (gelu_new) keep ~3 more MLP-wide tensors; attention dropout on the CPU keeps the
    #   (T x T) probabilities (see below).
    # Against saved-tensor measurements of 2-layer, 512-wide Llama, GPT-2 and Falcon blocks (LoRA bf16/fp32, QLoRA):
    # measured/estimated 0.72-1.25. This is the accounting of Korthikanti et al. 2022 (arXiv:2205.05198, sec. 4.1: ~34·s·b·h bytes per GPT layer in
    # 16-bit) for a frozen base, without dropout masks (tuneforge's default lora_dropout is 0) and, with SDPA, without
    # the (T x T) attention scores.
    tokens = s.batch_size * s.seq_len
    # Linear outputs are in the compute dtype (autocast, or bitsandbytes returning its bf16 input's dtype); the
    # residual stream is fp32 only for LoRA on the CPU, where load_base_model keeps embeddings and norms in fp32.
    output = 4 if s.precision == "fp32" else compute
    residual = 4 if (s.precision == "fp32" or (on_cpu and s.method == "lora")) else compute
    adapted = set(targets)
    per_token = sum(fan_in * compute for name, (fan_in, _) in model.layer_linears.items() if name in adapted)
    per_token += sum(fan_out for _, fan_out in model.layer_linears.values()) * output
    per_token += _NORM_INPUTS_PER_LAYER * model.hidden_size * residual
    expert_in, expert_out = model.layer_experts
    per_token += model.experts_per_token * (expert_out * output + (expert_in * compute if s.lora_on_experts else 0))
    per_token += model.layer_extra_activations * output
    per_layer = tokens * per_token
    # Eager attention (no SDPA, e.g. Gemma 2's soft-capping) keeps per head the fp32 softmax output and two
    # compute-dtype copies (the soft-capped scores, the probabilities cast back).
    per_layer += s.batch_size * model.eager_attention_heads * s.seq_len**2 * (4 + 2 * compute)
    if model.attention_dropout > 0 and on_cpu and not model.eager_attention_heads:
        # Attention dropout in training mode: the CPU's SDPA runs its math kernel, which keeps the fp32 attention
        # probabilities and the dropped-out copy (CUDA's flash/memory-efficient kernels regenerate the dropout mask).
        per_layer += s.batch_size * model.attention_heads * s.seq_len**2 * (4 + 4)
    if s.gradient_checkpointing:
        # Only each layer's input is kept, and one layer's activations are rebuilt at a time in backward (Chen et al.
        # 2016, arXiv:1604.06174).
        activations: float = tokens * model.num_layers * model.hidden_size * residual + per_layer
    else:
        activations = model.num_layers * per_layer
    if on_cpu:
        # Peak RSS is not live tensors: glibc's malloc keeps freed activation and gradient buffers mapped (its mmap
        # threshold grows with each large free), so the process holds about twice what autograd keeps alive.
        activations *= CPU_ALLOCATOR_FACTOR

    # -- logits. train/loss.py runs the head on target positions only, chunk_tokens_for(vocab) positions at a
    # time, and recomputes each chunk in backward: one chunk's logits live at once. Its peak is in backward:
    # cross-entropy's fp32 log-softmax
    # (kept from the recomputed forward), the fp32 gradients of the log-softmax and of the logits, and the gradient of
    # the head output in the compute dtype. Architectures outside FAST_PATH_TYPES use the model's own forward: every
    # position's logits at once.
    positions = min(tokens, chunk_tokens_for(model.vocab_size)) if model.model_type in FAST_PATH_TYPES else tokens
    logits = positions * model.vocab_size * (4 + 4 + 4 + compute)

    return MemoryEstimate(
        weights=int(weights),
        lora=int(lora),
        gradients=int(gradients),
        optimizer=int(optimizer),
        activations=int(activations),
        logits=int(logits),
        workspace=int(workspace),
        overhead=FRAMEWORK_OVERHEAD_BYTES[s.device],
        loading=int(loading),
        trainable_params=int(trainable),
        setup=s,
        processes_per_device=s.nproc_per_node if on_cpu else 1,
    )


# How many decoder blocks FSDP2 holds gathered at once: the one computing and the next, whose all-gather is
# prefetched to overlap with it (forward and backward alike).
FSDP_GATHERED_BLOCKS = 2


def _fsdp_weights(model: ModelShape, s: TrainingSetup, weights: float, *, embedding_bytes: int) -> float:
    """One process's share of the base under FSDP (train/distributed.py): its 1/world_size shard of every weight,
    plus, gathered whole while they compute, the root unit (embeddings, output head, final norm; for the whole
    forward and again for the backward) and FSDP_GATHERED_BLOCKS decoder blocks. 4-bit quantization constants are
    not sharded: every process holds all of them, beside the layer they belong to."""
    constants = model.quantizable_params * NF4_CONSTANT_BITS[s.double_quant] / 8 if s.method == "qlora" else 0.0
    sharded = weights - constants
    compute = _DTYPE_BYTES[s.precision]
    root = model.vocab_size * model.hidden_size * embedding_bytes + model.untied_head_params * compute
    block = max(sharded - root, 0.0) / max(model.num_layers, 1)
    gathered = root + min(FSDP_GATHERED_BLOCKS, model.num_layers) * block
    # The all-gather output is a buffer of its own: the process's shard stays allocated beside it.
    return sharded / s.world_size + gathered + constants


def device_memory(device: str | None = None) -> tuple[int, str]:
    """(bytes available for training, what was measured): total memory of the CUDA device, or the system memory
    available now (MemAvailable) on the CPU."""
    import torch

    dev = torch.device(default_device(device))
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return int(props.total_memory), f"total memory of CUDA device {index} ({props.name})"
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available system memory"
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "available system memory"
