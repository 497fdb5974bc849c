"""Serving classifiers: `POST /v1/classify` in vLLM's shape, and batched labelling for `tuneforge predict`.

A classifier adapter (tuneforge_adapter.json says task classification) is its base loaded as a sequence classifier
over the adapter's labels, with the adapter merged in (W + alpha/r·B·A folded once, so a forward pass costs what
the base's does) and its trained head. Each adapter gets its own copy of the base: classifiers are small (encoders),
and their heads differ. They load on first use.

Request and response follow vLLM's classification API (`vllm/entrypoints/openai/protocol.py`,
ClassificationRequest/ClassificationResponse):

    POST /v1/classify  {"model": "sentiment", "input": "great phone" | ["great phone", "meh"]}
    -> {"id": "classify-...", "object": "list", "created": 1730000000, "model": "sentiment",
        "data": [{"index": 0, "label": "positive", "probs": [0.01, 0.04, 0.95], "num_classes": 3}, ...],
        "usage": {"prompt_tokens": 7, "total_tokens": 7, "completion_tokens": 0}}

`probs` are in label-id order (the adapter card's id2label); labels are named as in the training data.

An image classifier (task image_classification) answers the same route in the same shape; its `input` is an image as
a data URL (`data:image/png;base64,...`, as OpenAI's and vLLM's image inputs are given) or a list of them, prepared by
the image processor saved with the adapter. `usage` counts text tokens: 0 for images.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from ..adapter_card import read_card
from ..data.images import ImageRef, open_image
from ..errors import TuneforgeError
from .openai_routes import Auth, OpenAIErrorRoute
from .pool import AdapterPool

MAX_INPUTS = 2048  # texts per request: a bound on one request's memory and time


CLASSIFIER_TASKS = ("classification", "image_classification")


def is_classifier(adapter_dir: str | Path) -> bool:
    card = read_card(adapter_dir)
    return card is not None and card.task in CLASSIFIER_TASKS


def decode_data_url(value: Any, index: int) -> bytes:
    """The image bytes of a `data:image/...;base64,...` URL; a TuneforgeError naming input[index] otherwise."""
    import base64
    import binascii

    head, _, payload = value.partition(",") if isinstance(value, str) else ("", "", "")
    if not (head.startswith("data:image/") and head.endswith(";base64") and payload):
        shown = (
            repr(value[:40]) + ("..." if len(value) > 40 else "") if isinstance(value, str) else type(value).__name__
        )
        raise TuneforgeError(
            f"input[{index}]: {shown} is not an image data URL; this classifier labels images, given as "
            "'data:image/png;base64,...' (or jpeg, webp, ...)",
            field=f"input[{index}]",
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise TuneforgeError(
            f"input[{index}]: the data URL's payload is not valid base64", field=f"input[{index}]"
        ) from None


@dataclass(frozen=True)
class Prediction:
    label: str
    probs: list[float]  # in label-id order


class LoadedClassifier:
    """One classifier adapter merged into its base, with its tokenizer and labels."""

    def __init__(self, adapter_dir: str | Path, *, model_path: str | None = None, device: str | None = None):
        from ..inference import load_for_inference

        card = read_card(adapter_dir)
        if card is None or card.task not in CLASSIFIER_TASKS:
            raise TuneforgeError(
                f"{adapter_dir}: not a classifier adapter (its tuneforge_adapter.json does not say task "
                "'classification'); generation adapters are served on /v1/completions and /v1/chat/completions",
                field="adapter",
                value=str(adapter_dir),
            )
        model, self.tokenizer = load_for_inference(model_path, adapter_dir, device=device)
        self.model = model.merge_and_unload(safe_merge=True).eval()
        self.labels = card.labels
        self.max_length = card.max_length or 512
        self.text_column = card.text_column or "text"
        self.vision = card.task == "image_classification"  # then self.tokenizer is the model's image processor
        self.image_column = card.image_column or "image"
        self.lock = threading.Lock()  # one forward pass at a time per model: torch's CPU threads are shared anyway

    @torch.no_grad()
    def predict(self, texts: Sequence[str], *, batch_size: int = 32) -> tuple[list[Prediction], int]:
        """(one Prediction per text, in order; the number of input tokens), in batches of similar length."""
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
        probs: list[list[float]] = [[] for _ in enc]
        pad = self.tokenizer.pad_token_id
        device = self.model.device
        with self.lock:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                longest = max(len(enc[i]) for i in idx)
                ids = torch.full((len(idx), longest), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), longest), dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, : len(enc[i])] = torch.tensor(enc[i])
                    mask[row, : len(enc[i])] = 1
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
                for i, p in zip(idx, logits.softmax(-1).cpu().tolist(), strict=True):
                    probs[i] = p
        return self._predictions(probs), sum(len(e) for e in enc)

    def probe(self) -> None:
        """One prediction on a made-up input (a word, or a grey image): the head and the adapter fit this base."""
        if not self.vision:
            self.predict(["Hello"])
            return
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (128, 128, 128)).save(buf, format="PNG")
        self.predict_images([buf.getvalue()])

    def _predictions(self, probs: list[list[float]]) -> list[Prediction]:
        return [Prediction(self.labels[max(range(len(p)), key=p.__getitem__)], p) for p in probs]

    @torch.no_grad()
    def predict_images(self, images: Sequence[ImageRef], *, batch_size: int = 32) -> list[Prediction]:
        """One Prediction per image (a path or encoded bytes), in order; decoded and prepared batch by batch by the
        adapter's image processor. Raises TuneforgeError naming the index of an image that cannot be decoded."""
        from ..train.tasks import pixel_batch

        probs: list[list[float]] = []
        with self.lock:
            for start in range(0, len(images), batch_size):
                decoded = []
                for i, ref in enumerate(images[start : start + batch_size], start=start):
                    try:
                        decoded.append(open_image(ref))
                    except (OSError, ValueError, SyntaxError) as err:
                        raise TuneforgeError(
                            f"input[{i}]: cannot be decoded as an image: {err}", field=f"input[{i}]"
                        ) from None
                pixels = pixel_batch(self.tokenizer, decoded).to(self.model.device, self.model.dtype)
                probs += self.model(pixel_values=pixels).logits.float().softmax(-1).cpu().tolist()
        return self._predictions(probs)


