"""The web UI's second pass (issue 19), each finding reproduced in headless Chromium against a real server with the
tiny model: the model is checked when chosen; the form says each problem once, clears it when fixed and warns before
launch; a finished job shows what it came to and marks the kept step; evaluations about 10 per run and every training
line in the log; deep links, Back, drafts, clone/retry, job names and sign-out across tabs; every page at 390 px with
no page-wide overflow; and axe-core in the page with no serious or critical violations. Screenshots in
test-artifacts/ui/."""

from __future__ import annotations

import re

import pytest
from tfservice import Client, payload, wait_for
from uikit import PHONE, TEMPLATE, axe_check, fits, good_rows, no_js_errors

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def stopped_job(ui_server):
    """An 18-step job with the default evaluation interval (every 2nd step) that stops early: with a threshold of 100
    no evaluation improves on the one before training (step 0), so with patience 4 it evaluates at steps 0 (kept), 2,
    4, 6 and 8, and stops at 8."""
    server, key = ui_server
    client = Client(server.url, key)
    body = payload(server.home, max_steps=18, early_stopping_patience=4, early_stopping_threshold=100.0)
    del body["training_config"]["eval_steps"]  # the default: about 10 evaluations per run
    body["suffix"] = "early-bird"
    job_id = client.post("/v1/finetune/llm", json=body).json()["job_id"]
    job = client.wait_status(job_id, ("succeeded", "failed"), 240, server)
    assert job["status"] == "succeeded", job
    assert job["result"]["stopped_early"] and job["result"]["steps"] == 8 and job["result"]["best_step"] == 0, job
    return job


def test_a_misspelt_model_is_caught_when_chosen_and_blocks_create(ui_server, page, shot, sign_in):
    server, key = ui_server
    sign_in(page, server, key)
    page.goto(server.url + "/#/new")
    page.get_by_text(re.compile(r"Catalog \(\d+ models\)")).wait_for(timeout=180_000)
    # Catalog rows say whether a job can start at once or must download the model first.
    tiny_row = page.locator("#model-table tr[data-group=local]").first
    assert tiny_row.locator(".tag").inner_text() == "on this server"
    smol = page.locator('#model-table tr[data-model="HuggingFaceTB/SmolLM2-135M-Instruct"] .tag')
    assert smol.inner_text() == "on this server"  # bundled
    assert page.locator("#model-table tr[data-group=catalog] .tag.download").count() > 0
    page.locator("#model-check").get_by_text("can be used: a model folder on this server").wait_for()

    page.get_by_label("Other model: hub id or model folder on the server").fill("Qwen/Qwen2.5-0.5B-Instruc")
    problem = page.locator("#model-problem")
    problem.wait_for()
    assert "cannot be reached" in problem.inner_text()
    assert (
        page.get_by_label("Other model: hub id or model folder on the server").get_attribute("aria-invalid") == "true"
    )
    suggestion = problem.get_by_role("button", name="Qwen/Qwen2.5-0.5B-Instruct", exact=True)
    page.locator("#model-section").scroll_into_view_if_needed()
    shot(page, "new-job-model-misspelt")
    page.get_by_role("button", name="Create fine-tuning job").click()
    page.locator("#form-problems").get_by_text("The base model cannot be used (section 1).").wait_for()
    assert Client(server.url, key).get("/v1/finetune/llm").json()["total"] == 0  # nothing was queued

    suggestion.click()  # the close match is selected in the table (here it is not on the server either)
    assert page.locator('#model-table tr[data-model="Qwen/Qwen2.5-0.5B-Instruct"] input[type=radio]').is_checked()
    page.locator("#model-table tr[data-group=local] input[type=radio]").first.check()
    page.locator("#model-check").get_by_text("can be used").wait_for()
    wait_for(lambda: "base model" not in page.locator("#form-problems").inner_text(), 10, what="the problem to clear")
    no_js_errors(page)


