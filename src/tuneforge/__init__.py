"""tuneforge: self-hosted LoRA/QLoRA fine-tuning for open LLMs."""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes (imported by PEFT) looks for an optional CPU kernel package fetched from the hub at run time and logs
# a warning on every import when it is absent; its built-in CPU path is what runs. Silence that one logger.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
