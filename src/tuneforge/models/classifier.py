"""Sequence and image classification: which models can do it, where LoRA goes, and which modules train fully.

A classifier is the model's backbone (an encoder such as BERT, or a decoder such as Llama) plus a new head
(transformers' `AutoModelForSequenceClassification`: BERT's `classifier` on the pooled [CLS] state, Llama's `score`
on the last non-padding token). The backbone gets LoRA adapters, as for causal LMs; the head is new, so it trains
fully: PEFT's `modules_to_save` keeps a trainable copy of it and saves it with the adapter (task_type SEQ_CLS).
"Head" means every top-level module outside the backbone (`base_model_prefix`): DistilBERT's `pre_classifier`,
DeBERTa's `pooler` and ModernBERT's `head` are part of it, and LoRA never lands there (the targets are matched inside
the backbone only, so RoBERTa's `classifier.dense` is not mistaken for an attention `dense`).

Image classification is the same with a vision backbone (`AutoModelForImageClassification`: ViT's and DeiT's
`classifier` on the [CLS] state, ConvNeXt's and ResNet's on the pooled feature map). Hub checkpoints ship with an
ImageNet head; its 1000 outputs are replaced by a new head over the data's labels (`ignore_mismatched_sizes`).
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import TuneforgeError
from .targets import ENCODER_TARGET_MODULES, IMAGE_TARGET_MODULES, TARGET_MODULES


def sequence_classification_types() -> set[str]:
    """The model_types that transformers can give a sequence-classification head."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    return set(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)


def image_classification_types() -> set[str]:
    """The model_types that transformers can give an image-classification head."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    return set(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)


def _causal_lm_types() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def task_problem(config: Any, task: str, model_id: str) -> str | None:
    """Why `model_id` (its transformers config) cannot be trained for `task`, or None when it can."""
    model_type = getattr(config, "model_type", None)
    named = f"pretrainedmodel_config.model_path: {model_id!r} ({model_type or 'unknown architecture'})"
    if task == "image_classification":
        if model_type not in image_classification_types():
            return (
                f"{named} is not a vision model with an image-classification head in transformers, so "
                "data_config.task 'image_classification' cannot train it; use ViT, DeiT, ConvNeXt or ResNet "
                "(`tuneforge models --task image_classification` lists them)"
            )
        return None
    from .seq2seq import seq2seq_task_problem, seq2seq_types

    text_types = {
        "classification": sequence_classification_types,
        "seq2seq": seq2seq_types,
    }.get(task, _causal_lm_types)()
    if model_type in image_classification_types() and model_type not in text_types:
        return (
            f"{named} is a vision model: it reads images, not text, so data_config.task {task!r} cannot train it; "
            "set data_config.task to 'image_classification' or choose a text model"
        )
    if task in ("seq2seq", "causal_lm"):  # whether the model is an encoder-decoder: models/seq2seq.py
        return seq2seq_task_problem(config, task, model_id)
    if task == "classification" and model_type not in text_types:
        return (
            f"{named} has no "
            "sequence-classification head in transformers, so data_config.task 'classification' cannot train it; use "
            "an encoder (BERT, RoBERTa, DeBERTa-v2/v3, DistilBERT, ModernBERT, MiniLM) or a decoder such as Llama, "
            "Qwen or Mistral (`tuneforge models --task classification` lists them)"
        )
    return None


def check_task(config: Any, task: str, model_id: str) -> None:
    problem = task_problem(config, task, model_id)
    if problem:
        raise TuneforgeError(problem, field="pretrainedmodel_config.model_path", value=model_id)


def head_modules(model) -> list[str]:
    """Names of the top-level modules outside the backbone that hold parameters: the classification head."""
    backbone = model.base_model_prefix
    return [
        name for name, module in model.named_children() if name != backbone and any(True for _ in module.parameters())
    ]


def backbone_targets(model, given: list[str] | None) -> tuple[list[str], str]:
    """(leaf module names for LoRA, how they were chosen) for a sequence- or image-classification model."""
    import torch

    if given:
        return list(given), "given in the spec"
    model_type = getattr(model.config, "model_type", "")
    if model_type in IMAGE_TARGET_MODULES:
        return list(IMAGE_TARGET_MODULES[model_type]), f"the {model_type} defaults for image classification"
    known = ENCODER_TARGET_MODULES.get(model_type) or TARGET_MODULES.get(model_type)
    if known:
        return list(known), f"the {model_type} attention and MLP projections"
    backbone = getattr(model, model.base_model_prefix)
    names: list[str] = []
    what = "linear"
    for kind, what in ((torch.nn.Linear, "linear"), (torch.nn.Conv2d, "convolution")):  # noqa: B007 (a CNN has no Linear)
        names = sorted({n.rsplit(".", 1)[-1] for n, m in backbone.named_modules() if isinstance(m, kind) and n})
        if names:
            break
    return names, f"every {what} layer of the backbone (architecture {model_type!r} found by inspection)"


def backbone_target_regex(model, targets: list[str]) -> str:
    """A PEFT target_modules regex (matched against full module names) for `targets` inside the backbone only."""
    names = "|".join(re.escape(t) for t in targets)
    return rf"^{re.escape(model.base_model_prefix)}\.(.*\.)?({names})$"


def freeze_batch_norm(model) -> None:
    """Put the BatchNorm layers (ResNet's) in eval mode: they normalise with the checkpoint's running statistics and
    never update them. Those statistics are buffers of the frozen base that the adapter does not save, so updating
    them in training would give a published adapter that no longer matches what was trained (and the small batches of
    fine-tuning would make them noisy); this is the usual "frozen BatchNorm" of fine-tuning (detectron2, timm)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def label_maps(labels: list[str]) -> tuple[dict[int, str], dict[str, int]]:
    """id2label and label2id, as transformers' configs and tuneforge's adapter card store them."""
    return dict(enumerate(labels)), {name: i for i, name in enumerate(labels)}
