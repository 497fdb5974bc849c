"""Fixtures for the serving tests: three crafted adapters on the tiny model, an engine over them, and a real
uvicorn server in front of that engine."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from serve_helpers import LiveServer, craft_adapter

ADAPTER_SEEDS = {"alpha": 1, "beta": 2, "gamma": 3}


@pytest.fixture(scope="session")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: craft_adapter(tiny_model_dir, root / name, seed) for name, seed in ADAPTER_SEEDS.items()}


@pytest.fixture(scope="module")
def engine(tiny_model_dir, adapters):
    from tuneforge.serve.engine import InferenceEngine

    eng = InferenceEngine(
        str(tiny_model_dir), adapters={k: str(v) for k, v in adapters.items()}, max_loaded_adapters=2, model_name="tiny"
    )
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def server(engine):
    from tuneforge.serve.app import create_app

    with LiveServer(create_app(engine)) as live:
        yield live
