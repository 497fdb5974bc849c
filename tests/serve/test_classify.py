"""Serving classifiers: `POST /v1/classify` in vLLM's shape over real HTTP, and `tuneforge predict` on files."""

from __future__ import annotations

import csv
import json

import pytest
import requests
import torch
from serve_helpers import LiveServer

from tiny import save_tiny_classifier_base
from tuneforge.adapter_card import classification_card
from tuneforge.cli import main
from tuneforge.inference import load_for_inference
from tuneforge.models.loader import resolve_model
from tuneforge.models.lora import LoraSettings, apply_lora, load_base_model
from tuneforge.runtime import pick_runtime

LABELS = ["negative", "neutral", "positive"]
TEXTS = ["the quick fox is good", "bad dog", "a date over the lazy dog"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny BERT classifier adapter with a nonzero LoRA update and head, and its card, as training writes it."""
    root = tmp_path_factory.mktemp("classifier")
    base_dir = save_tiny_classifier_base(root / "base", "bert")
    resolved = resolve_model(str(base_dir))
    base = load_base_model(resolved, pick_runtime("fp32"), labels=LABELS, pad_token_id=0)
    model, _, _ = apply_lora(
        base,
        LoraSettings(r=4, alpha=8),
        model_id=resolved.model_id,
        quantized=False,
        gradient_checkpointing=False,
        seed=0,
        classification=True,
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.5)
    adapter = root / "adapter"
    model.save_pretrained(adapter)
    classification_card(LABELS, text_column="text", max_length=32, base_model={}).write(adapter)
    return base_dir, adapter


def _reference_probs(base_dir, adapter, texts):
    """The unmerged PEFT model's probabilities, one text at a time (no padding)."""
    model, tok = load_for_inference(str(base_dir), adapter, device="cpu")
    with torch.no_grad():
        return [model(**tok(t, return_tensors="pt")).logits.float().softmax(-1)[0].tolist() for t in texts]


@pytest.fixture(scope="module")
def server(classifier):
    from tuneforge.serve.app import create_app
    from tuneforge.serve.classify import classifier_pool

    base_dir, adapter = classifier
    pool = classifier_pool({"sentiment": str(adapter)}, model_path=str(base_dir), device="cpu")
    with LiveServer(create_app(None, api_key="s3cret", classifiers=pool)) as live:
        yield live


def _post(server, body, key="s3cret"):
    return requests.post(server.url + "/v1/classify", json=body, headers={"Authorization": f"Bearer {key}"})


def test_classify_answers_in_vllms_shape_with_the_adapters_probabilities(server, classifier):
    r = _post(server, {"model": "sentiment", "input": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "sentiment" and body["id"].startswith("classify-")
    reference = _reference_probs(*classifier, TEXTS)
    for i, item in enumerate(body["data"]):
        assert item["index"] == i and item["num_classes"] == 3
        assert item["probs"] == pytest.approx(reference[i], abs=1e-5)  # merged, batched, padded: same answer
        assert item["label"] == LABELS[max(range(3), key=reference[i].__getitem__)]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(TEXTS)
    assert body["usage"]["completion_tokens"] == 0

    one = _post(server, {"model": "sentiment", "input": TEXTS[1]}).json()
    assert [d["label"] for d in one["data"]] == [body["data"][1]["label"]]
    assert requests.get(server.url + "/health").json()["classifiers"] == ["sentiment"]


def test_classify_errors_in_openai_shape(server):
    r = _post(server, {"model": "nope", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    assert "classifiers: sentiment" in r.json()["error"]["message"]
    r = _post(server, {"model": "sentiment", "input": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    assert _post(server, {"model": "sentiment", "input": "x"}, key="wrong").status_code == 401
    assert _post(server, {"model": "sentiment"}).status_code == 400


def test_predict_labels_a_file_as_jsonl_and_csv(classifier, tmp_path, capsys):
    base_dir, adapter = classifier
    data = tmp_path / "new.jsonl"
    data.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    out = tmp_path / "labelled.jsonl"
    assert main(["predict", str(adapter), str(data), "-o", str(out), "-m", str(base_dir), "--batch-size", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    reference = _reference_probs(base_dir, adapter, TEXTS)
    assert [r["id"] for r in rows] == [0, 1, 2] and list(rows[0]["probs"]) == LABELS
    for r, ref in zip(rows, reference, strict=True):
        assert list(r["probs"].values()) == pytest.approx(ref, abs=1e-5)
        assert r["predicted_label"] == LABELS[max(range(3), key=ref.__getitem__)]

    out_csv = tmp_path / "labelled.csv"
    assert main(["predict", str(adapter), str(data), "-o", str(out_csv), "-m", str(base_dir)]) == 0
    table = list(csv.DictReader(out_csv.open()))
    assert list(table[0]) == ["id", "text", "predicted_label", "prob_negative", "prob_neutral", "prob_positive"]
    assert [t["predicted_label"] for t in table] == [r["predicted_label"] for r in rows]

    capsys.readouterr()
    assert main(["predict", str(adapter), str(data), "-o", str(out), "-m", str(base_dir)]) == 2  # never overwritten
    assert "exists" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"text": " "}) + "\n" + json.dumps({"x": 1}) + "\n")
    assert main(["predict", str(adapter), str(bad), "-o", str(tmp_path / "b.jsonl"), "-m", str(base_dir)]) == 2
    err = capsys.readouterr().err
    assert "2 rows cannot be labelled: bad.jsonl line 2: 'text' is empty; bad.jsonl line 3: 'text' is missing" in err
    assert not (tmp_path / "b.jsonl").exists()


def test_serve_routes_classifier_adapters_to_classify_and_loads_no_lm_for_them(classifier):
    from tuneforge.serve.app import build_serving

    base_dir, adapter = classifier
    engine, pool, _ = build_serving(str(base_dir), {"sentiment": str(adapter)})
    assert engine is None and pool is not None and pool.names() == ["sentiment"]
    assert pool.get("sentiment").labels == LABELS
