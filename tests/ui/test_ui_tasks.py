"""The job page for features that landed after the web UI's second pass (issue 19, "Also"), in headless Chromium
against a real server: a finished classification job shows accuracy, macro-F1, a per-class table and the confusion
matrix as a shaded table (readable at 390 px); every job says where it ran (node, devices) and a multi-process job its
strategy and process count. Screenshots in test-artifacts/ui/; axe-core in the page as in the other UI tests."""

from __future__ import annotations

import json
import re

import pytest
from tfservice import Client, payload
from uikit import PHONE, axe_check, fits, no_js_errors

from tiny import write_class_data

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def class_job(ui_server):
    """A classification job on the tiny model (a sequence-classification head on the tiny Llama), three labels,
    scored on 18 held-out test rows."""
    server, key = ui_server
    data = write_class_data(server.home / "datasets" / "sentiment.jsonl", n=120)
    body = payload(server.home, data_path=str(data), max_steps=12, eval_steps=4, learning_rate=1e-2)
    body["data_config"].pop("prompt_template")
    body["data_config"].update(
        task="classification", data_split_config={"train": 0.7, "validation": 0.15, "test": 0.15}
    )
    client = Client(server.url, key)
    r = client.post("/v1/finetune/llm", json=body)
    assert r.status_code == 201, r.text
    job = client.wait_status(r.json()["job_id"], ("succeeded", "failed"), 240, server)
    assert job["status"] == "succeeded", job
    assert job["result"]["task"] == "classification" and job["result"]["classification"]["examples"] == 18, job
    return job


def test_a_classification_job_shows_its_scores_and_confusion_matrix(ui_server, class_job, page, shot, sign_in):
    server, key = ui_server
    c = class_job["result"]["classification"]
    sign_in(page, server, key)
    page.goto(f"{server.url}/#/jobs/{class_job['job_id']}")
    box = page.locator("#job-classification")
    box.wait_for()
    assert page.locator("#stat-accuracy .v").inner_text() == f"{100 * c['accuracy']:.1f}%"
    assert page.locator("#stat-macro-f1 .v").inner_text() == str(round(c["macro_f1"], 3)).rstrip("0").rstrip(".")
    assert "18 test rows" in box.inner_text()

    # One row per class with its precision, recall, F1 and support.
    rows = page.locator("#class-table tbody tr")
    assert rows.count() == len(c["labels"]) == 3
    for label in c["labels"]:
        cells = page.locator(f'#class-table tr[data-label="{label}"] td').all_inner_texts()
        assert cells[0] == f"{100 * c['per_class'][label]['precision']:.1f}%"
        assert cells[3] == str(c["per_class"][label]["support"])

    # The confusion matrix: the report's counts, true labels down and predictions across, shaded by row share.
    matrix = page.locator("#confusion-matrix")
    assert matrix.locator("thead th").all_inner_texts() == c["labels"]
    assert matrix.locator("tbody th").all_inner_texts() == c["labels"]
    counts = [[int(t) for t in r.locator("td").all_inner_texts()] for r in matrix.locator("tbody tr").all()]
    assert counts == c["confusion_matrix"]
    backgrounds = matrix.locator("tbody td").evaluate_all("tds => tds.map(td => getComputedStyle(td).backgroundColor)")
    assert len(set(backgrounds)) > 1, backgrounds  # shaded by value, not one colour

    # The validation accuracy and macro-F1 of every evaluation are charted.
    page.locator("#class-chart polyline").first.wait_for()
    assert "macro-F1" in page.locator("#class-figure").inner_text()
    box.scroll_into_view_if_needed()
    shot(page, "job-classification")
    axe_check(page, "classification job")
    no_js_errors(page)


def test_the_confusion_matrix_is_readable_at_390_px(ui_server, class_job, browser, shot):
    server, key = ui_server
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    context.set_default_timeout(20_000)
    page = context.new_page()
    try:
        page.goto(server.url + "/")
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="Fine-tuning jobs").wait_for()
        page.goto(f"{server.url}/#/jobs/{class_job['job_id']}")
        matrix = page.locator("#confusion-matrix")
        matrix.wait_for()
        fits(page, "classification job")
        # Three classes fit the phone's width whole: no sideways scrolling to read a row, text at a legible size.
        box = matrix.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
        sizes = matrix.locator("td, th").evaluate_all("els => els.map(e => parseFloat(getComputedStyle(e).fontSize))")
        assert min(sizes) >= 11, sizes
        matrix.scroll_into_view_if_needed()
        shot(page, "mobile-job-classification")
        axe_check(page, "classification job at 390 px")
    finally:
        context.close()


