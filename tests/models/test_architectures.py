"""Proof per architecture: a tiny random model of every architecture in the catalog (2 layers, 64 wide, built from its
transformers config class, offline) trains with LoRA and with QLoRA (4-bit NF4 on the CPU), round-trips through PEFT
save/load with identical logits, and merges into its base with the same logits. The completion-only loss equals the
model's own loss. A catalog architecture without these tests fails test_every_catalog_architecture_is_tested.

Training moves only the adapter: every base weight stays bit-identical (PEFT's own check).

The models are loaded and wrapped by tuneforge's own components (resolve_model, load_base_model, apply_lora,
loss_sum, merge_adapter), as the training recipe uses them.
"""

from __future__ import annotations

import pytest
import torch

from tiny import TINY_CONFIGS, build_model, save_tiny
from tuneforge.data.example import IGNORE_INDEX
from tuneforge.models.catalog import CATALOG, PROVEN_ARCHITECTURES, QLORA_NOT_QUANTIZED
from tuneforge.models.loader import resolve_model
from tuneforge.models.lora import LoraSettings, QuantSettings, apply_lora, load_base_model, parameter_counts
from tuneforge.models.memory import ModelShape, estimate_training_memory
from tuneforge.models.targets import TARGET_MODULES, TARGET_PARAMETERS, default_target_parameters
from tuneforge.runtime import cpu_has_bf16, pick_runtime
from tuneforge.train import loss as loss_module
from tuneforge.train.loss import loss_sum

# Every tiny config whose architecture the catalog may list ("falcon:new_decoder" is Falcon-40B's layout, etc.).
TESTED = [arch for arch in TINY_CONFIGS if arch.split(":")[0] in PROVEN_ARCHITECTURES]
MOE = sorted(TARGET_PARAMETERS)
LORA = LoraSettings(r=4, alpha=8)


def _model_type(arch: str) -> str:
    return arch.split(":")[0]


def test_every_catalog_architecture_is_tested():
    catalog_archs = {entry.architecture for entry in CATALOG}
    assert catalog_archs <= PROVEN_ARCHITECTURES, catalog_archs - PROVEN_ARCHITECTURES
    assert {_model_type(a) for a in TESTED} == PROVEN_ARCHITECTURES
    assert set(MOE) <= PROVEN_ARCHITECTURES
    # Catalog entries with an unusual layout have a tiny model of that layout too.
    assert any(e.config.get("new_decoder_architecture") for e in CATALOG) == ("falcon:new_decoder" in TESTED)
    assert any(e.config.get("word_embed_proj_dim", 0) not in (0, e.config.get("hidden_size")) for e in CATALOG) == (
        "opt:project" in TESTED
    )


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folders = {}

    def get(arch: str):
        if arch not in folders:
            folders[arch] = save_tiny(tmp_path_factory.mktemp(arch.replace(":", "-")), arch)
        return folders[arch]

    return get


