"""Helpers shared by the browser tests (tests/ui/conftest.py puts this folder on sys.path)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

AXE = Path(__file__).parent / "fixtures" / "axe.min.js"  # axe-core 4.14.1 from npm (MPL-2.0, see axe-core-LICENSE.txt)
PHONE = {"width": 390, "height": 844}
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


def axe_check(page, name: str) -> None:
    """axe-core in the page: no serious or critical accessibility violations."""
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    found = page.evaluate("""async () => (await axe.run(document, { resultTypes: ['violations'] })).violations
        .filter(v => v.impact === 'serious' || v.impact === 'critical')
        .map(v => `${v.id} (${v.impact}): ${v.help}; ` + v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(' | '))""")
    assert not found, f"{name}: " + "\n".join(found)


def fits(page, name: str) -> None:
    """Nothing makes the page itself wider than the screen (wide tables scroll inside their cards)."""
    over = page.evaluate("""() => {
        const w = document.documentElement.clientWidth;
        const wide = [...document.querySelectorAll('body *')].filter(el => {
            const r = el.getBoundingClientRect();
            if (r.width === 0 || r.right <= w + 1) return false;
            for (let p = el.parentElement; p; p = p.parentElement) {
                const o = getComputedStyle(p).overflowX;
                if (o === 'auto' || o === 'scroll' || o === 'hidden') return false;
            }
            return true;
        });
        return { scroll: document.documentElement.scrollWidth, width: w,
                 wide: wide.slice(0, 5).map(el => el.tagName + (el.id ? '#' + el.id : '') + '.' + el.className) };
    }""")
    assert over["scroll"] <= over["width"] and not over["wide"], (name, over)
