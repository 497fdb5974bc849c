"""Load a base model for LoRA or QLoRA training, and wrap it with a PEFT LoRA adapter.

LoRA (Hu et al. 2021, arXiv:2106.09685): the frozen weight W (m x n) gets a trainable update (alpha/r)·B·A with
B (m x r) zero-initialised and A (r x n), so r·(m+n) parameters train instead of m·n.
QLoRA (Dettmers et al. 2023, arXiv:2305.14314): W is stored in 4-bit NormalFloat, its quantization constants
quantized again (double quantization), and dequantized to the compute dtype for each matmul.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..errors import TuneforgeError
from ..runtime import Runtime
from .loader import ResolvedModel, quiet_transformers, transformers_warnings_off
from .targets import default_target_modules, default_target_parameters, inspect_linear_modules, missing_target_modules


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    bias: Literal["none", "all", "lora_only"] = "none"
    target_modules: list[str] | None = None


@dataclass(frozen=True)
class QuantSettings:
    quant_type: str = "nf4"
    double_quant: bool = True
    # The dtype the packed 4-bit weights are stored as (two 4-bit values per byte, viewed as this dtype): uint8 by
    # default; FSDP sets it to the compute dtype so the packed weights can be sharded like the base's other
    # weights (bitsandbytes' FSDP-QLoRA guide).
    storage_dtype: torch.dtype = torch.uint8


def _bnb_config(quant: QuantSettings, compute_dtype: torch.dtype):
    try:
        import bitsandbytes  # noqa: F401  (fail here with a clear message, not deep inside transformers)
    except ImportError:
        raise TuneforgeError(
            "pretrainedmodel_config.use_quantization needs the bitsandbytes package: pip install bitsandbytes",
            field="pretrainedmodel_config.use_quantization",
            value=True,
        ) from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=quant.storage_dtype,
    )


def load_base_model(
    resolved: ResolvedModel,
    runtime: Runtime,
    *,
    quant: QuantSettings | None = None,
    hf_token: str | None = None,
    for_training: bool = True,
    labels: list[str] | None = None,
    pad_token_id: int | None = None,
    vision: bool = False,
    seq2seq: bool = False,
):
    """The frozen base model on the runtime's device: a causal LM, or with `labels` a sequence classifier with a new
    head of len(labels) outputs (models/classifier.py; `pad_token_id` lets a decoder find each row's last token), or
    with `vision` too an image classifier whose hub head (ImageNet's 1000 classes) is replaced by a new one, or with
    `seq2seq` an encoder-decoder with its LM head (models/seq2seq.py).

    Without quantization on the CPU, embeddings and norms stay fp32 (so the residual stream keeps fp32 precision)
    while the frozen linear weights are stored in the compute dtype: under autocast they would be cast to it for
    every matmul anyway, so storing them that way halves their memory and removes the per-step cast. On CUDA the
    whole base is loaded in the compute dtype, as is usual.
    """
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
    )

    quiet_transformers()
    kwargs: dict = {"token": hf_token}
    auto: Any = AutoModelForCausalLM
    if labels is not None:
        from .classifier import label_maps

        auto = AutoModelForImageClassification if vision else AutoModelForSequenceClassification
        id2label, label2id = label_maps(labels)
        kwargs.update(num_labels=len(labels), id2label=id2label, label2id=label2id)
        if vision:  # the checkpoint's head has its own class count: a new head of len(labels) replaces it
            kwargs["ignore_mismatched_sizes"] = True
        if pad_token_id is not None and not vision:
            kwargs["pad_token_id"] = pad_token_id
    elif seq2seq:
        auto = AutoModelForSeq2SeqLM
    if quant is not None:
        kwargs["quantization_config"] = _bnb_config(quant, runtime.compute_dtype)
        kwargs["device_map"] = {"": runtime.device}
        # The layers bitsandbytes leaves unquantized (embeddings, norms, output head) are stored in the compute
        # dtype: in fp32 they would outweigh the 4-bit body on small models (SmolLM2's embedding is 21% of it).
        kwargs["dtype"] = runtime.compute_dtype
    else:
        kwargs["dtype"] = runtime.compute_dtype if runtime.is_cuda else torch.float32
    try:
        # Replacing an image checkpoint's ImageNet head is the point (the recipe's log line names the new head): not
        # worth transformers' size-mismatch table.
        with transformers_warnings_off() if vision else nullcontext():
            model = auto.from_pretrained(resolved.load_from, **kwargs)
    except OSError as exc:
        raise TuneforgeError(
            f"pretrainedmodel_config.model_path: could not load {resolved.model_id!r}: {exc}"
        ) from None
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "model type" in str(exc):
            kind = (
                "an image classifier"
                if vision
                else "a sequence classifier"
                if labels is not None
                else "an encoder-decoder (seq2seq) model"
                if seq2seq
                else "a causal language model"
            )
            raise TuneforgeError(
                f"pretrainedmodel_config.model_path: {resolved.model_id!r} is not {kind} that transformers knows: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        raise
    if quant is not None and runtime.device.type == "cpu":
        # bitsandbytes repacks 4-bit weights into an inference-only CPU format the first time a layer runs in
        # eval mode without gradients (e.g. the recipe's step-0 evaluation); that format has no backward, so every
        # later step would lose the gradients through the frozen layers. Keep the trainable format.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    if quant is None:
        model.to(runtime.device)
        if not runtime.is_cuda and runtime.compute_dtype != torch.float32:
            _linear_weights_to(model, runtime.compute_dtype)
    model.config.use_cache = not for_training
    for p in model.parameters():
        p.requires_grad_(False)
    if labels is not None:
        # The new head (and a decoder's score layer) starts fp32 whatever the base's dtype: it trains fully.
        from .classifier import head_modules

        for name in head_modules(model):
            getattr(model, name).float()
    return model


def _linear_weights_to(model, dtype: torch.dtype) -> None:
    try:
        tied = model.get_input_embeddings().weight
    except (NotImplementedError, AttributeError):  # vision models: a conv stem or patch projection, nothing tied
        tied = None
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight is not tied:
            module.to(dtype)


def apply_lora(
    model,
    lora: LoraSettings,
    *,
    model_id: str,
    quantized: bool,
    gradient_checkpointing: bool,
    seed: int,
    classification: bool = False,
    vision: bool = False,
    seq2seq: bool = False,
):
    """Wrap `model` with a fresh LoRA adapter; returns (peft_model, target_modules, how they were chosen).
    `classification`: a sequence classifier (models/classifier.py): LoRA inside the backbone, the head trained fully;
    with `vision`, an image classifier (the same, without PEFT's text task type).
    `seq2seq`: an encoder-decoder (models/seq2seq.py): LoRA in both stacks, saved as a SEQ_2_SEQ_LM adapter."""
    from peft import LoraConfig, get_peft_model

    if lora.target_modules:
        targets, how = list(lora.target_modules), "given in the spec"
        missing = missing_target_modules(model, targets)
        if missing:
            raise TuneforgeError(
                f"pretrainedmodel_config.target_modules: {missing} not found in {model_id!r}; its linear layers are "
                f"{inspect_linear_modules(model)}",
                field="pretrainedmodel_config.target_modules",
                value=missing,
            )
    elif classification or vision:
        from .classifier import backbone_targets

        targets, how = backbone_targets(model, None)
    else:
        targets, how = default_target_modules(model)
    # Mixture-of-experts models whose experts are fused 3-D weights (Mixtral, Qwen3-MoE in transformers 5) have no
    # per-expert nn.Linear; PEFT adapts those weights through `target_parameters`.
    target_parameters = default_target_parameters(model) if not lora.target_modules else []
    if target_parameters:
        how += f", plus the experts' weights {', '.join(target_parameters)}"
    if quantized and model.get_input_embeddings().weight.dtype == torch.float16:
        # fp16 norms can overflow; peft's prepare_model_for_kbit_training upcasts them (and, needlessly, the
        # embeddings too). In bf16 the norms stay as they are: they compute their statistics in fp32 internally, and
        # bf16 outputs keep the 4-bit layers' outputs and the residual stream in bf16 (half the activation memory).
        for module in model.modules():
            if "norm" in type(module).__name__.lower():
                module.to(torch.float32)
    if gradient_checkpointing and not model.supports_gradient_checkpointing:
        # e.g. ResNet and ConvNeXt in transformers: their activations are small next to a transformer's anyway
        how += "; no gradient checkpointing (the architecture does not support it)"
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not vision:  # non-reentrant checkpointing needs no grad on the inputs; vision stems are not embeddings
            model.enable_input_require_grads()
    task_kwargs: dict[str, Any] = {"target_modules": targets, "task_type": "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM"}
    if classification or vision:
        from .classifier import backbone_target_regex, head_modules

        heads = head_modules(model)
        task_kwargs = {
            "target_modules": backbone_target_regex(model, targets),
            # PEFT's SEQ_CLS model passes input_ids; an image classifier takes pixel_values: the plain PeftModel (as
            # PEFT's image-classification guide does), which forwards every keyword to the base.
            "task_type": None if vision else "SEQ_CLS",
            "modules_to_save": heads,
        }
        how += f"; the new head ({', '.join(heads)}) trains fully"
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        bias=lora.bias,
        target_parameters=target_parameters or None,
        **task_kwargs,
    )
    torch.manual_seed(seed)  # LoRA's A matrices are randomly initialised
    peft_model = get_peft_model(model, config)
    # Record the id the user named, not a cache path, so the adapter loads on any machine that has the base.
    peft_model.peft_config["default"].base_model_name_or_path = model_id
    return peft_model, targets, how


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit packed weights count as the parameters they represent."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2 * p.element_size()  # two 4-bit values per byte of the storage dtype (uint8, or FSDP's float)
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def weight_bytes(model) -> int:
    """Bytes held by parameters and buffers; 4-bit weights count their packed bytes plus quantization constants."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() in seen:
            continue  # tied weights are stored once
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
        state = getattr(t, "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
            if getattr(state, "state2", None) is not None:
                total += state.state2.absmax.numel() * state.state2.absmax.element_size()
    return total
