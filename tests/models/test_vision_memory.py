"""The image-classification memory estimate (models/vision_memory.py): shapes from configs (no weights), the
activation term against what autograd keeps on tiny random models, and where it is used: `tuneforge estimate`,
`tuneforge models --task image_classification`, and the fit check before a job loads its model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tiny_images import TINY_VISION_CONFIGS, save_tiny_vision_base, write_image_folder
from tuneforge.cli import main
from tuneforge.errors import TuneforgeError
from tuneforge.models import fit
from tuneforge.models.catalog import VISION_CATALOG
from tuneforge.models.listing import REFERENCE, catalog_rows
from tuneforge.models.memory import CPU_ALLOCATOR_FACTOR, GiB, TrainingSetup
from tuneforge.models.vision_memory import VisionShape, estimate_image_training_memory

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
bench = pytest.importorskip("vision_memory_bench")


@pytest.mark.parametrize("entry", VISION_CATALOG, ids=lambda e: e.alias)
def test_catalog_shapes_match_the_published_sizes(entry):
    shape = VisionShape.from_config(entry.transformers_config(), image_size=entry.context_length)
    assert shape.params == pytest.approx(entry.params_b * 1e9, rel=0.02)  # model cards, ImageNet-1k head included
    assert shape.head_params == shape.backbone.hidden_size * 1000 + 1000 or entry.architecture != "vit"
    if entry.architecture == "vit":
        assert shape.tokens == (224 // 16) ** 2 + 1  # patches + [CLS]
    else:
        assert shape.tokens == 0 and shape.block_elements > shape.stem_elements > 0


def test_resnet50_feature_maps_follow_its_stages():
    resnet = next(e for e in VISION_CATALOG if e.architecture == "resnet")
    shape = VisionShape.from_config(resnet.transformers_config(), image_size=224)
    assert shape.stem_elements == 64 * 112 * 112  # 7x7 stride-2 conv
    # 56, 28, 14, 7 pixels a side after the max-pool; 256..2048 channels; 3, 4, 6, 3 blocks
    assert shape.block_elements == 3 * 256 * 56**2 + 4 * 512 * 28**2 + 6 * 1024 * 14**2 + 3 * 2048 * 7**2
    # LoRA on every conv ("convolution"): r x (in x kh x kw + out) per conv
    small = estimate_image_training_memory(shape, lora_r=8, device="cpu", precision="bf16")
    big = estimate_image_training_memory(shape, lora_r=16, device="cpu", precision="bf16")
    assert big.trainable_params - shape.head_params == 2 * (small.trainable_params - shape.head_params)


def test_terms_follow_the_setup():
    vit = next(e for e in VISION_CATALOG if e.alias == "vit-base-patch16-224")
    shape = VisionShape.from_config(vit.transformers_config(), image_size=224, num_labels=5)
    one = estimate_image_training_memory(shape, batch_size=1, device="cuda")
    eight = estimate_image_training_memory(shape, batch_size=8, device="cuda")
    assert eight.activations == pytest.approx(8 * one.activations, rel=0.01)
    assert eight.weights == one.weights == shape.params * 2  # bf16 on CUDA
    assert one.logits == 0 and one.setup.method == "lora"
    # The head (768 x 5 + 5) trains fully: an fp32 copy, its gradient and AdamW state beside the LoRA terms.
    assert one.trainable_params == 8 * 12 * 2 * (768 + 768) + 768 * 5 + 5
    checkpointed = estimate_image_training_memory(shape, batch_size=8, device="cuda", gradient_checkpointing=True)
    assert checkpointed.activations < eight.activations / 3
    # A bigger image means more patches: (384 / 16)^2 + 1 tokens.
    assert VisionShape.from_config(vit.transformers_config(), image_size=384).tokens == 577
    assert estimate_image_training_memory(shape, method="qlora").setup.method == "lora"  # QLoRA is not offered


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("arch", sorted(TINY_VISION_CONFIGS))
def test_activation_term_tracks_what_autograd_saves(arch, precision, tmp_path):
    folder = save_tiny_vision_base(tmp_path / arch, arch)
    model, runtime = bench.trained_model(folder, precision)
    image_size = 32
    measured = bench.saved_bytes(model, runtime, 4, image_size)
    from transformers import AutoConfig

    shape = VisionShape.from_config(AutoConfig.from_pretrained(folder), image_size=image_size, num_labels=3)
    est = estimate_image_training_memory(shape, batch_size=4, device="cpu", precision=precision)
    # Autograd's share: activations without the allocator's retention, plus the compute-dtype conv weight copies.
    ratio = (est.activations / CPU_ALLOCATOR_FACTOR + est.workspace) / measured
    assert 0.7 <= ratio <= 1.4, (arch, precision, ratio, measured)


def test_models_lists_vision_memory(capsys):
    rows = catalog_rows(REFERENCE, task="image_classification")
    assert {r["architecture"] for r in rows} == {"vit", "convnext", "resnet"}
    for r in rows:
        assert set(r["memory"]) == {"lora"} and 0.3 < r["memory"]["lora"]["total_gib"] < 4, r["memory"]
        assert r["params_exact"] == pytest.approx(r["params_b"] * 1e9, rel=0.02)
    assert main(["models", "--task", "image_classification", "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    vit_line = next(line for line in out.splitlines() if line.startswith("vit-base-patch16-224"))
    assert " GiB " in vit_line and vit_line.split()[7] == "-"  # LoRA estimated; QLoRA not offered
    assert "batch 32 images at the context's side" in out


def test_fit_check_refuses_a_vision_model_too_big_for_the_device(monkeypatch, tmp_path):
    monkeypatch.setattr(fit, "device_memory", lambda device=None: (int(1 * GiB), "available system memory"))
    setup = TrainingSetup(batch_size=64, device="cpu", precision="bf16")
    with pytest.raises(TuneforgeError) as err:
        fit.ensure_fits("google/vit-base-patch16-224", setup=setup)
    message = str(err.value)
    assert "too large for this device" in message and "batch 64 x 224x224 images" in message
    assert "available system memory is 1.0 GiB" in message and "use_quantization" not in message
    # A local folder of a vision architecture: read from its config.json and image processor (32 x 32), no weights.
    folder = save_tiny_vision_base(tmp_path / "vit", "vit")
    assert fit.vision_shape(str(folder), folder).image_size == 32
    assert fit.ensure_fits(str(folder), config_dir=folder, setup=TrainingSetup(device="cpu")) is not None
    monkeypatch.setattr(fit, "device_memory", lambda device=None: (int(0.1 * GiB), "available system memory"))
    with pytest.raises(TuneforgeError, match=r"even as LoRA on cpu, (bf16|fp32), batch 1 x 32x32 images"):
        fit.ensure_fits(str(folder), config_dir=folder)


def test_estimate_of_an_image_job(tmp_path, capsys):
    from tuneforge.spec import parse_spec

    folder = save_tiny_vision_base(tmp_path / "resnet", "resnet")
    images = write_image_folder(tmp_path / "colours", per_class=10, labels=("blue", "green", "red"))
    spec = parse_spec(
        {
            "pretrainedmodel_config": {"model_path": str(folder), "lora_r": 4},
            "data_config": {"data_path": str(images), "task": "image_classification"},
            "training_config": {"batch_size": 4, "precision": "bf16"},
        }
    )
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.to_json(redact=False))
    assert main(["estimate", str(spec_file), "--device", "cpu", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert est["fits"] is True and est["image_size"] == 32 and est["image_tokens"] is None
    assert est["memory"]["setup"]["batch_size"] == 4 and est["seconds_per_epoch"] is None
    assert main(["estimate", str(spec_file), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "training images at 32x32 pixels" in text and "not estimated for image classification" in text