def classifier_pool(
    adapters: dict[str, str], *, model_path: str | None = None, device: str | None = None
) -> AdapterPool[LoadedClassifier]:
    """Classifier adapters by name, loaded on first use."""
    return AdapterPool(
        adapters,
        check=is_classifier,
        load=LoadedClassifier,
        adapter_kind="classifier",
        model_kind="classifier",
        model_path=model_path,
        device=device,
    )


# ------------------------------------------------------------------------------------------ HTTP
class ClassificationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # vLLM's other fields (user, priority, ...) do not change the answer

    model: str = Field(description="The classifier adapter's name.")
    input: str | list[str] = Field(
        description="A text or a list of texts to classify; for an image classifier, an image data URL "
        "('data:image/png;base64,...') or a list of them."
    )


class ClassificationData(BaseModel):
    index: int
    label: str = Field(description="The most probable label, named as in the training data.")
    probs: list[float] = Field(description="Probability of each label, in label-id order (the adapter's id2label).")
    num_classes: int


class ClassificationUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


class ClassificationResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: ClassificationUsage


class Classifiers(Protocol):
    def get(self, name: str) -> LoadedClassifier: ...


def classify_router(pool: Classifiers, auth: Auth) -> APIRouter:
    """`POST /v1/classify` over `pool` (a classifier_pool, or the service's deployments), with the same auth and
    OpenAI-shaped errors as the other /v1 routes."""
    import inspect

    from fastapi.concurrency import run_in_threadpool

    router = APIRouter(prefix="/v1", route_class=OpenAIErrorRoute, tags=["inference"])

    @router.post("/classify", response_model=ClassificationResponse)
    async def classify(body: ClassificationRequest, request: Request) -> dict[str, Any]:
        check = auth(request, body.model)
        if inspect.isawaitable(check):
            await check
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts or len(texts) > MAX_INPUTS:
            raise TuneforgeError(
                f"input: give 1 to {MAX_INPUTS} texts, not {len(texts)}", field="input", value=len(texts)
            )
        classifier = await run_in_threadpool(pool.get, body.model)
        if classifier.vision:
            images: list[ImageRef] = [decode_data_url(t, i) for i, t in enumerate(texts)]
            preds, tokens = await run_in_threadpool(classifier.predict_images, images), 0
        else:
            preds, tokens = await run_in_threadpool(classifier.predict, texts)
        return {
            "id": f"classify-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": body.model,
            "data": [
                {"index": i, "label": p.label, "probs": p.probs, "num_classes": len(p.probs)}
                for i, p in enumerate(preds)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
        }

    return router
