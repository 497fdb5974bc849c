"""Facts about how train/loss.py computes the loss, which the memory estimate needs too (so they live below both).

`FAST_PATH_TYPES`: architectures whose output head is a plain linear layer (plus Gemma 2's final soft-capping),
verified to give identical losses when the head runs only on target positions (tests/models/test_architectures.py).
Others fall back to the model's own forward, which makes every position's logits at once.
"""

from __future__ import annotations

FAST_PATH_TYPES = {
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "phi3",
    "gemma",
    "gemma2",
    "stablelm",
    "gpt2",
    "opt",
    "gptj",
    "gpt_neox",
    "falcon",
    "phi",
    "starcoder2",
}

# Logits computed at once: 2^25 elements (128 MiB in fp32), i.e. 682 positions of SmolLM2's 49,152-token vocabulary
# or 261 of Llama 3's 128,256. Sized by elements, not positions, so large vocabularies get smaller chunks.
CHUNK_LOGITS = 1 << 25


def chunk_tokens_for(vocab_size: int) -> int:
    """Target positions whose logits the loss computes at once (one chunk, recomputed in backward)."""
    return max(1, CHUNK_LOGITS // vocab_size)
