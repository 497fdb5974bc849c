"""The exact base: adapters record it (path + weight hashes), `tuneforge models export-base` writes it as a Hugging
Face folder and points adapters at it so plain PEFT loads them offline, and a base that cannot be found is one
clear error, before any load."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

from tiny import make_tiny_spec, write_qa_data
from tuneforge.cli import main


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    from tuneforge.train.recipe import train

    root = tmp_path_factory.mktemp("base-run")
    train(make_tiny_spec(tiny_model_dir, write_qa_data(root / "qa.jsonl"), max_steps=2), root / "run", quiet=True)
    return root / "run" / "adapter"


def test_export_base_points_adapters_at_it_and_plain_peft_loads_offline(
    tiny_model_dir, adapter, tmp_path, capsys, monkeypatch
):
    mine = tmp_path / "adapter"
    shutil.copytree(adapter, mine)
    assert main(["models", "export-base", str(tiny_model_dir), str(tmp_path / "base"), "--adapter", str(mine)]) == 0
    out = capsys.readouterr().out
    digest = hashlib.sha256((tiny_model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert f"sha256 {digest}  model.safetensors" in out and "its recorded base hash matches" in out
    assert json.loads((mine / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tmp_path / "base")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub: everything must come from local files
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    plain = AutoPeftModelForCausalLM.from_pretrained(str(mine)).eval()
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(adapter)).eval()
    ids = torch.tensor([[5, 17, 42, 99]])
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, reference(ids).logits, atol=1e-6)


def test_export_base_refuses_an_adapter_of_other_weights_and_a_used_folder(tiny_model_dir, adapter, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(adapter, other)
    card = json.loads((other / "tuneforge_adapter.json").read_text())
    card["base_model"]["weights_sha256"] = {"model.safetensors": "0" * 64}
    (other / "tuneforge_adapter.json").write_text(json.dumps(card))
    before = (other / "adapter_config.json").read_text()
    assert main(["models", "export-base", str(tiny_model_dir), str(tmp_path / "b"), "--adapter", str(other)]) == 2
    err = capsys.readouterr().err
    assert "was trained on a base with other weights (model.safetensors 000000000000)" in err
    assert (other / "adapter_config.json").read_text() == before  # left unchanged
    assert main(["models", "export-base", str(tiny_model_dir), str(tmp_path / "b")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_an_unreachable_base_is_one_clear_error_or_the_recorded_folder(adapter, tmp_path, monkeypatch):
    from tuneforge.errors import TuneforgeError
    from tuneforge.inference import load_for_inference

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    moved = tmp_path / "adapter"
    shutil.copytree(adapter, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/not-here-model"
    (moved / "adapter_config.json").write_text(json.dumps(config))
    # The hub id is unknown here, but the card's recorded folder exists on this machine: that exact base is used.
    model, _ = load_for_inference(adapter_dir=moved, device="cpu")
    assert model.base_model.model.config.num_hidden_layers == 2
    (moved / "tuneforge_adapter.json").unlink()
    with pytest.raises(TuneforgeError) as exc:
        load_for_inference(adapter_dir=moved, device="cpu")
    assert str(exc.value).startswith("the adapter's base model 'someone/not-here-model' cannot be loaded here (")
    assert "give it with --model DIR" in str(exc.value) and "tuneforge models export-base" in str(exc.value)