def test_the_job_page_says_where_a_job_ran(ui_server, class_job, page, shot, sign_in):
    server, key = ui_server
    sign_in(page, server, key)
    job_id = class_job["job_id"]
    page.goto(f"{server.url}/#/jobs/{job_id}")
    placement = page.locator("#job-placement")
    placement.wait_for()
    assert class_job["node"] and class_job["devices"] == "cpu", class_job
    assert placement.inner_text() == f"{class_job['node']} · cpu"
    assert page.locator("dt", has_text="Ran on").is_visible()
    assert page.locator("#job-processes").count() == 0  # one process: nothing to say

    # A multi-process job (two machines of two GPUs each) as the Ray/multi-host queue reports it: the page is fed
    # that view, since this machine has no GPUs to run one.
    def multi_host(route):
        view = route.fetch().json()
        view.update(node="host-a", devices="cuda:0,1")
        view["spec"]["training_config"]["distributed"] = {
            "strategy": "ddp",
            "nproc_per_node": 2,
            "nnodes": 2,
            "rdzv_endpoint": "host-a:29400",
        }
        route.fulfill(status=200, content_type="application/json", body=json.dumps(view))

    page.route(f"**/v1/finetune/llm/{job_id}", multi_host)
    page.reload()
    page.locator("#job-processes").wait_for()
    assert page.locator("#job-placement").inner_text() == "host-a · cuda:0,1"
    assert page.locator("#job-processes").inner_text() == "DDP · 4 processes (2 on each of 2 machines)"
    page.locator("#job-progress").scroll_into_view_if_needed()
    shot(page, "job-placement-multi-host")
    no_js_errors(page)


