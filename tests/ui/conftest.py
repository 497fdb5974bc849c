"""Browser-test helpers: a real `tuneforge server` with the tiny model, a key, and headless Debian Chromium driven by
Playwright (the system browser: `apt-get install chromium`; Playwright's own browser download is never used)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "jobs"))
sys.path.insert(0, str(Path(__file__).parent))  # uikit

from tfservice import Server, create_key, make_home

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "ui"
CHROMIUM = os.environ.get("TUNEFORGE_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium's own connections (updates, sync, field trials) are refused on
# machines without internet access and slow every page down.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
VIEWPORT = {"width": 1366, "height": 900}  # a laptop screen


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory, tiny_model_dir):
    """A server whose allowed folders hold the tiny model (`models/tiny`) and a small dataset; (server, key)."""
    home = make_home(tmp_path_factory.mktemp("ui-svc"), tiny_model_dir)
    key = create_key(home, "alice")
    server = Server(home, workers=1).start()
    yield server, key
    server.stop()


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's browser with `apt-get install chromium` (.ci/run does)")
    from playwright.sync_api import sync_playwright

    for old in ARTIFACTS.glob("FAILED-*.png"):  # from an earlier run
        old.unlink()

    with sync_playwright() as pw:
        # A non-persistent launch gets a fresh temporary user-data-dir.
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    """A fresh browser context (empty storage) with a laptop-sized viewport; JavaScript errors fail the test."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(20_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    pg.on("console", lambda msg: errors.append(f"console.error: {msg.text}") if msg.type == "error" else None)
    pg.js_errors = errors
    yield pg
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        save_screenshot(pg, f"FAILED-{request.node.name}")
        print("browser errors:", *errors, sep="\n  ")
    context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def save_screenshot(page, name: str) -> Path:
    """Save a full-page screenshot as a test artifact (test-artifacts/ui/NAME.png)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture
def shot():
    """shot(page, name): a full-page screenshot in test-artifacts/ui/NAME.png."""
    return save_screenshot


@pytest.fixture
def sign_in():
    """sign_in(page, server, key): through the sign-in page, to the jobs list."""

    def run(page, server, key: str) -> None:
        page.goto(server.url + "/")
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="Fine-tuning jobs").wait_for()

    return run
