"""Proof per image-classification architecture (data_config.task: image_classification): a tiny random ViT, DeiT,
ConvNeXt and ResNet, saved as hub checkpoints ship (a 10-class head, the image processor beside it), gets a new head
over the data's labels, trains with LoRA on the backbone (Conv2d LoRA for ResNet) and the head fully, moves nothing
else, round-trips through plain PEFT with identical logits, and merges into plain transformers weights with the same
logits. Loaded and wrapped by tuneforge's own components, as the recipe does. Images are synthetic (PIL)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tiny_images import HUB_HEAD, TINY_VISION_CONFIGS, coloured_image, save_tiny_vision_base
from tuneforge.adapter_card import classification_card
from tuneforge.errors import TuneforgeError
from tuneforge.inference import load_for_inference
from tuneforge.models.catalog import IMAGE_CLASSIFIER_ARCHITECTURES, VISION_CATALOG, get_entry
from tuneforge.models.classifier import check_task, freeze_batch_norm, head_modules
from tuneforge.models.loader import load_image_processor, resolve_model
from tuneforge.models.lora import LoraSettings, apply_lora, load_base_model
from tuneforge.models.targets import IMAGE_TARGET_MODULES, missing_target_modules
from tuneforge.runtime import pick_runtime
from tuneforge.train.tasks import pixel_batch

LABELS = ["blue", "green", "red"]
LORA = LoraSettings(r=4, alpha=8)


def _inputs(processor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images per class, coloured by class, as the model's processor prepares them."""
    images = [coloured_image(label, seed) for seed in range(2) for label in LABELS]
    return pixel_batch(processor, images), torch.tensor([0, 1, 2, 0, 1, 2])


@torch.no_grad()
def _logits(model, pixels) -> torch.Tensor:
    return model(pixel_values=pixels).logits.float()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("arch", list(TINY_VISION_CONFIGS))
def test_image_classifier_lora_trains_round_trips_and_merges(arch, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    folder = save_tiny_vision_base(tmp_path / "base", arch)
    resolved = resolve_model(str(folder))
    processor = load_image_processor(str(folder))
    pixels, targets = _inputs(processor)
    assert pixels.shape == (6, 3, 32, 32)
    base = load_base_model(resolved, pick_runtime("fp32"), labels=LABELS, vision=True)
    assert base.config.id2label == dict(enumerate(LABELS)) and head_modules(base) == ["classifier"]
    model, targets_used, how = apply_lora(
        base,
        LORA,
        model_id=resolved.model_id,
        quantized=False,
        gradient_checkpointing=True,  # refused quietly by the CNNs, applied to ViT/DeiT
        seed=0,
        vision=True,
    )
    assert targets_used == IMAGE_TARGET_MODULES[arch], how
    assert ("no gradient checkpointing" in how) == (arch in ("convnext", "resnet")), how
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "modules_to_save" in n for n in trainable), sorted(trainable)
    assert any("modules_to_save" in n for n in trainable) and any("lora_" in n for n in trainable)
    assert not any("lora_" in n and ".classifier." in n for n in trainable)
    if arch == "resnet":  # LoRA on Conv2d: PEFT's conv LoRA layer wraps the convolutions
        from peft.tuners.lora import Conv2d as LoraConv2d

        assert any(isinstance(m, LoraConv2d) for m in model.modules())

    model.eval()
    loss_before = float(F.cross_entropy(_logits(model, pixels), targets))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    freeze_batch_norm(model)  # as ImageClassificationTask does: the base's running statistics are not the adapter's
    for _ in range(15):
        F.cross_entropy(model(pixel_values=pixels).logits.float(), targets).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    loss_after = float(F.cross_entropy(_logits(model, pixels), targets))
    assert loss_after < 0.5 * loss_before, (loss_before, loss_after)
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers()), "BatchNorm statistics moved"
    for name, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        # What trains moved (LoRA's B starts at zero, so some A may stay put in a few steps), nothing else did.
        assert not moved or name in trainable, name
    assert all(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters() if "lora_B" in n)

    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    processor.save_pretrained(adapter)
    logits = _logits(model, pixels)

    # Plain PEFT on a fresh base whose 10-class hub head is replaced: the saved head replaces that, same logits.
    fresh = AutoModelForImageClassification.from_pretrained(folder, num_labels=3, ignore_mismatched_sizes=True)
    reloaded = PeftModel.from_pretrained(fresh, adapter).eval()
    assert torch.allclose(_logits(reloaded, pixels), logits, atol=1e-5, rtol=1e-5)
    merged = reloaded.merge_and_unload(safe_merge=True)
    assert not any("lora" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
    assert _relative(_logits(merged, pixels), logits) < 1e-4

    # tuneforge's own loader reads the labels from the card and the processor from the adapter.
    classification_card(LABELS, task="image_classification", image_column="image", base_model={}).write(adapter)
    loaded, loaded_processor = load_for_inference(str(folder), adapter, device="cpu")
    assert loaded.config.id2label == dict(enumerate(LABELS))
    assert torch.allclose(
        _logits(loaded, pixel_batch(loaded_processor, [coloured_image("red", 0)])), logits[2:3], atol=1e-5
    )


def test_the_task_the_model_cannot_do_is_refused_by_name():
    from transformers import AutoConfig

    vit = AutoConfig.for_model("vit", **TINY_VISION_CONFIGS["vit"])
    check_task(vit, "image_classification", "tiny-vit")
    for task in ("causal_lm", "classification", "seq2seq"):
        with pytest.raises(TuneforgeError, match=rf"'tiny-vit' \(vit\) is a vision model.*data_config.task '{task}'"):
            check_task(vit, task, "tiny-vit")
    bert = AutoConfig.for_model("bert")
    with pytest.raises(TuneforgeError, match=r"'my-bert' \(bert\) is not a vision model.*ViT, DeiT, ConvNeXt"):
        check_task(bert, "image_classification", "my-bert")


def test_image_architectures_are_the_tested_ones():
    assert set(TINY_VISION_CONFIGS) == IMAGE_CLASSIFIER_ARCHITECTURES == set(IMAGE_TARGET_MODULES)
    assert {e.architecture for e in VISION_CATALOG} <= IMAGE_CLASSIFIER_ARCHITECTURES
    assert len(LABELS) != HUB_HEAD  # the hub head is always replaced


@pytest.mark.parametrize("entry", VISION_CATALOG, ids=lambda e: e.alias)
def test_vision_catalog_sizes_match_the_published_counts(entry):
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    config = entry.transformers_config()
    names = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES[config.model_type]
    with torch.device("meta"):
        model = getattr(transformers, names[0] if isinstance(names, tuple) else names)(config)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(entry.params_b * 1e9, rel=0.02)
    assert entry.tasks == ("image_classification",) and get_entry(entry.alias) is entry
    assert entry.target_modules == IMAGE_TARGET_MODULES[entry.architecture]
    assert not missing_target_modules(model, entry.target_modules)


def test_models_lists_vision_models_by_task(capsys):
    from tuneforge.cli import main

    assert main(["models", "--task", "image_classification"]) == 0
    out = capsys.readouterr().out
    assert all(e.id in out for e in VISION_CATALOG) and "4 models" in out and "224px" in out
    assert main(["models", "--task", "classification"]) == 0
    assert "vit-base" not in capsys.readouterr().out