def test_the_form_creates_a_classification_job_with_columns_picked_from_the_dataset(
    ui_server, page, tmp_path, shot, sign_in
):
    server, key = ui_server
    reviews = tmp_path / "reviews.jsonl"
    words = {"good": "pos", "bad": "neg"}
    reviews.write_text(
        "".join(
            json.dumps({"id": i, "review": f"a {w} film, number {i}", "stars": words[w]}) + "\n"
            for i in range(40)
            for w in words
        )
    )
    sign_in(page, server, key)
    page.goto(server.url + "/#/new")
    page.get_by_text(re.compile(r"Catalog \(\d+ models\)")).wait_for(timeout=180_000)  # its first build is slow
    page.get_by_label("Dataset file").set_input_files(str(reviews))
    page.get_by_role("button", name="Upload and check").click()
    page.locator("#dataset-id").wait_for()

    # Text generation is the default; a classifier swaps the prompt template for two column pickers.
    task = page.get_by_label("Task", exact=True)
    assert task.input_value() == "causal_lm" and page.get_by_label("Prompt template").is_visible()
    task.select_option("classification")
    assert not page.get_by_label("Prompt template").is_visible()
    text, label = page.get_by_label("Text column"), page.get_by_label("Label column")
    assert text.locator("option").all_inner_texts() == ["id", "review", "stars"]
    # Picking the same column twice is said next to the pickers.
    text.select_option("review")
    label.select_option("review")
    assert "both review" in page.locator("#class-columns-problem").inner_text()
    label.select_option("stars")
    assert page.locator("#class-columns-problem").inner_text() == ""
    # The dataset check reads the file as a classifier would: its classes and their rows.
    classes = page.locator("#class-labels")
    classes.wait_for(timeout=60_000)
    assert classes.inner_text() == "neg (40 rows), pos (40 rows)"  # in label-id order
    assert "Trainable" in page.locator("#data-report .verdict").inner_text()
    first = page.locator("#first-example").inner_text()
    assert "a good film, number 0" in first and "pos" in first
    page.locator("#template-section").scroll_into_view_if_needed()
    shot(page, "new-job-classification")
    axe_check(page, "new job, classification")

    # The draft keeps the task and the columns across a reload.
    page.reload()
    page.locator("#class-labels").wait_for(timeout=60_000)
    assert page.get_by_label("Task", exact=True).input_value() == "classification"
    assert (text.input_value(), label.input_value()) == ("review", "stars")

    # QLoRA would quantize the new head: refused before anything is queued.
    page.get_by_label("QLoRA: 4-bit base model").check()
    page.get_by_role("button", name="Create fine-tuning job").click()
    page.locator("#form-problems").get_by_text("A classifier trains without QLoRA").wait_for()
    page.get_by_label("QLoRA: 4-bit base model").uncheck()
    page.get_by_label("Job name (optional)").fill("reviews-classifier")
    page.get_by_role("button", name="Create fine-tuning job").click()
    page.wait_for_url("**/#/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    d = Client(server.url, key).get(f"/v1/finetune/llm/{job_id}").json()["spec"]["data_config"]
    assert (d["task"], d["text_column"], d["label_column"], d["prompt_template"]) == (
        "classification",
        "review",
        "stars",
        None,
    )
    no_js_errors(page)


def test_the_form_offers_seq2seq_with_source_and_target_pickers(ui_server, page, tmp_path, shot, sign_in):
    server, key = ui_server
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"en": f"good film {i}", "de": f"guter Film {i}"}) + "\n" for i in range(30)))
    sign_in(page, server, key)
    page.goto(server.url + "/#/new")
    page.get_by_text(re.compile(r"Catalog \(\d+ models\)")).wait_for(timeout=180_000)
    page.get_by_label("Dataset file").set_input_files(str(pairs))
    page.get_by_role("button", name="Upload and check").click()
    page.locator("#dataset-id").wait_for()

    page.get_by_label("Task", exact=True).select_option("seq2seq")
    assert not page.get_by_label("Prompt template").is_visible()
    source, target = page.get_by_label("Source column"), page.get_by_label("Target column")
    assert source.locator("option").all_inner_texts() == ["en", "de"]
    source.select_option("en")
    target.select_option("en")
    assert "source and target columns are both en" in page.locator("#class-columns-problem").inner_text()
    target.select_option("de")
    # The dataset check reads the file as seq2seq rows: the first example's source and target.
    page.locator("#data-report .verdict").get_by_text("Trainable").wait_for(timeout=60_000)
    first = page.locator("#first-example").inner_text()
    assert "good film 0" in first and "guter Film 0" in first
    page.locator("#template-section").scroll_into_view_if_needed()
    shot(page, "new-job-seq2seq")
    axe_check(page, "new job, seq2seq")

    # The tiny base is decoder-only: the server refuses the task, naming the model and what is allowed.
    page.get_by_role("button", name="Create fine-tuning job").click()
    page.get_by_text(re.compile("is not an encoder-decoder model")).first.wait_for()
    no_js_errors(page)


def test_a_seq2seq_deployment_gets_completions_only_in_the_playground(ui_server, page, shot, sign_in):
    """A seq2seq deployment answers /v1/completions only: the playground fixes the prompt format to the source text
    as it is (no chat), and the deployment page says so and shows no engine figures."""
    from tfservice import wait_for

    from tiny import save_tiny_seq2seq
    from tuneforge.adapter_card import seq2seq_card
    from tuneforge.models.loader import resolve_model
    from tuneforge.models.lora import LoraSettings, apply_lora, load_base_model
    from tuneforge.runtime import pick_runtime

    server, key = ui_server
    base_dir = save_tiny_seq2seq(server.home / "models" / "t5", "t5")
    resolved = resolve_model(str(base_dir))
    base = load_base_model(resolved, pick_runtime("fp32"), seq2seq=True)
    model, _, _ = apply_lora(
        base, LoraSettings(r=4, alpha=8), model_id=resolved.model_id, quantized=False,
        gradient_checkpointing=False, seed=0, seq2seq=True,
    )  # fmt: skip
    folder = server.home / "models" / "adapters" / "reverser"
    model.save_pretrained(folder)
    seq2seq_card(text_column="source", target_column="target", max_length=32).write(folder)
    client = Client(server.url, key)
    body = {"basemodel_path": str(base_dir), "loramodel_path": str(folder), "deployment_name": "reverser"}
    r = client.post("/v1/deploy/llm", json=body)
    assert r.status_code == 200, r.text
    dep_id = r.json()["deployment_id"]

    def live():
        d = client.get(f"/v1/deploy/status/{dep_id}").json()
        return d if d["status"] in ("live", "failed") else None

    d = wait_for(live, 180, interval=0.5, what="the deployment to go live")
    assert d["status"] == "live" and d["task"] == "seq2seq" and d["labels"] is None, d

    sign_in(page, server, key)
    page.goto(f"{server.url}/#/playground?adapter={dep_id}")
    note = page.locator("#mode-note")
    page.get_by_text(re.compile("is an encoder-decoder")).wait_for()
    assert "chat is not offered" in note.inner_text()
    mode = page.get_by_label("Prompt format")
    assert mode.is_disabled() and mode.input_value() == "completion"
    assert page.locator("#chat-area").is_visible() and page.locator("#classify-box").is_hidden()
    shot(page, "playground-seq2seq")
    axe_check(page, "seq2seq playground")

    page.goto(f"{server.url}/#/deployments/{dep_id}")
    answers = page.locator("#deployment-answers")
    answers.wait_for()
    assert answers.inner_text() == "/v1/completions (an encoder-decoder: no chat)"
    page.get_by_text("no engine figures").wait_for()
    no_js_errors(page)
    assert client.post("/v1/deploy/terminate", json={"deployment_id": dep_id}).status_code == 200


