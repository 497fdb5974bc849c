"""Tiny, offline, deterministic vision models and synthetic image data for image-classification tests.

No vision checkpoint or image dataset is reachable offline: the models are random ViT/DeiT/ConvNeXt/ResNet built
from transformers configs (2 layers or stages, 32x32 images) saved the way hub checkpoints ship (with an ImageNet-like
head of a different size, and the image processor beside them); the images are drawn with PIL, coloured by class,
so a classifier can learn them in a few steps.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

# Per architecture: (config class name, size fields). 32x32 images, hidden sizes 32-64.
TINY_VISION_CONFIGS: dict[str, dict] = {
    "vit": dict(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128
    ),
    "deit": dict(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128
    ),
    "convnext": dict(num_stages=2, hidden_sizes=[32, 64], depths=[1, 1], image_size=32),
    "resnet": dict(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], layer_type="basic"),
}
HUB_HEAD = 10  # the classes of the saved head: never the data's, as with an ImageNet checkpoint

# Class name -> colour of its images (pure hues with noise: separable, not trivially identical).
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "purple": (160, 30, 160)}


def save_tiny_vision_base(folder: Path, arch: str = "vit") -> Path:
    """A random `arch` image classifier with a HUB_HEAD-class head, and its image processor, in `folder`."""
    import torch
    import transformers
    from transformers import AutoConfig, ConvNextImageProcessor, ViTImageProcessor
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    config = AutoConfig.for_model(arch, num_labels=HUB_HEAD, **TINY_VISION_CONFIGS[arch])
    names = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES[arch]  # DeiT also has a distillation ("WithTeacher") head
    cls = getattr(transformers, names[0] if isinstance(names, tuple) else names)
    config.architectures = [cls.__name__]
    torch.manual_seed(0)
    cls(config).save_pretrained(folder)
    if arch in ("vit", "deit"):
        processor = ViTImageProcessor(size={"height": 32, "width": 32})
    else:  # ConvNeXt and ResNet hub checkpoints ship a ConvNextImageProcessor (resize, centre crop)
        processor = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    processor.save_pretrained(folder)
    return folder


def coloured_image(label: str, seed: int, size: tuple[int, int] = (24, 20)):
    """A PIL image of the class's colour with per-pixel noise."""
    from PIL import Image

    rng = random.Random(seed)
    base = COLOURS[label]
    im = Image.new("RGB", size)
    im.putdata([tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in base) for _ in range(size[0] * size[1])])
    return im


def png_bytes(label: str, seed: int) -> bytes:
    buf = io.BytesIO()
    coloured_image(label, seed).save(buf, format="PNG")
    return buf.getvalue()


def write_image_folder(folder: Path, per_class: int = 8, labels: tuple[str, ...] = ("blue", "red")) -> Path:
    """A folder-per-class dataset: folder/<label>/<i>.png."""
    for k, label in enumerate(labels):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            coloured_image(label, 1000 * k + i).save(folder / label / f"{i}.png")
    return folder


def write_image_csv(folder: Path, per_class: int = 8, labels: tuple[str, ...] = ("blue", "red")) -> Path:
    """images/*.png and data.csv with relative paths in 'path' and labels in 'label'."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for label in labels:
        for i in range(per_class):
            name = f"images/{label}_{i}.png"
            coloured_image(label, i).save(folder / name)
            rows.append({"path": name, "label": label})
    with open(folder / "data.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "data.csv"
