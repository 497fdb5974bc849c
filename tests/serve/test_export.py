"""`tuneforge export`: the merged Hugging Face model (tiny model) and GGUF files (real SmolLM2: llama.cpp's
converter only knows real tokenizers), read back with the `gguf` package, transformers and, when installed,
llama-cpp-python."""

from __future__ import annotations

import json

import pytest
import torch
from serve_helpers import craft_smollm2_adapter

from tuneforge.cli import main
from tuneforge.export import convert_to_gguf, inspect_gguf


def logits(model_dir_or_model, ids, adapter=None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir_or_model, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model.eval()(torch.tensor([ids])).logits[0]


def test_merged_export_equals_base_plus_adapter(tiny_model_dir, adapters, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["export", str(adapters["alpha"]), "--merged", str(out), "--model", str(tiny_model_dir)]) == 0
    assert f"merged model written to {out}" in capsys.readouterr().out
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not list(out.glob("adapter_*"))  # a plain model: transformers loads it without PEFT
    ids = [5, 17, 42, 99, 7, 3, 250]
    merged = logits(out, ids)
    unmerged = logits(tiny_model_dir, ids, adapter=adapters["alpha"])
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert not torch.allclose(merged, logits(tiny_model_dir, ids), atol=1e-3)  # the adapter is in there


def test_export_errors(adapters, tmp_path, capsys):
    assert main(["export", str(adapters["alpha"])]) == 2
    assert "give --merged DIR and/or --gguf FILE.gguf" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), "--merged", str(tmp_path / "m")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "x.gguf").write_bytes(b"")
    assert main(["export", str(adapters["alpha"]), "--gguf", str(tmp_path / "x.gguf")]) == 2
    assert "exists already" in capsys.readouterr().err
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "f").write_text("")
    assert main(["export", str(adapters["alpha"]), "--merged", str(tmp_path / "m")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["classification", "image_classification", "seq2seq"])
def test_cli_refuses_gguf_for_every_task_but_causal_lm(adapters, tmp_path, capsys, task):
    """The CLI gives the export route's answer: GGUF only for decoder-only LMs, refused before the merge starts."""
    import shutil

    from tuneforge.adapter_card import AdapterCard

    adapter = shutil.copytree(adapters["alpha"], tmp_path / "adapter")
    AdapterCard(data_format=task, task=task).write(adapter)
    assert main(["export", str(adapter), "--gguf", str(tmp_path / "c.gguf")]) == 2
    err = capsys.readouterr().err
    assert "GGUF is for decoder-only text-generation models" in err and f"data_config.task '{task}'" in err
    assert "--merged DIR" in err and not (tmp_path / "c.gguf").exists()


@pytest.mark.slow
def test_gguf_of_a_tokenizer_the_converter_does_not_know_is_a_clear_error(tiny_model_dir, adapters, tmp_path, capsys):
    code = main(["export", str(adapters["alpha"]), "--gguf", str(tmp_path / "t.gguf"), "--model", str(tiny_model_dir)])
    assert code == 2
    assert "GGUF conversion of" in capsys.readouterr().err
    assert not (tmp_path / "t.gguf").exists() and not (tmp_path / "t.gguf.partial").exists()


@pytest.mark.slow
def test_gguf_export_of_smollm2_reads_back_and_generates(tmp_path, capsys):
    from transformers import AutoTokenizer

    adapter = craft_smollm2_adapter(tmp_path / "adapter")
    merged, f16 = tmp_path / "merged", tmp_path / "model-f16.gguf"
    assert main(["export", str(adapter), "--merged", str(merged), "--gguf", str(f16), "--gguf-type", "f16"]) == 0
    out = capsys.readouterr().out
    assert "GGUF (f16) written to" in out and "verified" in out

    config = json.loads((merged / "config.json").read_text())
    info = inspect_gguf(f16)
    assert info.architecture == "llama" and info.file_type == 1
    assert info.name == f"SmolLM2-135M-Instruct-{tmp_path.name}"  # the model's name, not the folder's ("Merged")
    assert info.chat_template == AutoTokenizer.from_pretrained(merged).chat_template
    assert info.block_count == config["num_hidden_layers"] == 30 and info.embedding_length == 576
    # 9 tensors per block + token embedding + final norm (the output head is tied to the embedding)
    assert info.tensor_count == 9 * 30 + 2
    q8 = convert_to_gguf(merged, tmp_path / "model-q8_0.gguf", outtype="q8_0")
    assert q8.file_type == 7 and q8.tensor_count == info.tensor_count and q8.size_bytes < 0.6 * info.size_bytes

    # transformers reads the GGUF back (dequantized) and computes what the merged model computes.
    from transformers import AutoModelForCausalLM

    tok = AutoTokenizer.from_pretrained(merged)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    reference = logits(merged, ids)
    for gguf_file, tol in ((f16, 0.999), (q8.path, 0.99)):
        model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf_file.name, dtype=torch.float32)
        with torch.no_grad():
            got = model.eval()(torch.tensor([ids])).logits[0]
        cos = torch.nn.functional.cosine_similarity(got[-1], reference[-1], dim=0)
        assert cos > tol, (gguf_file.name, float(cos))
        assert int(got[-1].argmax()) == int(reference[-1].argmax())

    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    llm = llama_cpp.Llama(model_path=str(f16), n_ctx=256, n_threads=2, verbose=False)
    first = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    assert first == ids  # same tokenizer in the GGUF
    text = llm(prompt, max_tokens=16, temperature=0)["choices"][0]["text"]
    hf = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = hf.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids) :]
    assert text == tok.decode(expected, skip_special_tokens=True)  # llama.cpp on the f16 GGUF == merged HF model


@pytest.mark.slow
def test_gguf_of_a_template_trained_adapter_carries_its_training_prompt(tmp_path):
    """llama.cpp, Ollama and LM Studio prompt a GGUF through its tokenizer.chat_template: for an adapter trained on
    a prompt template, that is the training prompt (and the model's own with --chat-template model)."""
    from tuneforge.adapter_card import build_card
    from tuneforge.data.formats import Template, TemplateFormat
    from tuneforge.export import export

    adapter = craft_smollm2_adapter(tmp_path / "orders" / "adapter")
    card = build_card(TemplateFormat(Template.parse("Order: {text}\nJSON: {json}")), adds_bos=False, rows=[])
    card.write(adapter)
    trained = export(adapter, gguf=tmp_path / "t.gguf", gguf_type="q8_0")["gguf"]
    assert trained["name"] == "SmolLM2-135M-Instruct-orders" and trained["chat_template"] == card.chat_template
    model = export(adapter, gguf=tmp_path / "m.gguf", gguf_type="q8_0", chat_template="model")["gguf"]
    assert "<|im_start|>" in model["chat_template"]