def test_form_problems_are_said_once_cleared_when_fixed_and_warned_before_launch(
    ui_server, page, tmp_path, shot, sign_in
):
    server, key = ui_server
    good = tmp_path / "qa.jsonl"
    good.write_text(good_rows())
    sign_in(page, server, key)
    page.goto(server.url + "/#/new")
    page.get_by_text(re.compile(r"Catalog \(\d+ models\)")).wait_for(timeout=180_000)  # its first build is slow

    # Help texts lead with what a setting does; the spec's field name comes last.
    lr_help = page.locator("#" + page.get_by_label("Learning rate", exact=True).get_attribute("aria-describedby"))
    assert not lr_help.inner_text().startswith("learning_rate") and lr_help.inner_text().endswith("learning_rate")

    # Before a template is written the data is not "Not trainable": the next step is said instead.
    page.get_by_label("Dataset file").set_input_files(str(good))
    page.get_by_role("button", name="Upload and check").click()
    pending = page.locator("#data-report .verdict.pending")
    pending.wait_for()
    assert "prompt template" in pending.inner_text() and "question, answer" in pending.inner_text()
    assert page.locator("#data-report .verdict.bad").count() == 0

    # A validation share of 1.5 is refused as it is typed, with the allowed range, not as "train fraction -0.5".
    share = page.get_by_label("Validation share", exact=True)
    share.fill("1.5")
    problem = page.locator("#f-validation-share-problem")
    assert "1.5 is not allowed" in problem.inner_text() and "between 0 and 0.9" in problem.inner_text()
    assert share.get_attribute("aria-invalid") == "true"
    page.get_by_role("button", name="Create fine-tuning job").click()
    summary = page.locator("#form-problems")
    summary.get_by_text("Write a prompt template (section 3).").wait_for()
    assert summary.get_by_role("link", name="Validation or test share").is_visible()
    assert page.locator("body").inner_text().count("1.5 is not allowed") == 1  # said once, next to the field
    assert "train fraction" not in page.locator("body").inner_text()
    shot(page, "new-job-form-problems")

    share.fill("0.1")  # fixed: gone from the field and from the summary at once
    assert problem.inner_text() == "" and share.get_attribute("aria-invalid") == "false"
    assert "share" not in summary.inner_text()
    page.get_by_label("Prompt template").fill(TEMPLATE)
    page.locator("#report-box[data-state=inspected] .verdict.ok").wait_for()
    wait_for(lambda: summary.inner_text() == "", 10, what="the summary to empty")
    # 80 rows at 0.1: 8 validation rows, and the warning training would give, before launch.
    page.locator("#data-split").get_by_text("72 training · 8 validation rows").wait_for()
    warning = page.locator('#data-warnings li[data-kind="small_validation"]')
    assert "8 validation rows" in warning.inner_text()
    share.fill("0.3")
    page.locator("#data-split").get_by_text("56 training · 24 validation rows").wait_for()
    assert warning.count() == 0

    # What only the server can check (the model's layers) comes back next to its field, once, and goes when edited.
    page.get_by_text("Advanced settings").click()
    targets = page.get_by_label("Target modules (comma-separated)")
    targets.fill("no_such_proj")
    page.get_by_label("Max steps", exact=True).fill("4")
    page.get_by_role("button", name="Create fine-tuning job").click()
    target_problem = page.locator("#f-pretrainedmodel_config-target_modules-problem")
    target_problem.get_by_text("not found").wait_for()
    assert page.locator("body").inner_text().count("no_such_proj") == 1
    assert summary.get_by_role("link", name="Target modules (comma-separated)").is_visible()
    targets.fill("")
    assert target_problem.inner_text() == "" and summary.inner_text() == ""
    no_js_errors(page)


