"""The web UI in headless Chromium against a real `tuneforge server` with the tiny model: sign in, the new-job form
(catalog, dataset upload with its validation report, template editor, hyperparameters from the spec), a job trained
to the end with its loss chart, the adapter download, a deployment and a chat reply in the playground, live status
and cancel. Screenshots of every page land in test-artifacts/ui/."""

from __future__ import annotations

import io
import json
import re
import zipfile

import pytest
from tfservice import Client, payload, wait_for
from uikit import TEMPLATE, good_rows, no_js_errors

from tuneforge.models.catalog import CATALOG
from tuneforge.spec import PretrainedModelConfig, TrainingConfig

pytestmark = [pytest.mark.browser]

BAD_ROWS = (
    '{"question": "what is 1 plus 1?", "answer": "2"}\n'
    '{"question": "what is 2 plus 2?" "answer": "4"}\n'  # line 2: not JSON (missing comma)
    '{"question": "what is 3 plus 3?"}\n'  # line 3: no answer
    '{"question": "what is 4 plus 4?", "answer": "8"}\n'
)


def test_sign_in_with_the_keyboard_rejects_a_wrong_key_and_signs_out(ui_server, page, shot, sign_in):
    server, key = ui_server
    page.goto(server.url + "/")
    page.get_by_role("heading", name="Sign in to tuneforge").wait_for()
    assert page.evaluate("document.activeElement.id") == "api-key"  # focus starts in the key field
    page.keyboard.type("tf_not-a-key")
    page.keyboard.press("Enter")
    page.get_by_role("alert").filter(has_text="not valid").wait_for()
    assert page.get_by_label("API key").get_attribute("aria-invalid") == "true"
    shot(page, "signin-error")

    page.get_by_label("API key").fill(key)
    page.keyboard.press("Tab")  # to "Remember the key" and on to the button, with the keyboard only
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Sign in"
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Fine-tuning jobs").wait_for()
    page.get_by_text("Signed in as alice").wait_for()
    assert page.evaluate("sessionStorage.getItem('tuneforge.key')") == key
    assert page.evaluate("localStorage.getItem('tuneforge.key')") is None
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("heading", name="Sign in to tuneforge").wait_for()
    assert page.evaluate("sessionStorage.getItem('tuneforge.key')") is None
    page.goto(server.url + "/#/new")  # pages need a key
    page.get_by_role("heading", name="Sign in to tuneforge").wait_for()
    shot(page, "signin")
    no_js_errors(page)