def test_a_seq2seq_job_shows_its_generation_scores(ui_server, page, browser, shot, sign_in):
    """A finished T5 job's page shows the held-out exact match, chrF and ROUGE-L from its result and the first
    generations beside their references, on a desktop and at 390 px."""
    from tiny import save_tiny_seq2seq, write_seq2seq_data

    server, key = ui_server
    t5 = save_tiny_seq2seq(server.home / "models" / "t5-job", "t5")
    data = write_seq2seq_data(server.home / "datasets" / "reverse.jsonl", n=60)
    body = payload(server.home, data_path=str(data), max_steps=6, eval_steps=3, learning_rate=1e-2)
    body["pretrainedmodel_config"]["model_path"] = str(t5)
    body["data_config"].pop("prompt_template")
    body["data_config"].update(
        task="seq2seq",
        text_column="source",
        label_column="target",
        data_split_config={"train": 0.8, "validation": 0.1, "test": 0.1},
    )
    client = Client(server.url, key)
    r = client.post("/v1/finetune/llm", json=body)
    assert r.status_code == 201, r.text
    job = client.wait_status(r.json()["job_id"], ("succeeded", "failed"), 240, server)
    assert job["status"] == "succeeded", job
    q = job["result"]["seq2seq"]

    sign_in(page, server, key)
    page.goto(f"{server.url}/#/jobs/{job['job_id']}")
    box = page.locator("#job-seq2seq")
    box.wait_for()
    assert page.locator("#stat-exact-match .v").inner_text() == f"{100 * q['exact_match']:.1f}%"
    assert page.locator("#stat-chrf .v").inner_text() == str(round(q["chrf"], 3)).rstrip("0").rstrip(".")
    assert page.locator("#stat-rouge-l .v").inner_text() == str(round(q["rouge_l"], 3)).rstrip("0").rstrip(".")
    assert f"{q['examples']} test rows" in box.inner_text()
    references = page.locator("#seq2seq-samples tbody tr td:first-child").all_inner_texts()
    assert references == [s["reference"] for s in q["samples"]] and references
    assert page.locator("#job-classification").is_hidden()
    shot(page, "job-seq2seq")
    axe_check(page, "seq2seq job page")
    no_js_errors(page)

    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    context.set_default_timeout(20_000)
    phone = context.new_page()
    try:
        phone.goto(server.url + "/")
        phone.get_by_label("API key").fill(key)
        phone.get_by_role("button", name="Sign in").click()
        phone.get_by_role("heading", name="Fine-tuning jobs").wait_for()
        phone.goto(f"{server.url}/#/jobs/{job['job_id']}")
        phone.locator("#job-seq2seq").wait_for()
        fits(phone, "seq2seq job")
        shot(phone, "mobile-job-seq2seq")
        axe_check(phone, "seq2seq job at 390 px")
    finally:
        context.close()
