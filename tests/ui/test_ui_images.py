"""The new-job form for image classification, in headless Chromium against a real server: the task picker offers it,
the image and label columns are picked from an uploaded Parquet of images, the dataset check lists the classes, and
the draft keeps the choice across a reload. Synthetic images (PIL)."""

from __future__ import annotations

import io
import re

import pytest
from uikit import axe_check, no_js_errors

from tiny_images import png_bytes

pytestmark = [pytest.mark.browser]


def test_the_form_offers_image_classification_with_its_column_pickers(ui_server, page, tmp_path, shot, sign_in):
    import pyarrow as pa
    import pyarrow.parquet as pq

    server, key = ui_server
    rows = [
        {"img": {"bytes": png_bytes(c, i), "path": None}, "colour": c, "note": "x"}
        for c in ("red", "blue")
        for i in range(6)
    ]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    data = tmp_path / "colours.parquet"
    data.write_bytes(buf.getvalue())

    sign_in(page, server, key)
    page.goto(server.url + "/#/new")
    page.get_by_text(re.compile(r"Catalog \(\d+ models\)")).wait_for(timeout=180_000)
    page.get_by_label("Dataset file").set_input_files(str(data))
    page.get_by_role("button", name="Upload and check").click()
    page.locator("#dataset-id").wait_for()

    task = page.get_by_label("Task", exact=True)
    task.select_option("image_classification")
    assert not page.get_by_label("Prompt template").is_visible() and not page.get_by_label("Text column").is_visible()
    image, label = page.get_by_label("Image column"), page.get_by_label("Label column")
    assert image.locator("option").all_inner_texts() == ["img", "colour", "note"]
    image.select_option("colour")
    label.select_option("colour")
    assert "The image and label columns are both colour" in page.locator("#class-columns-problem").inner_text()
    image.select_option("img")
    assert page.locator("#class-columns-problem").inner_text() == ""
    classes = page.locator("#class-labels")
    classes.wait_for(timeout=60_000)
    assert classes.inner_text() == "blue (6 rows), red (6 rows)"
    assert "Trainable" in page.locator("#data-report .verdict").inner_text()
    page.locator("#template-section").scroll_into_view_if_needed()
    shot(page, "new-job-image-classification")
    axe_check(page, "new job, image classification")

    page.reload()
    page.locator("#class-labels").wait_for(timeout=60_000)
    assert page.get_by_label("Task", exact=True).input_value() == "image_classification"
    assert (page.get_by_label("Image column").input_value(), page.get_by_label("Label column").input_value()) == (
        "img",
        "colour",
    )
    no_js_errors(page)


def test_an_image_classifier_deployment_gets_a_note_not_the_text_playground(ui_server, page, shot, sign_in):
    """A text box cannot send images: the playground says how to call /v1/classify with image data URLs instead of
    offering the text classifier's form or a chat, and the deployment page says what the deployment answers."""
    from tfservice import Client, wait_for

    from tiny_images import save_tiny_vision_base
    from tuneforge.adapter_card import classification_card
    from tuneforge.models.loader import load_image_processor, resolve_model
    from tuneforge.models.lora import LoraSettings, apply_lora, load_base_model
    from tuneforge.runtime import pick_runtime

    server, key = ui_server
    labels = ["blue", "red"]
    base_dir = save_tiny_vision_base(server.home / "models" / "vit", "vit")
    resolved = resolve_model(str(base_dir))
    base = load_base_model(resolved, pick_runtime("fp32"), labels=labels, vision=True)
    model, _, _ = apply_lora(
        base, LoraSettings(r=4, alpha=8), model_id=resolved.model_id, quantized=False,
        gradient_checkpointing=False, seed=0, vision=True,
    )  # fmt: skip
    folder = server.home / "models" / "adapters" / "colours"
    model.save_pretrained(folder)
    load_image_processor(str(base_dir)).save_pretrained(folder)
    classification_card(labels, task="image_classification", image_column="image", base_model={}).write(folder)
    client = Client(server.url, key)
    body = {"basemodel_path": str(base_dir), "loramodel_path": str(folder), "deployment_name": "colours"}
    r = client.post("/v1/deploy/llm", json=body)
    assert r.status_code == 200, r.text
    dep_id = r.json()["deployment_id"]

    def live():
        d = client.get(f"/v1/deploy/status/{dep_id}").json()
        return d if d["status"] in ("live", "failed") else None

    d = wait_for(live, 180, interval=0.5, what="the deployment to go live")
    assert d["status"] == "live" and d["task"] == "image_classification" and d["labels"] == labels, d

    sign_in(page, server, key)
    page.goto(f"{server.url}/#/playground?adapter={dep_id}")
    note = page.locator("#classify-image-note")
    note.wait_for()
    assert "is an image classifier" in note.inner_text() and "POST /v1/classify" in note.inner_text()
    assert page.locator("#classify-box").is_hidden() and page.locator("#chat-area").is_hidden()
    assert page.get_by_label("Prompt format").is_hidden()
    shot(page, "playground-image-classifier")
    axe_check(page, "image classifier playground")

    page.goto(f"{server.url}/#/deployments/{dep_id}")
    answers = page.locator("#deployment-answers")
    answers.wait_for()
    assert answers.inner_text() == "POST /v1/classify (image data URLs): blue, red"
    no_js_errors(page)
    assert client.post("/v1/deploy/terminate", json={"deployment_id": dep_id}).status_code == 200
