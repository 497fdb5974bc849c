"""tuneforge: self-hosted LoRA/QLoRA fine-tuning for open LLMs."""

__version__ = "0.1.0"
