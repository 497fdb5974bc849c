"""The web UI items of issue 19 that came last, in headless Chromium against a real server with the tiny model:
export from a finished job's page (the merged model as a zip, GGUF with its weight type, a failed conversion's
reason, exports listed again after a reload); job comparison (ticked in the jobs list, a deep-linkable page with
both runs' loss curves on one chart, their results, and their settings with those that differ marked); a deployment's page with its live serving
figures; a classifier deployment's playground (a text in, its label and a bar per class out). Screenshots in test-artifacts/ui/; a 390 px pass and axe-core in the
page as in the other UI tests."""

from __future__ import annotations

import zipfile

import pytest
from tfservice import Client, payload, wait_for
from uikit import PHONE, axe_check, fits, no_js_errors

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def jobs(ui_server):
    """Two finished text jobs that differ in learning rate and LoRA rank, named by their suffixes."""
    server, key = ui_server
    client = Client(server.url, key)
    ids = []
    for suffix, lr, rank in (("slow-lr", 1e-4, 8), ("fast-lr", 5e-3, 16)):
        body = payload(server.home, max_steps=8, eval_steps=2, learning_rate=lr)
        body["suffix"] = suffix
        body["pretrainedmodel_config"]["lora_r"] = rank
        r = client.post("/v1/finetune/llm", json=body)
        assert r.status_code == 201, r.text
        ids.append(r.json()["job_id"])
    done = [client.wait_status(i, ("succeeded", "failed"), 300, server) for i in ids]
    assert all(j["status"] == "succeeded" for j in done), done
    return done


def test_a_finished_job_exports_its_merged_model_and_says_why_gguf_failed(ui_server, jobs, page, shot, sign_in):
    server, key = ui_server
    job_id = jobs[0]["job_id"]
    sign_in(page, server, key)
    page.goto(f"{server.url}/#/jobs/{job_id}")
    box = page.locator("#job-export")
    box.wait_for()
    assert page.get_by_label("GGUF weights").input_value() == "q8_0"  # the CLI's default

    with page.expect_download(timeout=240_000) as got:
        page.get_by_role("button", name="Download merged model (.zip)").click()
        box.get_by_text("merging the adapter into its base").wait_for()  # its stage while the server works
    download = got.value
    assert download.suggested_filename == f"{job_id}-merged.zip"
    names = zipfile.ZipFile(download.path()).namelist()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(names), names
    box.locator(".export-downloaded").wait_for()
    shot(page, "job-exported")  # docs/ui-job.png, the README's screenshot

    # GGUF with the chosen weight type: llama.cpp's converter refuses the tiny test model's tokenizer, and the page
    # says so (the reason, not just "failed").
    page.get_by_label("GGUF weights").select_option("f16")
    page.get_by_role("button", name="Export GGUF").click()
    failed = box.locator('[data-export="gguf-f16"] [role=alert]')
    failed.wait_for(timeout=240_000)
    assert "GGUF (f16) export failed: GGUF conversion of" in failed.inner_text()
    box.scroll_into_view_if_needed()
    shot(page, "job-export")
    axe_check(page, "job export")

    # The server keeps finished exports: after a reload they are listed, ready to download again.
    page.reload()
    ready = box.locator('[data-export="merged"]')
    ready.get_by_text(f"Merged model ready: {job_id}-merged.zip").wait_for()
    with page.expect_download() as again:
        ready.get_by_role("button", name="Download").click()
    assert again.value.suggested_filename == f"{job_id}-merged.zip"
    no_js_errors(page)


def test_export_at_390_px(ui_server, jobs, browser, shot):
    server, key = ui_server
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    context.set_default_timeout(20_000)
    page = context.new_page()
    try:
        page.goto(server.url + "/")
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="Fine-tuning jobs").wait_for()
        page.goto(f"{server.url}/#/jobs/{jobs[0]['job_id']}")
        page.locator("#job-export").wait_for()
        fits(page, "job export")
        page.locator("#job-export").scroll_into_view_if_needed()
        shot(page, "mobile-job-export")
        axe_check(page, "job export at 390 px")
    finally:
        context.close()


