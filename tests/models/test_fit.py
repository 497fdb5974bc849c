"""Bad input: unknown model ids get close matches; models too large for the device are refused, with the numbers,
before anything is downloaded or loaded. The hub is offline here (HF_HUB_OFFLINE=1, see conftest), so every failure
is instant: `nothing_loads` fails a test that opens a connection (checked, not timed: a loaded machine is slow)."""

from __future__ import annotations

import socket

import pytest

from tiny import make_tiny_spec, save_tiny, write_qa_data
from tuneforge.cli import main
from tuneforge.errors import TuneforgeError
from tuneforge.models import fit, loader
from tuneforge.models.loader import resolve_model
from tuneforge.models.memory import GiB, TrainingSetup


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if anything tries to load or download weights, or finds a cached copy."""
    import huggingface_hub
    import transformers

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded or downloaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", forbidden)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", forbidden)
    monkeypatch.setattr(loader, "_hf_cached_snapshot", lambda repo_id: None)

    def no_network(*args, **kwargs):
        raise AssertionError("the network was tried: an offline failure must not wait on a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)


def _device_memory(monkeypatch, gib: float):
    monkeypatch.setattr(fit, "device_memory", lambda device=None: (int(gib * GiB), "available system memory"))


def _error(name: str, **kwargs) -> str:
    with pytest.raises(TuneforgeError) as err:
        resolve_model(name, **kwargs)
    return str(err.value)


def test_unknown_name_lists_close_matches(nothing_loads):
    message = _error("lama-3-8b")
    assert "not a catalog id or alias" in message and "`tuneforge models`" in message
    assert "close matches: llama-3-8b, llama-3-8b-instruct" in message


def test_unknown_hub_id_offline_lists_close_matches(nothing_loads):
    message = _error("meta-llama/Llama-3-8B-Instruct")
    assert "not in the catalog, not a local folder, not in the Hugging Face cache" in message
    assert "HF_HUB_OFFLINE" in message
    assert "close matches: meta-llama/Meta-Llama-3-8B-Instruct" in message
    assert "close matches" not in _error("nobody/nothing-like-any-model")


def test_catalog_model_not_cached_and_offline(nothing_loads):
    assert "is in the catalog (openai-community/gpt2) but not in the Hugging Face cache" in _error("gpt2")
    assert "gated model" in _error("gemma-2b-it")


def test_too_large_catalog_model_is_refused_with_the_numbers(monkeypatch, nothing_loads):
    _device_memory(monkeypatch, 8)
    message = _error("llama-3-70b-instruct")
    assert "'meta-llama/Meta-Llama-3-70B-Instruct' (70.55B parameters) is too large for this device" in message
    assert "needs at least" in message and "even as QLoRA (4-bit)" in message
    assert "available system memory is 8.0 GiB" in message
    assert "TUNEFORGE_SKIP_MEMORY_CHECK=1" in message
    # A model that fits gets past the check (to the offline error).
    assert "too large" not in _error("qwen2.5-0.5b-instruct")


def test_training_setup_decides(monkeypatch, nothing_loads):
    _device_memory(monkeypatch, 12)
    lora = TrainingSetup(method="lora", batch_size=8, seq_len=2048, device="cuda")
    message = _error("llama-3.1-8b", setup=lora)
    assert "needs about" in message and "as LoRA on cuda, bf16, batch 8 x 2048 tokens, r=8" in message
    assert "try use_quantization (QLoRA)" in message
    qlora = TrainingSetup(method="qlora", batch_size=1, seq_len=512, gradient_checkpointing=True, device="cuda")
    assert "too large" not in _error("llama-3.1-8b", setup=qlora)


def test_local_folder_is_measured_from_its_config(monkeypatch, tmp_path):
    folder = save_tiny(tmp_path / "tiny")
    _device_memory(monkeypatch, 0.1)  # less than the interpreter itself
    message = _error(str(folder))
    assert "too large for this device" in message and "0.1 GiB" in message
    monkeypatch.setenv(fit.SKIP_ENV, "1")
    assert resolve_model(str(folder)).is_local


def test_real_device_memory_fits_a_tiny_model(tmp_path):
    folder = save_tiny(tmp_path / "tiny")
    estimate = fit.ensure_fits(str(folder), config_dir=folder)
    assert estimate is not None and estimate.total < 2 * GiB


def test_train_refuses_before_writing_or_loading(monkeypatch, tmp_path, capsys):
    folder = save_tiny(tmp_path / "tiny")
    data = write_qa_data(tmp_path / "qa.jsonl")
    _device_memory(monkeypatch, 0.1)
    out = tmp_path / "run"
    code = main(["train", str(_write_spec(make_tiny_spec(folder, data), tmp_path)), "--output", str(out), "-q"])
    assert code == 2 and not out.exists() and not out.with_name("run.partial").exists()
    assert "is too large for this device" in capsys.readouterr().err


def _write_spec(spec, tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(spec.to_json())
    return path


def test_cli_prints_the_refusal(monkeypatch, capsys, nothing_loads):
    _device_memory(monkeypatch, 4)
    assert main(["generate", "hi", "--model", "mixtral-8x7b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tuneforge: error: --model: 'mistralai/Mixtral-8x7B-v0.1' (46.70B parameters) is too large")


@pytest.mark.parametrize("catalog_twin, refused", [("llama-3.1-70b-instruct", True), ("qwen2.5-0.5b-instruct", False)])
def test_hub_model_outside_the_catalog_is_sized_from_its_config_json(catalog_twin, refused, monkeypatch, tmp_path):
    """Only config.json is fetched (here: served from a folder), then the model is refused or passed to the loader."""
    import huggingface_hub

    from tuneforge.models.catalog import get_entry

    get_entry(catalog_twin).transformers_config().save_pretrained(tmp_path)
    fetched = []
    monkeypatch.setattr(loader, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(loader, "_hf_cached_snapshot", lambda repo_id: None)
    monkeypatch.setattr(
        huggingface_hub,
        "hf_hub_download",
        lambda repo_id, filename, **kw: fetched.append(filename) or str(tmp_path / filename),
    )
    _device_memory(monkeypatch, 16)
    if refused:
        assert "'someone/private-70b' (70.55B parameters) is too large" in _error("someone/private-70b")
    else:
        assert resolve_model("someone/small-model").load_from == "someone/small-model"
    assert fetched == ["config.json"]
