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
