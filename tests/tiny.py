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

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: what is two plus two? Answer: four.",
    "### Instruction: translate to French ### Response: bonjour le monde",
    "Convert the date 2024-01-31 to ISO format. 0123456789 {}[]\":,.-_/",
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


def build_model(arch: str = "llama", vocab_size: int = 400, seed: int = 0):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    common = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    if arch == "llama":
        config = AutoConfig.for_model(
            "llama", intermediate_size=128, num_key_value_heads=2, max_position_embeddings=1024,
            tie_word_embeddings=True, pad_token_id=0, eos_token_id=2, bos_token_id=None, **common,
            # Large enough that the tied output head can express confident predictions: with the default
            # 0.02, the final RMSNorm bounds every logit below ~1.3 and no adapter can lower the loss much.
            initializer_range=0.2,
        )
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def save_tiny(folder: Path, arch: str = "llama") -> Path:
    tok = build_tokenizer()
    model = build_model(arch, vocab_size=len(tok))
    model.config.eos_token_id = tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