def test_two_jobs_compared_side_by_side(ui_server, jobs, page, shot, sign_in):
    server, key = ui_server
    slow, fast = jobs
    sign_in(page, server, key)
    compare = page.locator("#compare-jobs")
    assert compare.get_attribute("aria-disabled") == "true"  # fewer than two ticked
    page.get_by_label("Compare job slow-lr").check()
    page.get_by_label("Compare job fast-lr").check()
    page.wait_for_timeout(2500)  # the list refreshes itself: the ticks survive it
    assert page.get_by_label("Compare job slow-lr").is_checked()
    assert compare.inner_text() == "Compare selected (2)"

    # A classifier's scores and a held-out evaluation are results too: the second job's view gets them here (a
    # classification job takes minutes to train on this machine; its page has its own test).
    def with_scores(route):
        view = route.fetch().json()
        view["result"]["classification"] = {"accuracy": 0.9, "macro_f1": 0.85}
        view["evaluation"] = {
            "metrics": ["exact_match"],
            "results": {"base": {"exact_match": 0.1}, "adapter": {"exact_match": 0.6}},
        }
        route.fulfill(json=view)

    page.route(f"**/v1/finetune/llm/{fast['job_id']}", with_scores)
    compare.click()
    page.get_by_role("heading", name="Compare jobs").wait_for()
    url = page.url
    assert "#/compare?jobs=" in url and slow["job_id"] in url and fast["job_id"] in url

    # One chart: each job's training and validation loss, the legend naming the jobs.
    chart = page.locator("#compare-chart")
    chart.wait_for()
    series = chart.locator("polyline").evaluate_all("ps => ps.map(p => p.dataset.series)")
    assert sorted(series) == sorted(["slow-lr train", "slow-lr validation", "fast-lr train", "fast-lr validation"])
    n_evals = len([e for e in Client(server.url, key).events(slow["job_id"]) if e["type"] == "eval"])
    assert chart.locator('polyline[data-series="slow-lr validation"]').get_attribute("data-n") == str(n_evals)
    assert page.locator("#compare-legend").inner_text().split() == ["slow-lr", "fast-lr"]

    # Results: the kept validation loss of each, and the scores where a job has them.
    kept = page.locator('#compare-results tr[data-result="Kept validation loss"] td').all_inner_texts()
    assert kept == [_num(slow["losses"]["best_eval_loss"]), _num(fast["losses"]["best_eval_loss"])]
    assert page.locator('#compare-results tr[data-result="Accuracy"] td').all_inner_texts() == ["—", "90.0%"]
    held_out = page.locator("#compare-results tr", has_text="Held-out exact match").locator("td").all_inner_texts()
    assert held_out == ["—", "10.0% → 60.0%"]

    # Settings: those that differ (learning rate, LoRA rank) are marked; the same ones are not.
    lr = page.locator('#compare-settings tr[data-setting="training_config.learning_rate"]')
    assert "differs" in lr.get_attribute("class") and lr.locator("td").all_inner_texts() == ["0.0001", "0.005"]
    assert "differs" in (page.locator('tr[data-setting="pretrainedmodel_config.lora_r"]').get_attribute("class") or "")
    assert not page.locator('tr[data-setting="training_config.max_steps"]').get_attribute("class")
    assert page.locator("#compare-differ-count").inner_text() == "2 settings differ (marked)."
    page.get_by_label("Show only the settings that differ").check()
    assert page.locator("#compare-settings tbody tr").count() == 2
    shot(page, "compare-jobs")
    axe_check(page, "job comparison")
    no_js_errors(page)

    # The URL is the comparison: opened in a fresh tab (signed out: the key is kept per tab), it shows the same jobs
    # once signed in.
    other = page.context.new_page()
    other.goto(url)
    other.get_by_label("API key").fill(key)
    other.get_by_role("button", name="Sign in").click()
    other.locator("#compare-chart polyline").first.wait_for()
    assert other.locator("#compare-legend").inner_text().split() == ["slow-lr", "fast-lr"]
    other.close()


def test_the_comparison_at_390_px(ui_server, jobs, browser, shot):
    server, key = ui_server
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    context.set_default_timeout(20_000)
    page = context.new_page()
    try:
        page.goto(server.url + "/")
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="Fine-tuning jobs").wait_for()
        page.goto(f"{server.url}/#/compare?jobs={jobs[0]['job_id']},{jobs[1]['job_id']}")
        page.locator("#compare-chart polyline").first.wait_for()
        fits(page, "job comparison")
        labels = page.locator("#compare-chart text").evaluate_all("ts => ts.map(t => t.getBoundingClientRect().height)")
        assert min(labels) >= 7, labels  # axis labels stay legible on the phone
        shot(page, "mobile-compare-jobs")
        axe_check(page, "job comparison at 390 px")
    finally:
        context.close()


def _num(x: float) -> str:
    """The page's number format (fmtNum: 4 significant digits)."""
    return f"{float(f'{x:.4g}'):g}" if abs(x) >= 1e-3 else f"{x:.2e}"


def deploy(client: Client, body: dict) -> dict:
    r = client.post("/v1/deploy/llm", json=body)
    assert r.status_code == 200, r.text
    dep_id = r.json()["deployment_id"]

    def live():
        d = client.get(f"/v1/deploy/status/{dep_id}").json()
        return d if d["status"] in ("live", "failed") else None

    d = wait_for(live, 180, interval=0.5, what="the deployment to go live")
    assert d["status"] == "live", d
    return d


