"""The model catalog: ids users can name, and what tuneforge knows about each.

Kept as data. Only architectures with a passing tiny-model test in tests/ are listed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    family: str
    architecture: str  # transformers model_type
    params_b: float  # parameters, billions
    context_length: int
    chat: bool
    licence: str


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2", "llama", 0.135, 8192, True, "Apache-2.0"),
)


def catalog_ids() -> list[str]:
    return [entry.id for entry in CATALOG]
