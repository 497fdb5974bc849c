"""Tiny, offline, deterministic models and tokenizers for unit tests (2 layers, 64 wide).

Built from transformers config classes with random weights, never downloaded. The tokenizer is a byte-level
BPE trained in milliseconds on a fixed corpus, with a ChatML chat template like SmolLM2's.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The same ChatML with tool calling as Hermes / Qwen2.5 render it: the tools' JSON in the system turn, calls as
# <tool_call>{"name": ..., "arguments": ...}</tool_call>, tool results as <tool_response> user turns.
CHATML_TOOLS = (
    "{%- if tools %}{{ '<|im_start|>system\n' }}{% if messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] + '\n\n' }}{% endif %}{{ '# Tools\n<tools>' }}{% for tool in tools %}"
    "{{ '\n' + (tool | tojson) }}{% endfor %}"
    '{{ \'\n</tools>\nCall a tool as <tool_call>{"name": ..., "arguments": ...}</tool_call><|im_end|>\n\' }}'
    "{%- elif messages[0]['role'] == 'system' %}{{ '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') %}{{ '<|im_start|>assistant\n' }}"
    "{%- for call in message['tool_calls'] %}{{ '<tool_call>\n' }}"
    "{{ {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson }}"
    "{{ '\n</tool_call>' }}{%- endfor %}{{ '<|im_end|>\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\n<tool_response>\n' + message['content'] + '\n</tool_response><|im_end|>\n' }}"
    "{%- else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: what is two plus two? Answer: four.",
    "### Instruction: translate to French ### Response: bonjour le monde",
    'Convert the date 2024-01-31 to ISO format. 0123456789 {}[]":,.-_/',
    "def add(a, b):\n    return a + b\n",
] * 20


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None, unk_token=None
    )
    fast.chat_template = CHATML
    return fast


# Per-architecture config kwargs for tiny random models (2 layers, 64 wide, 4 heads), in each config class's own
# field names. `initializer_range` 0.2: large enough that the (often tied) output head can express confident
# predictions — with the default 0.02 the final norm bounds every logit near 1 and no adapter can lower the loss
# much. Keys are transformers `model_type`s, except variants named `<model_type>:<variant>`.
_ATTN = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, initializer_range=0.2)
_LLAMA_STYLE = dict(_ATTN, intermediate_size=128, num_key_value_heads=2, max_position_embeddings=1024)
TINY_CONFIGS: dict[str, dict] = {
    "llama": dict(_LLAMA_STYLE, tie_word_embeddings=True),
    "mistral": dict(_LLAMA_STYLE, sliding_window=None),
    # MoE: experts are fused 3-D parameters in transformers 5 (MixtralExperts.gate_up_proj / down_proj).
    "mixtral": dict(_LLAMA_STYLE, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=True),
    "qwen2": dict(_LLAMA_STYLE, tie_word_embeddings=True),
    "qwen3": dict(_LLAMA_STYLE, head_dim=16, tie_word_embeddings=True),
    "phi3": dict(_LLAMA_STYLE, num_key_value_heads=4),
    "gemma": dict(_LLAMA_STYLE, head_dim=16, num_key_value_heads=1),
    "gemma2": dict(
        _LLAMA_STYLE,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=16,
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
    ),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=1024, initializer_range=0.2),
    "opt": dict(_ATTN, ffn_dim=128, word_embed_proj_dim=64, max_position_embeddings=1024, init_std=0.2),
    # OPT-350m projects 512-wide embeddings to the 1024-wide decoder and normalises after each block.
    "opt:project": dict(
        _ATTN,
        ffn_dim=128,
        word_embed_proj_dim=32,
        max_position_embeddings=1024,
        init_std=0.2,
        do_layer_norm_before=False,
    ),
    "gptj": dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=1024, initializer_range=0.2),
    "gpt_neox": dict(_ATTN, intermediate_size=128, rotary_pct=0.25, max_position_embeddings=1024),
    # Falcon-7B: multi-query attention and parallel attention/MLP ...
    "falcon": dict(_ATTN, multi_query=True, parallel_attn=True, new_decoder_architecture=False, bias=False),
    # ... Falcon-40B: grouped-query attention with two layer norms per block (the "new decoder architecture").
    "falcon:new_decoder": dict(_ATTN, new_decoder_architecture=True, num_kv_heads=2, bias=False),
    "stablelm": dict(_LLAMA_STYLE, num_key_value_heads=4, partial_rotary_factor=0.25),
    "phi": dict(_ATTN, intermediate_size=128, partial_rotary_factor=0.5, max_position_embeddings=1024),
    "starcoder2": dict(_LLAMA_STYLE, sliding_window=None),
    "qwen3_moe": dict(
        _LLAMA_STYLE,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        tie_word_embeddings=True,
    ),
    # Not in the catalog: proves that an architecture tuneforge has no entry for trains with inspected targets.
    "bloom": dict(hidden_size=64, n_layer=2, n_head=4, initializer_range=0.2),
}


def tiny_architectures() -> list[str]:
    return list(TINY_CONFIGS)


def tiny_config(arch: str = "llama", vocab_size: int = 400):
    from transformers import AutoConfig

    if arch not in TINY_CONFIGS:
        raise ValueError(arch)
    model_type = arch.split(":")[0]
    # Token ids of build_tokenizer(): 0 <|endoftext|> (padding), 2 <|im_end|> (end of sequence).
    return AutoConfig.for_model(
        model_type, vocab_size=vocab_size, pad_token_id=0, eos_token_id=2, bos_token_id=None, **TINY_CONFIGS[arch]
    )


def build_model(arch: str = "llama", vocab_size: int = 400, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, vocab_size)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def save_tiny(folder: Path, arch: str = "llama", *, chat_template: str | None = None) -> Path:
    tok = build_tokenizer()
    if chat_template is not None:
        tok.chat_template = chat_template
    model = build_model(arch, vocab_size=len(tok))
    model.config.eos_token_id = tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_qa_data(path: Path, n: int = 80) -> Path:
    """A learnable task for tiny runs: the completion is a fixed function of the question."""
    import json
    import random

    rng = random.Random(0)
    with open(path, "w") as fh:
        for _ in range(n):
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            fh.write(json.dumps({"question": f"what is {a} plus {b}?", "answer": f"{a + b}"}) + "\n")
    return path


def make_tiny_spec(model_dir, data, **training):
    """A job spec for a seconds-long run on the tiny model; `p={...}` adds pretrainedmodel_config fields."""
    from tuneforge.spec import parse_spec

    t = {"max_steps": 12, "batch_size": 8, "learning_rate": 3e-3, "eval_steps": 4, "precision": "fp32", **training}
    extra_p = t.pop("p", {})
    return parse_spec(
        {
            "pretrainedmodel_config": {"model_path": str(model_dir), "lora_r": 4, **extra_p},
            "data_config": {
                "data_path": str(data),
                "prompt_template": "Question: {question}\nAnswer: {answer}",
                "cutoff_len": 64,
                "data_split_config": {"train": 0.8, "validation": 0.2},
            },
            "training_config": t,
        }
    )


# Sequence classification (data_config.task: classification): encoders, and decoders with a score head. Keys are
# transformers model_types; decoders reuse TINY_CONFIGS.
# Dropout off: the tests compare losses before and after a few steps on one batch.
_ENCODER = dict(
    _ATTN, intermediate_size=128, max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
)
TINY_CLASSIFIER_CONFIGS: dict[str, dict] = {
    "bert": _ENCODER,
    "roberta": dict(_ENCODER, max_position_embeddings=130),  # RoBERTa's positions start after the padding id
    "deberta-v2": dict(
        _ENCODER, relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=64, position_buckets=32
    ),
    "distilbert": dict(
        dim=64,
        n_layers=2,
        n_heads=4,
        hidden_dim=128,
        max_position_embeddings=128,
        initializer_range=0.2,
        dropout=0.0,
        attention_dropout=0.0,
        seq_classif_dropout=0.0,
    ),
    "modernbert": dict(
        _ATTN, intermediate_size=128, max_position_embeddings=128, global_attn_every_n_layers=2, local_attention=16
    ),
    "llama": TINY_CONFIGS["llama"],
    "qwen2": TINY_CONFIGS["qwen2"],
    "mistral": TINY_CONFIGS["mistral"],
}


def save_tiny_classifier_base(folder: Path, arch: str = "bert") -> Path:
    """A tiny pretrained-looking checkpoint without a classification head, as hub models ship: the encoder's bare
    backbone (AutoModel) or the decoder's causal LM; the head is created when tuneforge loads it for a task."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    tok = build_tokenizer()
    model_type = arch
    special = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    if arch in TINY_CONFIGS:
        config = AutoConfig.for_model(model_type, vocab_size=len(tok), **special, **TINY_CLASSIFIER_CONFIGS[arch])
        auto = AutoModelForCausalLM
    else:
        extra = {"cls_token_id": 1, "sep_token_id": 2} if arch == "modernbert" else {}
        config = AutoConfig.for_model(
            model_type, vocab_size=len(tok), **special, **extra, **TINY_CLASSIFIER_CONFIGS[arch]
        )
        auto = AutoModel
    torch.manual_seed(0)
    auto.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_class_data(path: Path, n: int = 96, labels: tuple = ("negative", "positive", "neutral")) -> Path:
    """A learnable classification set: the label is named by a keyword in the text (JSON Lines, text/label)."""
    import json
    import random

    rng = random.Random(0)
    words = {"negative": "bad", "positive": "good", "neutral": "date"}
    with open(path, "w") as fh:
        for i in range(n):
            label = labels[i % len(labels)]
            word = words.get(str(label), f"k{label}")
            filler = " ".join(
                rng.choice(["the", "fox", "dog", "over", "lazy", "quick"]) for _ in range(rng.randint(2, 6))
            )
            fh.write(json.dumps({"text": f"{filler} {word} {filler}", "label": label}) + "\n")
    return path