def test_a_deployment_page_shows_its_serving_figures_live(ui_server, jobs, page, shot, sign_in):
    server, key = ui_server
    client = Client(server.url, key)
    d = deploy(client, {"basemodel_path": jobs[0]["model"], "loramodel_path": jobs[0]["job_id"],
                        "deployment_name": "slow-lr-live"})  # fmt: skip
    sign_in(page, server, key)
    page.goto(f"{server.url}/#/playground")
    page.get_by_text("All deployments").click()
    page.get_by_role("link", name="slow-lr-live").click()  # the playground's list links each deployment's page
    page.get_by_role("heading", name="Deployment slow-lr-live").wait_for()
    requests_now = page.locator("#metric-requests .v")
    requests_now.wait_for()
    before = int(requests_now.inner_text())

    for _ in range(2):
        r = client.post(
            "/v1/completions", json={"model": "slow-lr-live", "prompt": "what is 1 plus 2?", "max_tokens": 4}
        )
        assert r.status_code == 200, r.text
    # The page refreshes itself: the two requests and their tokens appear without a reload.
    page.wait_for_function(f"document.querySelector('#metric-requests .v').textContent === '{before + 2}'")
    m = client.get(f"/v1/deploy/metrics/{d['deployment_id']}").json()
    assert page.locator("#metric-tokens .v").inner_text() == str(m["generated_tokens"])
    assert page.locator("#metric-queue .v").inner_text() == "0"
    assert page.locator("#metric-adapters .v").inner_text() == f"{m['loaded_adapters']} of {m['registered_adapters']}"
    ttft = page.locator("#metric-ttft .v").inner_text()
    assert ttft.count(" / ") == 2 and "—" not in ttft, ttft  # p50 / p90 / p99
    page.wait_for_function("document.querySelector('#metric-rate .v').textContent !== '—'")  # two readings in
    shot(page, "deployment-metrics")
    axe_check(page, "deployment page")
    no_js_errors(page)

    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)
    fits(page, "deployment page")
    shot(page, "mobile-deployment-metrics")
    axe_check(page, "deployment page at 390 px")


def test_a_classifier_deployment_gets_a_classifier_playground(ui_server, page, shot, sign_in):
    from tuneforge.adapter_card import classification_card
    from tuneforge.models.loader import resolve_model
    from tuneforge.models.lora import LoraSettings, apply_lora, load_base_model
    from tuneforge.runtime import pick_runtime

    server, key = ui_server
    labels = ["negative", "neutral", "positive"]
    tiny = server.home / "models" / "tiny"
    resolved = resolve_model(str(tiny))
    base = load_base_model(resolved, pick_runtime("fp32"), labels=labels, pad_token_id=0)
    model, _, _ = apply_lora(
        base, LoraSettings(r=4, alpha=8), model_id=resolved.model_id, quantized=False,
        gradient_checkpointing=False, seed=0, classification=True,
    )  # fmt: skip
    folder = server.home / "models" / "adapters" / "sentiment"
    model.save_pretrained(folder)
    classification_card(labels, text_column="text", max_length=64, base_model={}).write(folder)
    client = Client(server.url, key)
    d = deploy(client, {"basemodel_path": str(tiny), "loramodel_path": str(folder), "deployment_name": "sentiment"})
    assert d["task"] == "classification" and d["labels"] == labels

    sign_in(page, server, key)
    page.goto(f"{server.url}/#/playground?adapter={d['deployment_id']}")
    box = page.locator("#classify-box")
    box.wait_for()
    assert page.locator("#chat-area").is_hidden() and page.get_by_label("Prompt format").is_hidden()
    text = "the parcel came late and broken"
    page.get_by_label("Text", exact=True).fill(text)
    page.get_by_role("button", name="Classify").click()
    page.locator("#classify-probs li").first.wait_for()

    want = client.post("/v1/classify", json={"model": "sentiment", "input": text}).json()["data"][0]
    assert page.locator("#classify-label strong").inner_text() == want["label"]
    shown = {li.get_attribute("data-label"): li.locator(".prob-value").inner_text()
             for li in page.locator("#classify-probs li").all()}  # fmt: skip
    assert shown == {label: f"{100 * p:.1f}%" for label, p in zip(labels, want["probs"], strict=True)}
    widths = page.locator("#classify-probs .prob-bar span").evaluate_all("s => s.map(e => parseFloat(e.style.width))")
    assert widths == sorted(widths, reverse=True) and abs(sum(widths) - 100) < 0.5, widths  # most likely first
    shot(page, "playground-classifier")
    axe_check(page, "classifier playground")
    no_js_errors(page)

    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)
    fits(page, "classifier playground")
    shot(page, "mobile-playground-classifier")
    axe_check(page, "classifier playground at 390 px")
