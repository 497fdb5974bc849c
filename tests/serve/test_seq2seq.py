"""Serving seq2seq adapters: OpenAI's `POST /v1/completions` over real HTTP next to a causal engine, the refusals
(chat route, token-id prompts), streaming, and `tuneforge predict` writing each row's generated target."""

from __future__ import annotations

import csv
import json

import pytest
import requests
import torch
from serve_helpers import LiveServer

from tiny import save_tiny_seq2seq
from tuneforge.adapter_card import seq2seq_card
from tuneforge.cli import main
from tuneforge.inference import load_for_inference
from tuneforge.models.loader import resolve_model
from tuneforge.models.lora import LoraSettings, apply_lora, load_base_model
from tuneforge.runtime import pick_runtime

SOURCES = ["reverse: fox dog", "reverse: the quick lazy dog", "reverse: over"]


@pytest.fixture(scope="module")
def t5_adapter(tmp_path_factory):
    """A tiny T5 adapter with a nonzero LoRA update, and its card, as training writes them."""
    root = tmp_path_factory.mktemp("seq2seq")
    base_dir = save_tiny_seq2seq(root / "base", "t5")
    resolved = resolve_model(str(base_dir))
    base = load_base_model(resolved, pick_runtime("fp32"), seq2seq=True)
    model, _, _ = apply_lora(
        base,
        LoraSettings(r=4, alpha=8),
        model_id=resolved.model_id,
        quantized=False,
        gradient_checkpointing=False,
        seed=0,
        seq2seq=True,
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.5)
    adapter = root / "adapter"
    model.save_pretrained(adapter)
    seq2seq_card(text_column="source", target_column="target", max_length=32).write(adapter)
    return base_dir, adapter


def _reference(base_dir, adapter, sources, max_new_tokens=12):
    """The unmerged PEFT model's greedy generations, one source at a time (no padding)."""
    model, tok = load_for_inference(str(base_dir), adapter, device="cpu")
    out = []
    with torch.no_grad():
        for s in sources:
            ids = model.generate(**tok(s, return_tensors="pt"), max_new_tokens=max_new_tokens, do_sample=False)
            out.append(tok.decode(ids[0], skip_special_tokens=True).strip())
    return out


@pytest.fixture(scope="module")
def server(t5_adapter, engine):
    from tuneforge.serve.app import create_app
    from tuneforge.serve.seq2seq import seq2seq_pool

    base_dir, adapter = t5_adapter
    pool = seq2seq_pool({"reverser": str(adapter)}, model_path=str(base_dir), device="cpu")
    with LiveServer(create_app(engine, seq2seq=pool)) as live:
        yield live


def _post(server, path, body):
    return requests.post(server.url + path, json=body)


