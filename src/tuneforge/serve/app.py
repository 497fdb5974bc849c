"""`tuneforge serve`: the OpenAI-compatible inference routes over one engine, without the job database."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request, Response

from ..errors import TuneforgeError
from . import metrics
from .classify import ClassifierPool, classify_router, is_classifier
from .engine import InferenceEngine
from .openai_routes import _call_auth, bearer_key_auth, openai_router


def create_app(
    engine: InferenceEngine | None, *, api_key: str | None = None, classifiers: ClassifierPool | None = None
):
    """A FastAPI app serving `engine` on /v1 (OpenAI-compatible) and the `classifiers` on `POST /v1/classify`
    (serve/classify.py), plus `GET /health`. Either may be absent (a server of classifiers only loads no LM)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    @asynccontextmanager
    async def lifespan(app):
        yield
        if engine is not None:
            engine.close()

    app = FastAPI(
        title="tuneforge serve",
        description="OpenAI-compatible inference for a base model and its LoRA adapters.",
        lifespan=lifespan,
    )
    auth = bearer_key_auth(api_key)
    if engine is not None:
        app.include_router(openai_router(engine, auth))
    if classifiers is not None:
        app.include_router(classify_router(classifiers, auth))

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics (the API key when one is set)")
    async def prometheus_metrics(request: Request) -> Response:
        await _call_auth(auth, request, None)
        return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)

    @app.get("/health", tags=["service"])
    def health() -> dict:
        status: dict = {"status": "ok"}
        if engine is not None:
            status |= {
                "models": engine.model_names(),
                "loaded_adapters": engine.loaded_adapters(),
                "max_loaded_adapters": engine.max_loaded_adapters,
            }
        if classifiers is not None:
            status["classifiers"] = classifiers.names()
        return status

    return app


def parse_adapter_args(values: list[str]) -> dict[str, str]:
    """`NAME=DIR` pairs (a bare `DIR` is named after its run folder) -> {name: dir}, with clear errors."""
    adapters: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            path = value
            p = Path(value).expanduser().resolve()
            name = p.parent.name if p.name == "adapter" else p.name  # runs/orders/adapter -> "orders"
        if not name or not path:
            raise TuneforgeError(f"--adapter {value!r}: expected NAME=DIR", field="--adapter", value=value)
        if name in adapters:
            raise TuneforgeError(f"--adapter: name {name!r} is given twice", field="--adapter", value=value)
        adapters[name] = path
    return adapters


def build_serving(
    model: str | None,
    adapters: dict[str, str],
    *,
    max_adapters: int = 4,
    model_name: str | None = None,
    chat_template: str = "training",
    dtype: str = "auto",
    **engine_options,
) -> tuple[InferenceEngine | None, ClassifierPool | None]:
    """The engine for generation adapters (and the base) and the pool of classifier adapters (task classification
    in their tuneforge_adapter.json: they answer /v1/classify). Only classifiers: no language model is loaded, and
    without --model each classifier loads the base its adapter names. `engine_options`: the engine's weights and
    batching settings (InferenceEngine's keyword arguments)."""
    classifiers = {name: path for name, path in adapters.items() if is_classifier(path)}
    generators = {name: path for name, path in adapters.items() if name not in classifiers}
    engine = None
    if generators or not classifiers:
        engine = InferenceEngine(
            model or "smollm2",
            adapters=generators,
            max_loaded_adapters=max_adapters,
            model_name=model_name,
            chat_template=chat_template,
            dtype=dtype,
            **engine_options,
        )
    pool = ClassifierPool(classifiers, model_path=model) if classifiers else None
    return engine, pool


def run_server(
    *,
    model: str | None,
    adapters: list[str],
    host: str,
    port: int,
    max_adapters: int,
    api_key: str | None,
    model_name: str | None = None,
    chat_template: str = "training",
    dtype: str = "auto",
    weights: str = "dense",
    scheduler: str = "batched",
    max_batch_size: int = 32,
    step_tokens: int = 256,
    kv_cache_mb: float = 2048,
    max_waiting: int = 1024,
) -> int:
    import uvicorn

    engine, pool = build_serving(
        model,
        parse_adapter_args(adapters),
        max_adapters=max_adapters,
        model_name=model_name,
        chat_template=chat_template,
        dtype=dtype,
        weights=weights,
        scheduler=scheduler,
        max_batch_size=max_batch_size,
        step_tokens=step_tokens,
        kv_cache_mb=kv_cache_mb,
        max_waiting=max_waiting,
    )
    app = create_app(engine, api_key=api_key, classifiers=pool)
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    names = (engine.model_names() if engine else []) + [f"{n} (classifier)" for n in (pool.names() if pool else [])]
    print(f"tuneforge serve: {', '.join(names)}")
    print(f"  OpenAI base URL: http://{shown}:{port}/v1" + ("  (API key required)" if api_key else ""))
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0
