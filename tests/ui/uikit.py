"""Helpers shared by the browser tests (tests/ui/conftest.py puts this folder on sys.path)."""

from __future__ import annotations

import json
import random
import re

TEMPLATE = "Question: {question}\nAnswer: {answer}"
# Browsers log every 4xx answer as a console error; the tests provoke some on purpose.
_EXPECTED_CONSOLE = re.compile(r"Failed to load resource: the server responded with a status of 4\d\d")


def no_js_errors(page) -> None:
    errors = [e for e in page.js_errors if not _EXPECTED_CONSOLE.search(e)]
    assert not errors, errors


def good_rows(n: int = 80) -> str:
    rng = random.Random(1)
    lines = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        lines.append(json.dumps({"question": f"what is {a} plus {b}?", "answer": str(a + b)}))
    return "\n".join(lines) + "\n"