def test_completions_generate_with_the_merged_adapter_in_openais_shape(server, t5_adapter):
    r = _post(server, "/v1/completions", {"model": "reverser", "prompt": SOURCES, "max_tokens": 12, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "reverser" and body["id"].startswith("cmpl-")
    reference = _reference(*t5_adapter, SOURCES)
    assert [c["text"] for c in body["choices"]] == reference  # merged, batched, padded: the same generations
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(c["finish_reason"] in ("stop", "length") for c in body["choices"])
    usage = body["usage"]
    assert usage["prompt_tokens"] > len(SOURCES) and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    one = _post(
        server,
        "/v1/completions",
        {"model": "reverser", "prompt": SOURCES[0], "max_tokens": 12, "n": 2, "temperature": 0},
    ).json()
    assert [c["text"] for c in one["choices"]] == [reference[0]] * 2 and [c["index"] for c in one["choices"]] == [0, 1]

    short = _post(
        server, "/v1/completions", {"model": "reverser", "prompt": SOURCES[1], "max_tokens": 2, "temperature": 0}
    ).json()
    assert short["choices"][0]["finish_reason"] == "length" and short["usage"]["completion_tokens"] == 2

    sampled = [
        _post(
            server,
            "/v1/completions",
            {"model": "reverser", "prompt": SOURCES[0], "max_tokens": 8, "seed": 7, "temperature": 1.5},
        ).json()["choices"][0]["text"]
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]  # a seed makes sampling reproducible


def test_the_causal_engine_still_answers_and_models_lists_both(server):
    r = _post(server, "/v1/completions", {"model": "tiny", "prompt": "The quick", "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "tiny" and r.json()["choices"][0]["text"]
    chat = _post(
        server,
        "/v1/chat/completions",
        {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )
    assert chat.status_code == 200, chat.text
    ids = [m["id"] for m in requests.get(server.url + "/v1/models").json()["data"]]
    assert "tiny" in ids and "alpha" in ids and ids[-1] == "reverser"
    assert requests.get(server.url + "/v1/models/reverser").json()["id"] == "reverser"
    assert requests.get(server.url + "/v1/models/tiny").json()["id"] == "tiny"
    assert requests.get(server.url + "/health").json()["seq2seq"] == ["reverser"]


def _events(server, body) -> list:
    with requests.post(server.url + "/v1/completions", json={**body, "stream": True}, stream=True) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
        lines = [line[len("data: ") :] for line in r.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_streaming_sends_the_same_completion_in_pieces(server):
    # Sampled with a seed: the same text either way, and the random adapter's text then has spaces (transformers'
    # streamer sends text up to the last space, and holds byte-level junk back until it decodes).
    body = {"model": "reverser", "prompt": "x", "max_tokens": 16, "temperature": 1.0, "seed": 3}
    whole = _post(server, "/v1/completions", body).json()
    events = _events(server, {**body, "stream_options": {"include_usage": True}})
    pieces = [e["choices"][0]["text"] for e in events if e["choices"]]
    assert "".join(pieces).strip() == whole["choices"][0]["text"] and len([p for p in pieces if p]) > 1
    assert events[-2]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert events[-1]["choices"] == [] and events[-1]["usage"] == whole["usage"]
    assert all(e["object"] == "text_completion" and e["model"] == "reverser" for e in events)

    # A stop string ends the stream before it, with finish_reason "stop".
    text = whole["choices"][0]["text"]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = [e for e in _events(server, {**body, "stop": [stop]}) if e["choices"]]
    assert "".join(e["choices"][0]["text"] for e in cut).strip() == text[: text.find(stop)].strip()
    assert cut[-1]["choices"][0]["finish_reason"] == "stop"


def test_refusals_name_the_field_or_the_route(server):
    chat = _post(server, "/v1/chat/completions", {"model": "reverser", "messages": [{"role": "user", "content": "x"}]})
    assert chat.status_code == 400
    assert "'reverser' is a seq2seq (encoder-decoder) model" in chat.json()["error"]["message"]
    assert "POST /v1/completions" in chat.json()["error"]["message"]
    for extra, param in (
        ({"stream": True, "prompt": ["a", "b"]}, "stream"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"logprobs": 2}, "logprobs"),
    ):
        r = _post(server, "/v1/completions", {"model": "reverser", "prompt": "x", **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = _post(server, "/v1/completions", {"model": "nope", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_predict_writes_the_generated_target_per_row(t5_adapter, tmp_path, capsys):
    base_dir, adapter = t5_adapter
    data = tmp_path / "new.jsonl"
    data.write_text("".join(json.dumps({"id": i, "source": s}) + "\n" for i, s in enumerate(SOURCES)))
    out = tmp_path / "generated.jsonl"
    args = ["predict", str(adapter), str(data), "-m", str(base_dir), "--max-new-tokens", "12"]
    assert main([*args, "-o", str(out), "--batch-size", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert [r["generated_text"] for r in rows] == _reference(base_dir, adapter, SOURCES)
    out_csv = tmp_path / "generated.csv"
    assert main([*args, "-o", str(out_csv)]) == 0
    table = list(csv.DictReader(out_csv.open()))
    assert list(table[0]) == ["id", "source", "generated_text"]
    assert [t["generated_text"] for t in table] == [r["generated_text"] for r in rows]
    capsys.readouterr()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"source": "ok"}) + "\n" + json.dumps({"source": ""}) + "\n")
    assert main(["predict", str(adapter), str(bad), "-o", str(tmp_path / "b.jsonl"), "-m", str(base_dir)]) == 2
    assert "bad.jsonl line 2: 'source' is empty" in capsys.readouterr().err


def test_serve_routes_seq2seq_adapters_to_their_pool_and_loads_no_lm_for_them(t5_adapter):
    from tuneforge.serve.app import build_serving

    base_dir, adapter = t5_adapter
    engine, classifiers, seq2seq = build_serving(str(base_dir), {"reverser": str(adapter)})
    assert engine is None and classifiers is None and seq2seq is not None and seq2seq.names() == ["reverser"]


def test_generate_and_merge_treat_a_seq2seq_adapter_as_one(t5_adapter, tmp_path, capsys):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    base_dir, adapter = t5_adapter
    expected = _reference(base_dir, adapter, SOURCES[:1])[0]
    # no chat template around the source, and only the decoder's text comes back
    assert main(["generate", "--model", str(base_dir), "--adapter", str(adapter), "--max-new-tokens", "12",
                 SOURCES[0]]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip() == expected
    assert main(["merge", str(adapter), "-o", str(tmp_path / "merged"), "--model", str(base_dir)]) == 0
    merged = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged")
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    ids = merged.generate(**tok(SOURCES[0], return_tensors="pt"), max_new_tokens=12, do_sample=False)
    assert tok.decode(ids[0], skip_special_tokens=True).strip() == expected