def test_a_finished_job_says_what_it_came_to_and_marks_the_kept_step(ui_server, stopped_job, page, shot, sign_in):
    server, key = ui_server
    job_id = stopped_job["job_id"]
    # The kept step is the run's (the threshold counts), not merely the lowest loss the job recorded.
    assert stopped_job["losses"]["best_step"] == 0
    assert stopped_job["losses"]["best_eval_loss"] == stopped_job["result"]["eval_loss"]
    sign_in(page, server, key)
    page.goto(f"{server.url}/#/jobs/{job_id}")
    summary = page.locator("#job-summary")
    summary.wait_for()
    text = summary.inner_text()
    assert text.startswith("Stopped early at step 8 of 18 (validation loss did not improve for 4 evaluations)"), text
    assert "kept step 0 (no evaluation improved on the starting point), validation loss" in text
    assert page.locator("#stat-eta").count() == 0 and "Speed" not in page.locator("#job-progress").inner_text()
    assert page.locator("#job-percent").count() == 0  # no "44.4%" for a job that is done
    assert page.locator("#stat-kept-step .v").inner_text() == "0"
    page.locator("#loss-chart[data-marker='0']").wait_for()
    assert page.locator("#loss-chart text.marker-label").text_content() == "kept step 0"
    # About 10 evaluations per run by default: every 2nd step of 18, not every step.
    evals = page.locator('#loss-chart polyline[data-series="validation"]')
    wait_for(lambda: evals.get_attribute("data-n") == "5", 15, what="5 validation points")
    # The log shows every training line the run recorded, not every 10th.
    log = page.locator("#job-log")
    wait_for(lambda: len(re.findall(r"step \d+/18 loss", log.inner_text())) == 8, 15, what="8 training lines")
    assert [int(n) for n in re.findall(r"eval at step (\d+)", log.inner_text())] == [0, 2, 4, 6, 8]
    # Its name, not its hash, heads the page and the jobs list; the list says it stopped early.
    assert page.locator("#job-name").inner_text() == "early-bird"
    shot(page, "job-stopped-early")
    page.get_by_role("link", name="Jobs", exact=True).click()
    row = page.locator(f'tr[data-job="{job_id}"]')
    row.get_by_role("link", name="early-bird").wait_for()
    assert "stopped early at 8/18" in row.inner_text()
    no_js_errors(page)


def test_navigation_deep_links_back_drafts_clone_names_and_sign_out_everywhere(
    ui_server, stopped_job, page, tmp_path, shot, sign_in
):
    server, key = ui_server
    client = Client(server.url, key)
    # A deep link signed out: after sign-in, the job (not the job list).
    page.goto(f"{server.url}/#/jobs/{stopped_job['job_id']}")
    page.get_by_role("heading", name="Sign in to tuneforge").wait_for()
    page.get_by_label("API key").fill(key)
    page.get_by_label("Remember the key on this computer").check()
    page.get_by_role("button", name="Sign in").click()
    page.locator("#job-summary").wait_for()
    # Back to the sign-in page while signed in: still signed in, back where the user was.
    page.go_back()
    page.locator("#job-summary").wait_for()
    assert page.locator("#who").is_visible() and "#/signin" not in page.url

    # Back keeps the form's draft: name, template and a setting survive leaving the page.
    page.goto(server.url + "/#/new")
    page.get_by_role("radio", name="tiny", exact=True).wait_for()
    page.get_by_label("Job name (optional)").fill("my-draft")
    page.get_by_label("Prompt template").fill(TEMPLATE)
    page.get_by_label("Learning rate", exact=True).fill("0.005")
    page.get_by_role("link", name="Jobs", exact=True).click()
    page.get_by_role("heading", name="Fine-tuning jobs").wait_for()
    page.go_back()
    page.locator("#form-origin").get_by_text("Your unsent settings are back.").wait_for()
    assert page.get_by_label("Job name (optional)").input_value() == "my-draft"
    assert page.get_by_label("Prompt template").input_value() == TEMPLATE
    assert page.get_by_label("Learning rate", exact=True).input_value() == "0.005"
    page.get_by_role("button", name="Start over").click()
    wait_for(lambda: page.get_by_label("Job name (optional)").input_value() == "", 10, what="an empty form")

    # A cancelled job is retried through the form, with its settings and the file name of its upload.
    with open(server.home / "datasets" / "qa.jsonl", "rb") as fh:
        ds = client.post(
            "/v1/datasets", files={"file": ("numbers.jsonl", fh)}, data={"prompt_template": TEMPLATE}
        ).json()
    body = payload(server.home, data_path=ds["id"], max_steps=5000, eval_steps=2500)
    body["suffix"] = "long-run"
    r = client.post("/v1/finetune/llm", json=body)
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    client.post(f"/v1/finetune/llm/{job_id}/cancel")
    client.wait_status(job_id, ("cancelled",), 60, server)
    page.goto(server.url + "/#/jobs")
    row = page.locator(f'tr[data-job="{job_id}"]')
    row.get_by_role("link", name="long-run").wait_for()
    assert "numbers.jsonl" in row.inner_text()  # the file name, not only ds_...
    row.get_by_role("link", name="long-run").click()
    page.get_by_role("link", name="Retry…").click()
    page.locator("#form-origin").get_by_text("Settings copied from job").wait_for()
    assert page.get_by_label("Job name (optional)").input_value() == "long-run"
    assert page.get_by_label("Max steps", exact=True).input_value() == "5000"
    assert page.get_by_label("Uploaded dataset").input_value() == ds["id"]
    assert page.get_by_label("Prompt template").input_value() == TEMPLATE
    page.locator("#report-box[data-state=inspected] .verdict.ok").wait_for()
    shot(page, "new-job-retry")

    # Signing out in one tab signs out the others.
    other = page.context.new_page()
    other.goto(server.url + "/#/jobs")
    other.get_by_role("heading", name="Fine-tuning jobs").wait_for()
    page.get_by_role("button", name="Sign out").click()
    other.get_by_role("heading", name="Sign in to tuneforge").wait_for(timeout=10_000)
    assert other.evaluate("localStorage.getItem('tuneforge.key')") is None
    no_js_errors(page)