def test_new_job_form_fields_come_from_the_spec_and_are_labelled(ui_server, page, shot, sign_in):
    server, key = ui_server
    sign_in(page, server, key)
    page.goto(server.url + "/#/new")
    page.get_by_role("heading", name="Create a fine-tuning job").wait_for()
    page.get_by_text(f"Catalog ({len(CATALOG)} models)").wait_for(timeout=60_000)

    # The catalog: one row per entry with LoRA and QLoRA estimates; the filter narrows it.
    rows = page.locator("#model-table tr[data-group=catalog]")
    assert rows.count() == len(CATALOG)
    first = CATALOG[0]
    row = page.locator(f'#model-table tr[data-model="{first.id}"]')
    assert re.search(r"\d+(\.\d)? GiB", row.locator("td.lora").inner_text())
    assert re.search(r"\d+(\.\d)? GiB", row.locator("td.qlora").inner_text())
    page.get_by_label("Filter models").fill("qwen")
    visible = page.locator("#model-table tr[data-group=catalog]:not(.hidden)")
    assert 0 < visible.count() < len(CATALOG)
    assert all("qwen" in t.lower() for t in visible.all_inner_texts())
    page.get_by_label("Filter models").fill("")
    # The tiny model in the server's models folder is listed and preselected, with its own memory estimate.
    tiny = page.get_by_role("radio", name="tiny", exact=True)
    assert tiny.is_checked()
    page.locator("#memory-estimate").filter(has_text="QLoRA").wait_for()

    # Hyperparameters are prefilled with the spec's defaults, each with the spec's own field doc as help.
    lr = page.get_by_label("Learning rate", exact=True)
    assert float(lr.input_value()) == TrainingConfig.model_fields["learning_rate"].default
    help_id = lr.get_attribute("aria-describedby")
    assert TrainingConfig.model_fields["learning_rate"].description in page.locator(f"#{help_id}").inner_text()
    assert page.get_by_label("LoRA rank r").input_value() == str(PretrainedModelConfig.model_fields["lora_r"].default)
    assert page.get_by_label("Learning-rate schedule").input_value() == "cosine"
    qlora = page.get_by_role("switch", name="QLoRA: 4-bit base model")
    assert not qlora.is_checked()
    qdoc = PretrainedModelConfig.model_fields["use_quantization"].description
    assert qdoc in page.locator("#qlora-help").inner_text()
    page.keyboard.press("Tab")
    qlora.focus()
    page.keyboard.press("Space")  # the switch works from the keyboard
    assert qlora.is_checked()

    # Every form control, advanced settings included, has a label (or an aria-label).
    page.get_by_text("Advanced settings").click()
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('#main input, #main select, #main textarea')]
        .filter(el => el.type !== 'hidden' && !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                      && !el.getAttribute('aria-labelledby'))
        .map(el => el.id || el.name || el.outerHTML)""")
    assert unlabelled == []
    n_fields = page.locator("#settings-section .field").count()
    assert n_fields >= 30  # every spec field a user may set is offered
    shot(page, "new-job-form")
    no_js_errors(page)


def test_dataset_upload_job_training_adapter_deploy_and_chat(ui_server, page, tmp_path, shot, sign_in):
    server, key = ui_server
    bad, good = tmp_path / "bad.jsonl", tmp_path / "qa.jsonl"
    bad.write_text(BAD_ROWS)
    good.write_text(good_rows())
    sign_in(page, server, key)
    shot(page, "jobs-empty")
    page.get_by_role("link", name="Create new fine-tuning job").click()
    page.get_by_role("heading", name="Create a fine-tuning job").wait_for()
    # The catalog's first build (seconds on a loaded machine) runs before the dataset checks, which wait for it.
    page.get_by_text(re.compile(r"Catalog \(\d+ models\)")).wait_for(timeout=180_000)
    page.get_by_role("radio", name="tiny", exact=True).check()
    page.get_by_label("Prompt template").fill(TEMPLATE)

    # A broken file: the report lists every bad row with its line, inline.
    page.get_by_label("Dataset file").set_input_files(str(bad))
    page.get_by_role("button", name="Upload and check").click()
    page.locator("#data-report .verdict.bad").wait_for()
    errors = page.locator("#data-errors tbody tr")
    wait_for(lambda: errors.count() == 2, 10, what="two error rows")
    assert [errors.nth(i).locator("td").first.inner_text() for i in range(2)] == ["2", "3"]
    assert "answer" in errors.nth(1).inner_text()
    page.locator("#report-box[data-state=inspected] #token-stats").wait_for()  # the report with token counts
    assert "uploads" not in page.locator("#data-report").inner_text()  # no server paths of uploads
    page.locator("#data-errors").scroll_into_view_if_needed()
    shot(page, "new-job-bad-dataset")
    page.get_by_role("button", name="Create fine-tuning job").click()
    page.locator("#form-problems").get_by_text("dataset check found errors").wait_for()

    # A good file: trainable, token-length histogram, first example with the masked prompt marked, columns offered.
    page.get_by_label("Dataset file").set_input_files(str(good))
    page.get_by_role("button", name="Upload and check").click()
    page.locator("#report-box[data-state=inspected] .verdict.ok").wait_for()
    assert page.locator("#form-problems").inner_text() == ""  # the earlier complaint is gone
    page.locator("#token-histogram rect.bar").first.wait_for()
    assert page.locator("#token-histogram rect.bar").count() >= 1
    assert "80 examples" in page.locator("#token-stats").inner_text()
    masked = page.locator("#first-example .masked")
    trained = page.locator("#first-example .trained")
    assert "Question: what is" in masked.first.inner_text() and trained.count() >= 1
    assert page.get_by_role("button", name="Insert column question").is_visible()
    assert page.get_by_role("button", name="Insert column answer").is_visible()
    # The column buttons insert placeholders into the template at the cursor.
    area = page.get_by_label("Prompt template")
    area.fill("Q: ")
    page.get_by_role("button", name="Insert column question").click()
    area.press("End")
    area.type("\nA: ")
    page.get_by_role("button", name="Insert column answer").click()
    assert area.input_value() == "Q: {question}\nA: {answer}"
    area.fill(TEMPLATE)
    page.locator("#first-example .masked").filter(has_text="Question: what is").wait_for()
    dataset_id = page.locator("#dataset-id").inner_text()
    assert dataset_id.startswith("ds_")
    shot(page, "new-job")

    # Settings for a seconds-long run; the job is created through the form.
    for label, value in [
        ("LoRA rank r", "4"),
        ("LoRA alpha", "8"),
        ("Cutoff length (tokens)", "64"),
        ("Max steps", "12"),
        ("Batch size", "8"),
        ("Learning rate", "0.003"),
        ("Evaluate every N steps", "4"),
        ("Warmup steps", "1"),
        ("Validation share", "0.2"),
    ]:
        page.get_by_label(label, exact=True).fill(value)
    page.get_by_label("Precision", exact=True).select_option("fp32")
    page.get_by_role("button", name="Create fine-tuning job").click()
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f-]{36}$"))
    job_id = page.url.rsplit("/", 1)[1]
    job = Client(server.url, key).job(job_id)
    spec = job["spec"]
    assert spec["data_config"]["data_path"] == dataset_id and spec["data_config"]["prompt_template"] == TEMPLATE
    assert spec["training_config"]["max_steps"] == 12 and spec["pretrainedmodel_config"]["lora_r"] == 4
    assert spec["data_config"]["data_split_config"] == {"train": 0.8, "validation": 0.2}

    # Watch it train and finish: live progress, loss curves, learning rate, logs.
    page.locator("#job-status .badge.succeeded").wait_for(timeout=180_000)
    train_line = page.locator('#loss-chart polyline[data-series="train"]')
    wait_for(lambda: train_line.get_attribute("data-n") == "12", 15, what="12 training-loss points")
    assert page.locator('#loss-chart polyline[data-series="validation"]').get_attribute("data-n") == "4"
    assert int(page.locator('#lr-chart polyline[data-series="lr"]').get_attribute("data-n")) == 12
    assert page.locator("#stat-step").inner_text().endswith("12 / 12")
    # Done: what it came to instead of an ETA (issue 19).
    assert page.locator("#job-summary").inner_text().startswith("Finished all 12 steps; kept step ")
    assert page.locator("#stat-eta").count() == 0
    page.locator("#job-log").get_by_text("status: succeeded").wait_for()
    assert "eval at step 12" in page.locator("#job-log").inner_text()
    shot(page, "job")

    # Download the adapter.
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download adapter (.zip)").click()
    with open(dl.value.path(), "rb") as fh:
        data = fh.read()
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(names)
    assert dl.value.suggested_filename == f"adapter-{job_id}.zip"

    # The jobs list shows it finished.
    page.get_by_role("link", name="Jobs", exact=True).click()
    page.locator(f'tr[data-job="{job_id}"] .badge.succeeded').wait_for()
    shot(page, "jobs")
    page.go_back()

    # Deploy it, then chat with it and with the base model side by side.
    page.get_by_role("button", name="Deploy…").click()
    # Empty by default: the deployment then prompts the adapter with its own training template (tuneforge_adapter.json).
    template_field = page.get_by_label("Completion prompt template")
    assert template_field.input_value() == ""
    assert "training template" in template_field.get_attribute("placeholder")
    page.get_by_role("button", name="Deploy", exact=True).click()
    page.get_by_role("link", name="Open in the playground").click(timeout=120_000)
    page.get_by_role("heading", name="Playground").wait_for()
    adapter_sel = page.get_by_label("Fine-tuned deployment")
    wait_for(lambda: adapter_sel.input_value() != "", 10, what="the adapter deployment to be selected")
    page.get_by_role("button", name="Deploy the base model for comparison").click()
    base_sel = page.get_by_label("Base model deployment")
    wait_for(
        lambda: "(live)" in (base_sel.locator("option:checked").inner_text() or ""),
        120,
        what="the base deployment to be live",
    )
    # The adapter was trained on a prompt template: the playground prompts it that way by default and says so, and
    # the base model deployed from here gets the same prompt (issue 19).
    assert page.get_by_label("Prompt format").input_value() == "completion"
    assert page.locator("#mode-template").text_content() == "Question: {question}\nAnswer: "
    page.locator("#mode-note").get_by_text("The base model gets the same prompt.").wait_for()
    streamed = []
    page.on(
        "request", lambda r: streamed.append(json.loads(r.post_data)) if r.url.endswith("/v1/completions") else None
    )
    page.get_by_label("Message", exact=True).fill("what is 2 plus 3?")
    page.get_by_role("button", name="Send to both").click()
    for pane in ("#chat-adapter", "#chat-base"):
        page.locator(f"{pane} .msg.assistant:not([aria-busy])").wait_for(timeout=60_000)
        assert page.locator(f"{pane} .msg.error").count() == 0, page.locator(pane).inner_text()
        assert page.locator(f"{pane} .msg.user").inner_text().endswith("what is 2 plus 3?")
    assert len(streamed) == 2 and all(b["stream"] is True for b in streamed)  # tokens are shown as they come
    shot(page, "playground")

    # Stop ends a long reply where it is; what came so far stays, and the form is ready again.
    page.get_by_label("Max new tokens").fill("2048")
    page.get_by_label("Temperature").fill("1")
    page.get_by_label("Message", exact=True).fill("count to a thousand")
    page.get_by_role("button", name="Send to both").click()
    base_reply = page.locator("#chat-base .msg.assistant").last.locator(".reply")
    wait_for(lambda: base_reply.inner_text() not in ("", "…"), 60, what="the first streamed tokens")
    page.get_by_role("button", name="Stop").click()
    page.locator("#chat-base .msg.assistant .stopped").wait_for(timeout=10_000)
    page.locator("#chat-base .msg.assistant:not([aria-busy])").last.wait_for()
    assert page.get_by_role("button", name="Send to both").is_enabled()
    assert page.get_by_role("button", name="Stop").is_disabled()
    no_js_errors(page)


def test_jobs_list_shows_live_status_and_a_job_is_cancelled_from_its_page(ui_server, page, shot, sign_in):
    server, key = ui_server
    client = Client(server.url, key)
    job_id = client.post("/v1/finetune/llm", json=payload(server.home, max_steps=5000, eval_steps=2500)).json()[
        "job_id"
    ]
    sign_in(page, server, key)
    page.locator(f'tr[data-job="{job_id}"] .badge.running').wait_for(timeout=60_000)  # queued -> running, live
    row = page.locator(f'tr[data-job="{job_id}"]')
    wait_for(lambda: re.search(r"\d+/5000", row.inner_text()), 30, what="progress in the jobs list")
    shot(page, "jobs-running")
    row.get_by_role("link").click()
    page.locator("#job-status .badge.running").wait_for()
    wait_for(
        lambda: (
            int(page.locator('#loss-chart polyline[data-series="train"]').get_attribute("data-n") or 0) > 1
            if page.locator('#loss-chart polyline[data-series="train"]').count()
            else False
        ),
        30,
        what="the loss curve to grow",
    )
    wait_for(lambda: re.search(r"\d+ (s|min|h)", page.locator("#stat-eta").inner_text()), 15, what="an ETA")
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Cancel job").click()
    page.locator("#job-status .badge.cancelled").wait_for(timeout=30_000)
    assert client.job(job_id)["status"] == "cancelled"
    shot(page, "job-cancelled")
    no_js_errors(page)


def test_a_finished_job_page_shows_base_vs_fine_tuned_on_the_test_rows(ui_server, page, shot, sign_in):
    server, key = ui_server
    client = Client(server.url, key)
    body = payload(server.home, max_steps=6)
    body["data_config"]["data_split_config"] = {"train": 0.7, "validation": 0.1, "test": 0.2}
    job_id = client.post("/v1/finetune/llm", json=body).json()["job_id"]
    job = client.wait_status(job_id, ("succeeded", "failed"), 240, server)
    assert job["status"] == "succeeded", job
    ev = job["evaluation"]
    sign_in(page, server, key)
    page.goto(f"{server.url}/#/jobs/{job_id}")
    page.get_by_role("heading", name="Did the fine-tune help? Held-out evaluation").wait_for()
    table = page.locator("#eval-table")
    assert table.locator("tbody tr").count() == len(ev["metrics"])
    em = table.locator('tr[data-metric="exact_match"] td')
    assert em.nth(0).inner_text() == f"{100 * ev['results']['base']['exact_match']:.1f}%"
    assert em.nth(1).inner_text() == f"{100 * ev['results']['adapter']['exact_match']:.1f}%"
    assert page.locator("#eval-samples tbody tr").count() == len(ev["samples"])
    page.locator("#job-evaluation").scroll_into_view_if_needed()
    shot(page, "job-evaluation")
    if ev["differing_rows"] > len(ev["samples"]):
        page.get_by_role("button", name=f"Show all {ev['differing_rows']} differing rows").click()
        page.locator("#eval-all-rows").wait_for()
        assert page.locator("#eval-all-rows tbody tr").count() == ev["differing_rows"]
    no_js_errors(page)
