"""Seq2seq models (`data_config.task: seq2seq`): encoder-decoders such as T5, Flan-T5, BART, mBART and Pegasus.

transformers' `AutoModelForSeq2SeqLM` loads them with their LM head; LoRA goes into the self- and cross-attention
and the MLP of both stacks (targets.SEQ2SEQ_TARGET_MODULES) and PEFT saves the adapter with task_type SEQ_2_SEQ_LM,
so plain `PeftModel.from_pretrained(AutoModelForSeq2SeqLM...)` loads it. The data side is data/seq2seq.py, the
training side train/seq2seq.py, serving serve/seq2seq.py.
"""

from __future__ import annotations

from typing import Any


def seq2seq_types() -> set[str]:
    """The model_types that transformers loads with AutoModelForSeq2SeqLM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)


def is_encoder_decoder(config: Any) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def seq2seq_task_problem(config: Any, task: str, model_id: str) -> str | None:
    """Why `model_id` cannot be trained for `task` as far as encoder-decoders go: seq2seq needs one, causal_lm
    cannot use one. None when there is no such problem."""
    model_type = getattr(config, "model_type", None) or "unknown architecture"
    if task == "seq2seq" and (not is_encoder_decoder(config) or model_type not in seq2seq_types()):
        return (
            f"pretrainedmodel_config.model_path: {model_id!r} ({model_type}) is not an encoder-decoder model, so "
            "data_config.task 'seq2seq' cannot train it; use T5, Flan-T5, BART, mBART or Pegasus (`tuneforge models "
            "--task seq2seq` lists them), or task 'causal_lm' for a decoder-only model"
        )
    if task == "causal_lm" and is_encoder_decoder(config):
        return (
            f"pretrainedmodel_config.model_path: {model_id!r} ({model_type}) is an encoder-decoder model, which "
            "data_config.task 'causal_lm' cannot train: set data_config.task to 'seq2seq' (the source text in "
            "text_column, the target in label_column), or choose a decoder-only model for causal_lm"
        )
    return None