def test_every_page_at_390_px_and_axe_finds_no_serious_violations(ui_server, stopped_job, browser, shot):
    server, key = ui_server
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(server.url + "/")
        page.get_by_role("heading", name="Sign in to tuneforge").wait_for()
        fits(page, "signin")
        axe_check(page, "signin")
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="Fine-tuning jobs").wait_for()
        page.locator(f'tr[data-job="{stopped_job["job_id"]}"]').wait_for()

        # The navigation folds behind "Menu" and opens from it.
        nav = page.get_by_role("navigation", name="Main")
        menu = page.get_by_role("button", name="Menu")
        assert menu.is_visible() and not nav.is_visible()
        menu.click()
        assert nav.is_visible() and menu.get_attribute("aria-expanded") == "true"
        shot(page, "mobile-menu")
        menu.click()

        # The jobs table scrolls inside its card; the page does not.
        table_box = page.locator("#jobs-table").locator("xpath=..")
        assert page.evaluate("(el) => getComputedStyle(el).overflowX", table_box.element_handle()) == "auto"
        fits(page, "jobs")
        shot(page, "mobile-jobs")
        axe_check(page, "jobs")

        page.goto(f"{server.url}/#/jobs/{stopped_job['job_id']}")
        page.locator("#job-summary").wait_for()
        page.locator("#loss-chart polyline").first.wait_for()
        # Chart labels keep their size: the chart is drawn at the width it is shown at, not scaled down.
        sizes = page.evaluate("""() => [...document.querySelectorAll('#loss-chart text')]
            .map(t => t.getBoundingClientRect().height)""")
        assert sizes and min(sizes) >= 9, sizes
        fits(page, "job")
        shot(page, "mobile-job")
        axe_check(page, "job")

        page.goto(server.url + "/#/new")
        page.get_by_text(re.compile(r"Catalog \(\d+ models\)")).wait_for(timeout=180_000)
        fits(page, "new")
        shot(page, "mobile-new-job")
        axe_check(page, "new")

        page.goto(server.url + "/#/playground")
        page.get_by_role("heading", name="Playground").wait_for()
        page.locator("#deployments").wait_for(state="attached")
        fits(page, "playground")
        shot(page, "mobile-playground")
        axe_check(page, "playground")
    finally:
        context.close()
    assert not errors, errors


def test_axe_finds_no_serious_violations_on_the_laptop_pages(ui_server, stopped_job, page, sign_in):
    server, key = ui_server
    sign_in(page, server, key)
    page.locator(f'tr[data-job="{stopped_job["job_id"]}"]').wait_for()
    axe_check(page, "jobs")
    page.goto(f"{server.url}/#/jobs/{stopped_job['job_id']}")
    page.locator("#job-summary").wait_for()
    axe_check(page, "job")
    page.goto(server.url + "/#/new")
    page.get_by_text(re.compile(r"Catalog \(\d+ models\)")).wait_for(timeout=180_000)
    page.get_by_text("Advanced settings").click()
    axe_check(page, "new")
    page.goto(server.url + "/#/playground")
    page.locator("#deployments").wait_for(state="attached")
    axe_check(page, "playground")
    no_js_errors(page)
