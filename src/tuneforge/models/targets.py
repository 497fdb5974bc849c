"""Which modules get LoRA adapters.

Default: the attention and MLP projections (QLoRA paper, Dettmers et al. 2023, sec. 4: adapters on all linear layers
are needed to match full fine-tuning). Known architectures use their module names (keys: transformers `model_type`);
any other architecture is inspected, and every linear layer except the output head is chosen.

Mixture-of-experts models in transformers 5 (Mixtral, Qwen3-MoE) keep their experts as fused 3-D parameters
(`mlp.experts.gate_up_proj` of shape (experts, 2 x intermediate, hidden) and `mlp.experts.down_proj`), not as
nn.Linear layers, so `target_modules` can only reach their attention projections (the router is a plain parameter
too). PEFT >= 0.17 adapts such parameters with `LoraConfig(target_parameters=...)` (one rank-r update per expert,
lora_A (r*E, in), lora_B (out, r*E)); `TARGET_PARAMETERS` lists them per architecture, and
tests/models/test_architectures.py trains, round-trips and merges them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
_NEOX_LIKE = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]

TARGET_MODULES: dict[str, list[str]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "stablelm": _LLAMA_LIKE,
    "mixtral": _ATTENTION,  # + TARGET_PARAMETERS for the experts
    "qwen3_moe": _ATTENTION,  # + TARGET_PARAMETERS for the experts
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],  # fused q/k/v and gate/up projections
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "starcoder2": ["q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],  # transformers' Conv1D (a linear layer with a transposed weight)
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],  # not OPT-350m's project_in/out
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"],
    "gpt_neox": _NEOX_LIKE,
    "falcon": _NEOX_LIKE,
}

_BERT_LIKE = ["query", "key", "value", "dense"]  # attention q/k/v, attention output, intermediate and output dense

# Encoders' attention and MLP projections by transformers model_type (decoders: targets.TARGET_MODULES).
ENCODER_TARGET_MODULES: dict[str, list[str]] = {
    "bert": _BERT_LIKE,  # also MiniLM (all-MiniLM-L6-v2 is a BertModel)
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],  # DeBERTa v2 and v3
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "modernbert": ["Wqkv", "Wo", "Wi"],  # fused q/k/v and gated MLP input
}

_BART_LIKE = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]  # self- and cross-attention, the MLP

# Encoder-decoders (data_config.task seq2seq) by model_type: the self- and cross-attention projections and the MLP of
# both stacks. T5's MLP input is `wi`, or `wi_0`/`wi_1` in the gated-GELU variants (T5 v1.1, Flan-T5, mT5): see
# seq2seq_target_modules.
SEQ2SEQ_TARGET_MODULES: dict[str, list[str]] = {
    "t5": ["q", "k", "v", "o", "wi", "wo"],
    "mt5": ["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
    "umt5": ["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
    "bart": _BART_LIKE,
    "mbart": _BART_LIKE,
    "pegasus": _BART_LIKE,
    "marian": _BART_LIKE,
}


def seq2seq_target_modules(model_type: str, *, gated: bool) -> list[str]:
    """SEQ2SEQ_TARGET_MODULES[model_type], with T5's gated MLP input (`is_gated_act`) named as it is."""
    names = list(SEQ2SEQ_TARGET_MODULES[model_type])
    if gated and "wi" in names:
        names[names.index("wi") : names.index("wi") + 1] = ["wi_0", "wi_1"]
    return names


# Vision backbones for image classification by transformers model_type. The ViT/DeiT `query,value` are the
# attention's query and value projections (LoRA paper sec. 7.1: W_q and W_v), which transformers 5 names q_proj/v_proj.
# ConvNeXt: the pointwise (1x1, nn.Linear) convolutions of each block's MLP. ResNet: every Conv2d (its `convolution`
# layers: stem, bottleneck/basic blocks and shortcuts); PEFT's LoRA for Conv2d is a k x k conv down to r channels
# followed by a 1x1 conv back up.
IMAGE_TARGET_MODULES: dict[str, list[str]] = {
    "vit": ["q_proj", "v_proj"],
    "deit": ["q_proj", "v_proj"],
    "convnext": ["pwconv1", "pwconv2"],
    "resnet": ["convolution"],
}


# Fused 3-D expert weights, as PEFT `target_parameters` names (suffixes of the parameter names).
TARGET_PARAMETERS: dict[str, list[str]] = {
    "mixtral": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
    "qwen3_moe": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
}


def _linear_types() -> tuple[type, ...]:
    import torch.nn as nn

    types: tuple[type, ...] = (nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D

        types += (Conv1D,)
    except ImportError:
        pass
    return types


def inspect_linear_modules(model) -> list[str]:
    """Leaf names of every linear layer (nn.Linear, bitsandbytes 4-bit, GPT-2's Conv1D) except the output head."""
    linear_types = _linear_types()
    head = model.get_output_embeddings()
    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, linear_types) and module is not head:
            names.add(full_name.rsplit(".", 1)[-1])
    return sorted(names)


def missing_target_modules(model, targets: list[str]) -> list[str]:
    """The entries of `targets` that name no module of `model` (PEFT matches a target on the leaf name)."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [t for t in targets if t not in present]


def skeleton_model(config: PretrainedConfig) -> PreTrainedModel:
    """The model of `config` on the meta device (no memory, no weights): its module names, in a second or less.
    Layers repeat their names, so two are enough."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = copy.deepcopy(config)
    if getattr(config, "num_hidden_layers", None):
        config.num_hidden_layers = min(config.num_hidden_layers, 2)
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config)


def default_target_modules(model) -> tuple[list[str], str]:
    """(module names, how they were chosen) for a loaded model."""
    model_type = getattr(model.config, "model_type", "")
    if model_type in SEQ2SEQ_TARGET_MODULES:
        gated = bool(getattr(model.config, "is_gated_act", False))
        return seq2seq_target_modules(model_type, gated=gated), (
            f"the {model_type} self- and cross-attention and MLP projections of the encoder and the decoder"
        )
    if model_type in ENCODER_TARGET_MODULES:
        return list(ENCODER_TARGET_MODULES[model_type]), f"the {model_type} attention and MLP projections"
    if model_type in TARGET_MODULES:
        if model_type in TARGET_PARAMETERS:
            return list(TARGET_MODULES[model_type]), (
                f"the {model_type} attention projections; its experts are fused 3-D weights, not linear layers "
                f"(PEFT target_parameters: {', '.join(TARGET_PARAMETERS[model_type])})"
            )
        return list(TARGET_MODULES[model_type]), f"the {model_type} attention and MLP projections"
    names = inspect_linear_modules(model)
    return names, f"every linear layer except the output head (architecture {model_type!r} found by inspection)"


def default_target_parameters(model) -> list[str]:
    """PEFT `target_parameters` for the model's fused expert weights ([] for dense models), checked against the
    model's actual parameter names."""
    wanted = TARGET_PARAMETERS.get(getattr(model.config, "model_type", ""), [])
    names = [name for name, _ in model.named_parameters()]
    return [w for w in wanted if any(n == w or n.endswith("." + w) for n in names)]
