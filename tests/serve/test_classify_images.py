"""Serving image classifiers: `POST /v1/classify` with image data URLs over real HTTP, in the same shape as the text
classifier's, and `tuneforge predict` on a folder of images and on a file with an image column. Synthetic images."""

from __future__ import annotations

import base64
import csv
import json

import pytest
import requests
import torch
from serve_helpers import LiveServer

from tiny_images import coloured_image, png_bytes, save_tiny_vision_base, write_image_csv, write_image_folder
from tuneforge.adapter_card import classification_card
from tuneforge.cli import main
from tuneforge.inference import load_for_inference
from tuneforge.models.loader import load_image_processor, resolve_model
from tuneforge.models.lora import LoraSettings, apply_lora, load_base_model
from tuneforge.runtime import pick_runtime
from tuneforge.train.tasks import pixel_batch

LABELS = ["blue", "red"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny ViT image classifier adapter with a nonzero LoRA update and head, its processor and card."""
    root = tmp_path_factory.mktemp("image_classifier")
    base_dir = save_tiny_vision_base(root / "base", "vit")
    resolved = resolve_model(str(base_dir))
    base = load_base_model(resolved, pick_runtime("fp32"), labels=LABELS, vision=True)
    model, _, _ = apply_lora(
        base,
        LoraSettings(r=4, alpha=8),
        model_id=resolved.model_id,
        quantized=False,
        gradient_checkpointing=False,
        seed=0,
        vision=True,
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.5)
    adapter = root / "adapter"
    model.save_pretrained(adapter)
    load_image_processor(str(base_dir)).save_pretrained(adapter)
    classification_card(LABELS, task="image_classification", image_column="image", base_model={}).write(adapter)
    return base_dir, adapter


def _reference_probs(base_dir, adapter, images):
    model, processor = load_for_inference(str(base_dir), adapter, device="cpu")
    with torch.no_grad():
        return model(pixel_values=pixel_batch(processor, images)).logits.float().softmax(-1).tolist()


def _data_url(label, seed):
    return "data:image/png;base64," + base64.b64encode(png_bytes(label, seed)).decode()


@pytest.fixture(scope="module")
def server(classifier):
    from tuneforge.serve.app import create_app
    from tuneforge.serve.classify import classifier_pool

    base_dir, adapter = classifier
    pool = classifier_pool({"colours": str(adapter)}, model_path=str(base_dir), device="cpu")
    with LiveServer(create_app(None, api_key="s3cret", classifiers=pool)) as live:
        yield live


def _post(server, body):
    return requests.post(server.url + "/v1/classify", json=body, headers={"Authorization": "Bearer s3cret"})


def test_classify_images_in_the_text_classifiers_shape(server, classifier):
    urls = [_data_url("red", 0), _data_url("blue", 1), _data_url("red", 2)]
    r = _post(server, {"model": "colours", "input": urls})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "colours" and body["usage"]["prompt_tokens"] == 0
    reference = _reference_probs(*classifier, [coloured_image(c, s) for c, s in (("red", 0), ("blue", 1), ("red", 2))])
    for i, item in enumerate(body["data"]):
        assert item["index"] == i and item["num_classes"] == 2
        assert item["probs"] == pytest.approx(reference[i], abs=1e-4)
        assert item["label"] == LABELS[max(range(2), key=reference[i].__getitem__)]
    one = _post(server, {"model": "colours", "input": urls[0]}).json()
    assert len(one["data"]) == 1 and one["data"][0]["probs"] == pytest.approx(body["data"][0]["probs"], abs=1e-5)


def test_non_image_input_is_refused_naming_its_index(server):
    bad = [_data_url("red", 0), "a sentence, not an image"]
    r = _post(server, {"model": "colours", "input": bad})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[1]"
    assert "input[1]: 'a sentence, not an image' is not an image data URL" in r.json()["error"]["message"]
    broken = "data:image/png;base64," + base64.b64encode(b"not a png").decode()
    r = _post(server, {"model": "colours", "input": [broken]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[0]"
    assert "cannot be decoded as an image" in r.json()["error"]["message"]


def test_predict_labels_a_folder_and_a_file_of_images(classifier, tmp_path, capsys):
    base_dir, adapter = classifier
    folder = write_image_folder(tmp_path / "photos", per_class=3)
    out = tmp_path / "labels.jsonl"
    assert main(["predict", str(adapter), str(folder), "-m", str(base_dir), "-o", str(out), "--batch-size", "4"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(set(r) == {"image", "predicted_label", "probs"} for r in rows)
    reference = _reference_probs(
        base_dir, adapter, [coloured_image(c, 1000 * k + i) for k, c in enumerate(LABELS) for i in range(3)]
    )
    for row, ref in zip(rows, reference, strict=True):
        assert list(row["probs"].values()) == pytest.approx(ref, abs=1e-4)

    data_csv = write_image_csv(tmp_path / "d", per_class=2)
    out_csv = tmp_path / "labels.csv"
    assert (
        main(
            ["predict", str(adapter), str(data_csv), "-m", str(base_dir), "-o", str(out_csv), "--image-column", "path"]
        )
        == 0
    )
    got = list(csv.DictReader(out_csv.open()))
    assert [r["path"] for r in got] == [f"images/{c}_{i}.png" for c in LABELS for i in range(2)]
    assert set(got[0]) == {"path", "label", "predicted_label", "prob_blue", "prob_red"}

    (tmp_path / "d" / "images" / "red_1.png").write_bytes(b"garbage")
    capsys.readouterr()
    assert (
        main(["predict", str(adapter), str(data_csv), "-o", str(tmp_path / "x.jsonl"), "--image-column", "path"]) == 2
    )
    err = capsys.readouterr().err
    assert "data.csv line 5: file" in err and "red_1.png" in err and "--image-column" in err
    assert not (tmp_path / "x.jsonl").exists()
