"""Task-specific parts of training, beside the causal-LM path of recipe.py: sequence and image classification.

The recipe stays one loop; for `data_config.task: classification` it hands batches to `ClassificationTask` instead
of `train_step`/`evaluate`: the loss is the cross-entropy of the head's logits against each row's label, averaged
over the step's rows however they are split into micro-batches (as SFT averages over target tokens), and each
evaluation records accuracy and macro-F1 beside the loss. After training, `scores` gives the published adapter's
accuracy, macro-F1, per-class precision/recall and confusion matrix on the held-out rows.

`ImageClassificationTask` is the same over images: a batch is the images decoded and run through the model's own
image processor (resize, crop, normalise), with an optional light augmentation of the training batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F

from ..data.classify import ClassExample
from ..data.images import ImageExample, open_image
from ..evaluate.metrics import classification_scores
from ..models.classifier import freeze_batch_norm
from ..runtime import Runtime


def collate_classes(examples: Sequence[ClassExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest text: input_ids and attention_mask (B, T), labels (B,). Decoder heads find each
    row's last real token from the padding (transformers' *ForSequenceClassification read config.pad_token_id)."""
    longest = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, ex in enumerate(examples):
        input_ids[row, : len(ex)] = torch.tensor(ex.input_ids)
        attention_mask[row, : len(ex)] = 1
    labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def class_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, k) logits in fp32 (cross-entropy and softmax in fp32 under bf16 autocast)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


class ClassificationTask:
    """Loss, step, evaluation and scores of a sequence classifier over `labels` (index = label id)."""

    def __init__(self, labels: list[str]):
        self.labels = labels

    def collate(self, examples: Sequence, pad_id: int | None, *, train: bool = False) -> dict[str, torch.Tensor]:
        """The model's inputs and `labels` for `examples`."""
        assert pad_id is not None
        return collate_classes(examples, pad_id)

    def logits(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return class_logits(model, batch)

    @staticmethod
    def size(batch: dict[str, torch.Tensor]) -> int:
        """What the throughput counts: real tokens (images: one per image)."""
        return int(batch["attention_mask"].sum())

    def step(
        self,
        model,
        micro_batches: list[list[ClassExample]],
        *,
        pad_id: int | None,
        runtime: Runtime,
        optimizer,
        scheduler,
        max_grad_norm: float,
    ) -> tuple[float, int, int]:
        """One optimizer step; returns (mean loss per row, rows, real tokens)."""
        rows = sum(len(mb) for mb in micro_batches)
        total, tokens = 0.0, 0
        for mb in micro_batches:
            batch = self.collate(mb, pad_id, train=True)
            tokens += self.size(batch)
            batch = {k: v.to(runtime.device, non_blocking=True) for k, v in batch.items()}
            with runtime.autocast():
                loss = F.cross_entropy(self.logits(model, batch), batch["labels"], reduction="sum")
            (loss / rows).backward()
            total += float(loss.detach())
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad], max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return total / rows, rows, tokens

    @torch.no_grad()
    def predict(
        self, model, examples: Sequence[ClassExample], *, batch_size: int, pad_id: int | None, runtime: Runtime
    ) -> torch.Tensor:
        """(N, k) class probabilities in the order of `examples` (batched in length order to pad little)."""
        was_training = model.training
        model.eval()
        order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
        probs = torch.empty((len(examples), len(self.labels)))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = self.collate([examples[i] for i in idx], pad_id)
            batch = {k: v.to(runtime.device) for k, v in batch.items()}
            with runtime.autocast():
                probs[idx] = self.logits(model, batch).softmax(-1).cpu()
        if was_training:
            model.train()
        return probs

    def scores(
        self, model, examples: Sequence[ClassExample], *, batch_size: int, pad_id: int | None, runtime: Runtime
    ) -> dict:
        """Loss (mean cross-entropy per row) and `evaluate.metrics.classification_scores` on `examples`."""
        probs = self.predict(model, examples, batch_size=batch_size, pad_id=pad_id, runtime=runtime)
        true = torch.tensor([e.label for e in examples], dtype=torch.long)
        loss = float(F.nll_loss(probs.clamp_min(1e-12).log(), true)) if len(examples) else float("nan")
        scored = classification_scores(probs.argmax(-1).tolist(), true.tolist(), self.labels)
        return {"loss": loss, **scored}

    def evaluate(
        self, model, examples: Sequence[ClassExample], *, batch_size: int, pad_id: int | None, runtime: Runtime
    ) -> dict[str, float]:
        """The eval record's values: eval_loss, eval_accuracy, eval_macro_f1."""
        s = self.scores(model, examples, batch_size=batch_size, pad_id=pad_id, runtime=runtime)
        return {"eval_loss": s["loss"], "eval_accuracy": s["accuracy"], "eval_macro_f1": s["macro_f1"]}


def pixel_batch(processor, images: Sequence) -> torch.Tensor:
    """(B, 3, H, W) pixel values of PIL `images` as the model's image processor prepares them."""
    return processor(images=list(images), return_tensors="pt")["pixel_values"]


def augment(image):
    """A light training-time augmentation: a random horizontal flip and a random crop of 80-100% of each side
    (before the processor's resize), the usual "light" setting of timm / torchvision recipes for fine-tuning. Drawn
    from torch's global generator, which checkpoints save and restore, so a resumed run augments as an uninterrupted
    one would."""
    from PIL import Image

    flip, fw, fh, fx, fy = torch.rand(5).tolist()
    if flip < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    w, h = image.size
    cw, ch = max(1, round(w * (0.8 + 0.2 * fw))), max(1, round(h * (0.8 + 0.2 * fh)))
    left, top = int(fx * (w - cw + 1)), int(fy * (h - ch + 1))
    return image.crop((left, top, left + cw, top + ch))


class ImageClassificationTask(ClassificationTask):
    """`ClassificationTask` over images (data/images.py ImageExample): decoded batch by batch and prepared by the
    model's image processor; `augment_train`: flip and crop the training batches (never the evaluated ones)."""

    def __init__(self, labels: list[str], processor, *, augment_train: bool = False):
        super().__init__(labels)
        self.processor = processor
        self.augment_train = augment_train

    def collate(self, examples: Sequence, pad_id: int | None, *, train: bool = False) -> dict[str, torch.Tensor]:
        images = [open_image(cast("ImageExample", e).image) for e in examples]
        if train and self.augment_train:
            images = [augment(im) for im in images]
        labels = torch.tensor([e.label for e in examples], dtype=torch.long)
        return {"pixel_values": pixel_batch(self.processor, images), "labels": labels}

    def logits(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if model.training:
            freeze_batch_norm(model)  # the recipe's model.train() turns them back on: see freeze_batch_norm
        return model(pixel_values=batch["pixel_values"]).logits.float()

    @staticmethod
    def size(batch: dict[str, torch.Tensor]) -> int:
        return len(batch["labels"])


def plot_confusion(matrix: list[list[int]], labels: list[str], out_png: Path, title: str = "") -> None:
    """The confusion matrix as a heat map: rows the true labels, columns the predicted ones, counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(labels)
    size = min(4.5 + 0.5 * k, 12)
    fig, ax = plt.subplots(figsize=(size, size), dpi=110)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max((max(row) for row in matrix), default=0)
    for i in range(k):
        for j in range(k):
            ax.text(
                j, i, str(matrix[i][j]), ha="center", va="center", color="white" if matrix[i][j] > peak / 2 else "black"
            )
    ax.set_title(title or "confusion matrix", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