def _batch():
    """A fixed batch: 4 rows of 24 tokens, the first 8 a prompt (no loss), the last row padded."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 380, (4, 24), generator=g)
    labels = ids.clone()
    labels[:, :8] = IGNORE_INDEX
    mask = torch.ones_like(ids)
    ids[3, 20:], mask[3, 20:], labels[3, 20:] = 0, 0, IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


BATCH = _batch()
INPUTS = {k: BATCH[k] for k in ("input_ids", "attention_mask")}


@torch.no_grad()
def _loss(model, runtime) -> float:
    with runtime.autocast():
        s, n = loss_sum(model, BATCH)
    return float(s) / n


@torch.no_grad()
def _logits(model, runtime) -> torch.Tensor:
    with runtime.autocast():
        return model(**INPUTS).logits.float()


def _train(model, runtime, steps: int = 8, lr: float = 3e-2) -> tuple[float, float]:
    """(loss before, loss after) `steps` AdamW steps on BATCH."""
    model.eval()
    before = _loss(model, runtime)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        with runtime.autocast():
            s, n = loss_sum(model, BATCH)
        (s / n).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return before, _loss(model, runtime)


def _weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _assert_only_the_adapter_trained(model, before: dict[str, torch.Tensor]) -> None:
    """PEFT's own check (tests/testing_common.py): training moved every trainable tensor, all of them LoRA weights,
    and left every base weight (4-bit packed ones included) bit-identical."""
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    trainable = {name for name, p in after.items() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable), sorted(
        trainable - {n for n in trainable if "lora_" in n}
    )
    for name, p in after.items():
        if name in trainable:
            assert not torch.equal(p.detach(), before[name]), f"{name}: an adapter weight did not train"
        else:
            assert torch.equal(p.detach(), before[name]), f"{name}: a base weight changed"


def _without_cpu_repacking(model):
    """bitsandbytes >= 0.49 repacks a 4-bit weight for its AVX-512 inference kernel on the first eval-mode forward
    without gradients (Linear4bit.forward -> _convert_weight_packed_for_cpu), and that kernel (gemv_4bit) has no
    autograd: gradients stop flowing through the frozen layers if training continues afterwards. These tests measure
    losses in eval mode between training steps, so they keep the trainable layout. (Reported to the training engine:
    the recipe's step-0 evaluation triggers the same repacking.)"""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("arch", TESTED)
def test_completion_only_loss_matches_the_models_own_loss(arch, monkeypatch):
    model = build_model(arch).eval()
    model_type = _model_type(arch)
    assert model_type in loss_module.FAST_PATH_TYPES  # verified here, so listed there
    with torch.no_grad():
        reference = model(**INPUTS, labels=BATCH["labels"]).loss
        for chunk in (10_000, 7):  # one chunk, and several (recomputed in backward)
            s, n = loss_sum(model, BATCH, chunk_tokens=chunk)
            assert n == int((BATCH["labels"][:, 1:] != IGNORE_INDEX).sum())
            assert torch.allclose(s / n, reference, rtol=1e-5), (arch, chunk)
        monkeypatch.setattr(loss_module, "FAST_PATH_TYPES", set())  # the fallback path agrees too
        s, n = loss_sum(model, BATCH)
        assert torch.allclose(s / n, reference, rtol=1e-5)


@pytest.mark.parametrize("arch", TESTED)
def test_lora_trains_round_trips_and_merges(arch, tiny_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = tiny_dir(arch)
    runtime = pick_runtime("fp32")
    resolved = resolve_model(str(folder))
    base = load_base_model(resolved, runtime)
    experts = bool(default_target_parameters(base))  # apply_lora adapts fused MoE experts too
    model, targets, how = apply_lora(
        base, LORA, model_id=resolved.model_id, quantized=False, gradient_checkpointing=False, seed=0
    )
    assert targets == TARGET_MODULES[_model_type(arch)], how
    trainable, _ = parameter_counts(model)
    # The memory estimate counts the same LoRA parameters PEFT creates.
    shape = ModelShape.from_config(model.get_base_model().config)
    assert estimate_training_memory(shape, lora_r=LORA.r, lora_on_experts=experts).trainable_params == trainable

    weights = _weights(model)
    before, after = _train(model, runtime)
    assert after < 0.7 * before, (before, after)
    _assert_only_the_adapter_trained(model, weights)
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    logits = _logits(model, runtime)

    # Round trip with plain PEFT on a freshly loaded base: the same logits.
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, adapter).eval()
    assert torch.allclose(_logits(reloaded, runtime), logits, atol=1e-5, rtol=1e-5)
    with reloaded.disable_adapter():
        assert _relative(_logits(reloaded, runtime), logits) > 1e-3  # the adapter matters

    # Merged weights (W + alpha/r * B A, checked finite) give the unmerged model's logits.
    merged = reloaded.merge_and_unload(safe_merge=True)
    assert not any("lora" in name for name, _ in merged.named_parameters())  # plain transformers weights
    assert _relative(_logits(merged, runtime), logits) < 1e-4


@pytest.mark.parametrize("arch", TESTED)
def test_qlora_trains_and_round_trips(arch, tiny_dir, tmp_path):
    folder = tiny_dir(arch)
    runtime = pick_runtime("bf16" if cpu_has_bf16() else "fp32")
    resolved = resolve_model(str(folder))
    base = _without_cpu_repacking(load_base_model(resolved, runtime, quant=QuantSettings("nf4", True)))
    quantized = [n for n, p in base.named_parameters() if p.__class__.__name__ == "Params4bit"]
    shape = ModelShape.from_config(base.config)
    if _model_type(arch) in QLORA_NOT_QUANTIZED:
        assert quantized == [] and shape.quantizable_params == 0  # and the catalog says so
    else:
        # Every linear layer but the output head is 4-bit (OPT-350m's projections too), as the estimate assumes.
        assert sum(p.numel() * 2 for n, p in base.named_parameters() if n in quantized) == shape.quantizable_params
        assert all(n.rsplit(".", 2)[-2] in TARGET_MODULES[_model_type(arch)] or "project" in n for n in quantized)
    model, _, _ = apply_lora(
        base, LORA, model_id=resolved.model_id, quantized=True, gradient_checkpointing=False, seed=0
    )
    weights = _weights(model)
    before, after = _train(model, runtime)
    assert after < 0.7 * before, (before, after)
    _assert_only_the_adapter_trained(model, weights)
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    logits = _logits(model, runtime)

    # Reload through PEFT (load_adapter, what PeftModel.from_pretrained runs) onto a base prepared the same way.
    # (Merging a QLoRA adapter means merging into the full-precision base: the same as the LoRA test's merge.)
    fresh, _, _ = apply_lora(
        _without_cpu_repacking(load_base_model(resolved, runtime, quant=QuantSettings("nf4", True))),
        LORA,
        model_id=resolved.model_id,
        quantized=True,
        gradient_checkpointing=False,
        seed=1,
    )
    fresh.load_adapter(str(adapter), adapter_name="reloaded")
    fresh.set_adapter("reloaded")
    assert torch.equal(_logits(fresh.eval(), runtime), logits)  # same 4-bit weights, same adapter: identical


@pytest.mark.parametrize("quantized", [False, True], ids=["lora", "qlora"])
@pytest.mark.parametrize("arch", MOE)
def test_moe_experts_train_through_target_parameters(arch, quantized, tiny_dir, tmp_path):
    """Fused 3-D expert weights get LoRA through PEFT's target_parameters: training moves the expert adapters,
    save/load keeps the logits, and merging is exact."""
    from peft import LoraConfig, PeftModel, get_peft_model

    folder = tiny_dir(arch)
    runtime = pick_runtime(("bf16" if cpu_has_bf16() else "fp32") if quantized else "fp32")
    resolved = resolve_model(str(folder))
    quant = QuantSettings("nf4", True) if quantized else None

    def wrapped_base():
        return _without_cpu_repacking(load_base_model(resolved, runtime, quant=quant))

    base = wrapped_base()
    experts = default_target_parameters(base)
    assert experts == TARGET_PARAMETERS[arch]
    config = LoraConfig(
        r=LORA.r,
        lora_alpha=LORA.alpha,
        target_modules=TARGET_MODULES[arch],
        target_parameters=experts,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(0)
    model = get_peft_model(base, config)
    expert_lora = {n: p for n, p in model.named_parameters() if "experts" in n and "lora_B" in n}
    assert expert_lora and all(float(p.detach().abs().max()) == 0 for p in expert_lora.values())  # B starts at 0
    shape = ModelShape.from_config(model.get_base_model().config)
    estimate = estimate_training_memory(shape, lora_r=LORA.r, lora_on_experts=True)
    assert estimate.trainable_params == parameter_counts(model)[0]

    before, after = _train(model, runtime)
    assert after < 0.7 * before, (before, after)
    assert all(float(p.detach().abs().max()) > 0 for p in expert_lora.values())  # the experts learned
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    logits = _logits(model, runtime)
    reloaded = PeftModel.from_pretrained(wrapped_base(), adapter).eval()
    assert torch.allclose(_logits(reloaded, runtime), logits, atol=1e-5, rtol=1e-5)
    if not quantized:
        merged = reloaded.merge_and_unload(safe_merge=True)
        assert _relative(_logits(merged, runtime), logits) < 1e-4
