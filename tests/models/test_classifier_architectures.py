"""Proof per classifier architecture (data_config.task: classification): a tiny random model of each encoder (BERT,
RoBERTa, DeBERTa-v2, DistilBERT, ModernBERT; MiniLM is a BERT) and decoder (Llama, Qwen2, Mistral) with a new
sequence-classification head trains with LoRA on the backbone and the head fully (PEFT modules_to_save), moves
nothing else, round-trips through plain PEFT with identical logits, and merges into plain transformers weights with
the same logits. Loaded and wrapped by tuneforge's own components, as the recipe does.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tiny import TINY_CLASSIFIER_CONFIGS, save_tiny_classifier_base
from tuneforge.adapter_card import classification_card
from tuneforge.errors import TuneforgeError
from tuneforge.inference import load_for_inference
from tuneforge.models.catalog import CLASSIFIER_ARCHITECTURES, ENCODER_CATALOG, get_entry
from tuneforge.models.classifier import ENCODER_TARGET_MODULES, check_task, head_modules
from tuneforge.models.loader import resolve_model
from tuneforge.models.lora import LoraSettings, apply_lora, load_base_model
from tuneforge.models.memory import ModelShape
from tuneforge.models.targets import TARGET_MODULES
from tuneforge.runtime import pick_runtime

LABELS = ["negative", "neutral", "positive"]
LORA = LoraSettings(r=4, alpha=8)
HEADS = {
    "bert": ["classifier"],
    "roberta": ["classifier"],
    "deberta-v2": ["pooler", "classifier"],
    "distilbert": ["pre_classifier", "classifier"],
    "modernbert": ["head", "classifier"],
    "llama": ["score"],
    "qwen2": ["score"],
    "mistral": ["score"],
}


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 380, (6, 16), generator=g)
    mask = torch.ones_like(ids)
    ids[5, 11:], mask[5, 11:] = 0, 0  # one right-padded row: decoders must read its last real token
    return {"input_ids": ids, "attention_mask": mask}, torch.tensor([0, 1, 2, 0, 1, 2])


INPUTS, TARGETS = _batch()


@torch.no_grad()
def _logits(model) -> torch.Tensor:
    return model(**INPUTS).logits.float()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("arch", list(TINY_CLASSIFIER_CONFIGS))
def test_classifier_lora_trains_round_trips_and_merges(arch, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    folder = save_tiny_classifier_base(tmp_path / "base", arch)
    resolved = resolve_model(str(folder))
    base = load_base_model(resolved, pick_runtime("fp32"), labels=LABELS, pad_token_id=0)
    assert base.config.id2label == dict(enumerate(LABELS)) and head_modules(base) == HEADS[arch]
    model, targets, how = apply_lora(
        base,
        LORA,
        model_id=resolved.model_id,
        quantized=False,
        gradient_checkpointing=False,
        seed=0,
        classification=True,
    )
    assert targets == (ENCODER_TARGET_MODULES.get(arch) or TARGET_MODULES[arch]), how
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # LoRA inside the backbone only, the head (a trainable copy) whole: nothing else trains.
    assert all("lora_" in n or "modules_to_save" in n for n in trainable), sorted(trainable)
    assert {n.split(".")[2] for n in trainable if "modules_to_save" in n} == set(HEADS[arch])
    assert not any("lora_" in n and any(f".{h}." in n for h in HEADS[arch]) for n in trainable)

    model.eval()
    loss_before = float(F.cross_entropy(_logits(model), TARGETS))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(15):
        F.cross_entropy(model(**INPUTS).logits.float(), TARGETS).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    loss_after = float(F.cross_entropy(_logits(model), TARGETS))
    assert loss_after < 0.5 * loss_before, (loss_before, loss_after)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]) != (name in trainable), name  # what trains moved, nothing else

    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    logits = _logits(model)

    # Plain PEFT on a freshly loaded base with a new (random) head: the saved head replaces it, same logits.
    fresh = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3, pad_token_id=0)
    reloaded = PeftModel.from_pretrained(fresh, adapter).eval()
    assert torch.allclose(_logits(reloaded), logits, atol=1e-5, rtol=1e-5)
    with reloaded.disable_adapter():
        assert _relative(_logits(reloaded), logits) > 1e-3
    merged = reloaded.merge_and_unload(safe_merge=True)
    assert not any("lora" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
    assert _relative(_logits(merged), logits) < 1e-4

    # tuneforge's own loader reads the labels from the card and rebuilds the same classifier.
    classification_card(LABELS, text_column="text", max_length=64, base_model={}).write(adapter)
    loaded, _ = load_for_inference(str(folder), adapter, device="cpu")
    assert loaded.config.id2label == dict(enumerate(LABELS))
    assert torch.allclose(_logits(loaded), logits, atol=1e-5, rtol=1e-5)


def test_a_model_without_a_classification_head_is_refused():
    from transformers import AutoConfig

    config = AutoConfig.for_model("llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    check_task(config, "causal_lm", "tiny-llama")  # (a vision model is refused: test_image_classifier_architectures)
    config = AutoConfig.for_model("whisper")
    with pytest.raises(TuneforgeError, match=r"'tiny' \(whisper\) has no sequence-classification head.*BERT"):
        check_task(config, "classification", "tiny")


def test_classifier_architectures_are_the_tested_ones():
    assert set(TINY_CLASSIFIER_CONFIGS) == CLASSIFIER_ARCHITECTURES
    assert {e.architecture for e in ENCODER_CATALOG} <= CLASSIFIER_ARCHITECTURES


@pytest.mark.parametrize("entry", ENCODER_CATALOG, ids=lambda e: e.alias)
def test_encoder_catalog_sizes_match_the_published_counts(entry):
    shape = ModelShape.from_config(entry.transformers_config(), extrapolate=True)
    assert shape.params == pytest.approx(entry.params_b * 1e9, rel=0.02)
    assert entry.tasks == ("classification",) and get_entry(entry.alias) is entry
    assert list(shape.default_targets) == entry.target_modules


def test_models_lists_by_task(capsys):
    from tuneforge.cli import main

    assert main(["models", "--task", "classification", "--family", "bert"]) == 0
    out = capsys.readouterr().out
    assert "all-minilm-l6-v2" in out and "modernbert-base" in out and "distilbert-base-uncased" in out
    assert main(["models", "--json", "--task", "classification", "--family", "qwen2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["tasks"] == ["causal_lm", "classification"] for r in rows)
    assert main(["models", "--json", "--family", "bert"]) == 0  # default: models that generate text
    assert json.loads(capsys.readouterr().out) == []