# Encoder-decoders (data_config.task: seq2seq), in each config class's own field names; dropout off (the tests
# compare outputs before and after training and merging).
TINY_SEQ2SEQ_CONFIGS: dict[str, dict] = {
    "t5": dict(
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        dropout_rate=0.0,
        relative_attention_num_buckets=8,
        initializer_factor=1.0,
    ),
    # Flan-T5 / T5 v1.1: gated-GELU MLP (wi_0, wi_1), untied LM head
    "t5:gated": dict(
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        dropout_rate=0.0,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    ),
    "bart": dict(
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=128,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        init_std=0.2,
        forced_eos_token_id=None,
    ),
}


def save_tiny_seq2seq(folder: Path, arch: str = "t5") -> Path:
    """A tiny random encoder-decoder with build_tokenizer()'s vocabulary: padding 0, end of sequence 2; T5 starts
    the decoder with the padding id, BART with the end-of-sequence id, as the real checkpoints do."""
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    tok = build_tokenizer()
    model_type = arch.split(":")[0]
    start = tok.pad_token_id if model_type == "t5" else tok.eos_token_id
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=start,
        **({"bos_token_id": tok.eos_token_id} if model_type == "bart" else {}),
        **TINY_SEQ2SEQ_CONFIGS[arch],
    )
    torch.manual_seed(0)
    AutoModelForSeq2SeqLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_seq2seq_data(path: Path, n: int = 96) -> Path:
    """A learnable seq2seq set: the target is the source's words reversed (JSON Lines, source/target)."""
    import json
    import random

    rng = random.Random(0)
    words = ["fox", "dog", "quick", "lazy", "over", "the"]
    with open(path, "w") as fh:
        for _ in range(n):
            seq = [rng.choice(words) for _ in range(rng.randint(2, 4))]
            fh.write(json.dumps({"source": "reverse: " + " ".join(seq), "target": " ".join(reversed(seq))}) + "\n")
    return path
