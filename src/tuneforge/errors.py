"""The one exception type users see.

Every error caused by what the user gave us (a spec field, a file, a model id) is a `TuneforgeError`:
the CLI prints its message on one line and exits with code 2, the API turns it into a 4xx (`NotFound` 404,
`Conflict` 409, any other 400 or 422). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TuneforgeError(Exception):
    """A problem with the user's input, stated so that the user can fix it."""

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None, value: object = None):
        super().__init__(message)
        self.field = field
        self.value = value


class NotFound(TuneforgeError):
    """No such job, dataset or deployment (or not the caller's): HTTP 404."""


class Conflict(TuneforgeError):
    """The request contradicts the current state (a taken name, a finished job): HTTP 409."""


class LimitReached(TuneforgeError):
    """A per-key quota of the server (queued and running jobs): HTTP 429."""


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' or '' — for messages about misspelt names."""
    matches = close_matches(word, choices)
    if not matches:
        return ""
    return " (did you mean " + " or ".join(repr(m) for m in matches) + "?)"
