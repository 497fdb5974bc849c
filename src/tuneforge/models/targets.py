"""Which modules get LoRA adapters.

Default: the attention and MLP projections (QLoRA paper, sec. 4: adapters on all linear layers are needed to
match full fine-tuning). Known architectures use their module names; any other architecture is inspected, and
every linear layer except the output head is chosen.
"""

from __future__ import annotations

_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

TARGET_MODULES: dict[str, list[str]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "stablelm": _LLAMA_LIKE,
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}


def inspect_linear_modules(model) -> list[str]:
    """Leaf names of every linear layer (nn.Linear, bitsandbytes 4-bit, GPT-2's Conv1D) except the output head."""
    import torch.nn as nn

    linear_types: tuple[type, ...] = (nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D

        linear_types += (Conv1D,)
    except ImportError:
        pass
    head = model.get_output_embeddings()
    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, linear_types) and module is not head:
            names.add(full_name.rsplit(".", 1)[-1])
    return sorted(names)


def default_target_modules(model) -> tuple[list[str], str]:
    """(module names, how they were chosen) for a loaded model."""
    model_type = getattr(model.config, "model_type", "")
    if model_type in TARGET_MODULES:
        return list(TARGET_MODULES[model_type]), f"the {model_type} attention and MLP projections"
    names = inspect_linear_modules(model)
    return names, f"every linear layer except the output head (architecture {model_type!r} found by inspection)"
