"""The catalog as data: coverage, consistency of its facts with the configs it records, names and aliases."""

from __future__ import annotations

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.models.catalog import (
    CATALOG,
    PROMPT_STYLES,
    PROVEN_ARCHITECTURES,
    QLORA_NOT_QUANTIZED,
    catalog_aliases,
    catalog_ids,
    get_entry,
    suggest,
)
from tuneforge.models.memory import ModelShape
from tuneforge.models.targets import TARGET_MODULES, TARGET_PARAMETERS

REQUIRED_FAMILIES = {
    "Llama 2",
    "Llama 3",
    "Llama 3.1",
    "Llama 3.2",
    "Code Llama",
    "TinyLlama",
    "Mistral",
    "Mixtral",
    "Qwen2",
    "Qwen2.5",
    "Qwen3",
    "Phi-3",
    "Gemma",
    "Gemma 2",
    "GPT-2",
    "OPT",
    "Falcon",
    "GPT-J",
    "GPT-NeoX",
    "Pythia",
    "StableLM",
    "SmolLM2",
}


def test_catalog_covers_the_major_open_models():
    assert len(CATALOG) >= 40
    assert len({e.architecture for e in CATALOG}) >= 12
    families = {e.family for e in CATALOG} | {e.family.split(" ")[0] for e in CATALOG}
    assert families >= REQUIRED_FAMILIES, REQUIRED_FAMILIES - families
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in catalog_ids()  # the default model


def test_entries_are_well_formed():
    ids = [e.id for e in CATALOG]
    aliases = [e.alias for e in CATALOG]
    assert len(set(ids)) == len(ids) and len(set(aliases)) == len(aliases)
    for e in CATALOG:
        assert e.id.count("/") == 1 and e.alias == e.alias.lower() and " " not in e.alias, e.id
        assert e.architecture in PROVEN_ARCHITECTURES and e.architecture in TARGET_MODULES, e.id
        assert e.prompt_style in PROMPT_STYLES, e.id
        assert e.params_b > 0 and e.context_length >= 1024 and e.licence, e.id
        assert e.target_modules == TARGET_MODULES[e.architecture]
        if e.active_params_b is not None:  # mixture of experts
            assert e.active_params_b < e.params_b and e.architecture in TARGET_PARAMETERS, e.id
            assert e.target_parameters == TARGET_PARAMETERS[e.architecture]
        else:
            assert e.target_parameters == []
        assert e.qlora_4bit == (e.architecture not in QLORA_NOT_QUANTIZED)
    # An alias or a name after the owner never points at two different models.
    names = catalog_aliases()
    for e in CATALOG:
        assert names[e.alias] == e.id and names[e.id.split("/")[1].lower()] == e.id


def _unique_configs():
    seen = {}
    for e in CATALOG:
        seen.setdefault((e.architecture, tuple(sorted(e.config.items()))), e)
    return list(seen.values())


@pytest.mark.parametrize("entry", _unique_configs(), ids=lambda e: e.alias)
def test_published_size_matches_the_recorded_config(entry):
    """The config sizes rebuild a model (on the meta device) with the published parameter count, the LoRA targets
    exist in it, and the fast layer-extrapolated shape equals the full build."""
    config = entry.transformers_config()
    full = ModelShape.from_config(config)
    assert full.params == pytest.approx(entry.params_b * 1e9, rel=0.02), full.params
    assert set(entry.target_modules) <= set(full.lora_dims), (entry.target_modules, sorted(full.lora_dims))
    assert sorted(full.expert_lora_dims) == sorted(entry.target_parameters)
    assert ModelShape.from_config(config, extrapolate=True) == full
    # Everything else in the catalog shares these sizes.
    for other in CATALOG:
        if other.architecture == entry.architecture and other.config == entry.config:
            assert other.params_b == pytest.approx(entry.params_b, rel=0.01), other.id


def test_lookup_by_id_alias_or_name():
    e = get_entry("meta-llama/Llama-3.1-8B-Instruct")
    assert e is not None and e.alias == "llama-3.1-8b-instruct"
    assert get_entry("META-LLAMA/llama-3.1-8b-instruct") is e
    assert get_entry("llama-3.1-8b-instruct") is e
    assert get_entry("Llama-3.1-8B-Instruct") is e  # the name after the owner
    assert get_entry("gpt2-xl").id == "openai-community/gpt2-xl"
    assert get_entry("no-such-model") is None and get_entry("someone/Llama-3.1-8B-Instruct") is None


@pytest.mark.parametrize(
    "typo, expected",
    [
        ("lama-3-8b", "llama-3-8b"),
        ("mistral-7b-instruct", "mistral-7b-instruct-v0.2"),
        ("qwen-2.5-7b-instruct", "qwen2.5-7b-instruct"),
        ("meta-llama/Llama-3-8B-Instruct", "meta-llama/Meta-Llama-3-8B-Instruct"),
        ("tinyllama", "tinyllama-1.1b-chat"),
        ("EleutherAI/pythia-70m", "EleutherAI/pythia-160m"),
    ],
)
def test_close_matches(typo, expected):
    assert expected in suggest(typo), suggest(typo)


def test_every_alias_resolves_to_its_entry(monkeypatch):
    """Each alias reaches its hub id (offline: the loader then says it is in the catalog but cannot be downloaded,
    or that it is too large for this machine)."""
    from tuneforge.models import loader

    monkeypatch.setattr(loader, "_hf_cached_snapshot", lambda repo_id: None)
    for e in CATALOG:
        if e.id == loader.SMOLLM2_ID:
            continue  # bundled with tuneforge: resolves without the hub (tests/test_e2e_smollm2.py)
        with pytest.raises(TuneforgeError) as err:
            loader.resolve_model(e.alias)
        message = str(err.value)
        assert f"in the catalog ({e.id})" in message or f"{e.id!r} (" in message, message
