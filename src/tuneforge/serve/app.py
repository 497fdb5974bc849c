"""`tuneforge serve`: the OpenAI-compatible inference routes over one engine, without the job database."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import Request, Response

from ..errors import TuneforgeError
from . import metrics
from .classify import LoadedClassifier, classifier_pool, classify_router, is_classifier
from .engine import InferenceEngine
from .openai_routes import _call_auth, bearer_key_auth, openai_router
from .pool import AdapterPool
from .seq2seq import LoadedSeq2Seq, is_seq2seq, seq2seq_pool, seq2seq_router


def create_app(
    engine: InferenceEngine | None,
    *,
    api_key: str | None = None,
    classifiers: AdapterPool[LoadedClassifier] | None = None,
    seq2seq: AdapterPool[LoadedSeq2Seq] | None = None,
):
    """A FastAPI app serving `engine` on /v1 (OpenAI-compatible), the `classifiers` on `POST /v1/classify`
    (serve/classify.py) and the `seq2seq` models on `POST /v1/completions` (serve/seq2seq.py), plus `GET /health`.
    Any may be absent (a server of classifiers or seq2seq models only loads no causal LM)."""
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
    engine_routes = openai_router(engine, auth) if engine is not None else None
    if seq2seq is not None:  # first: it answers for its own models and passes the others on to the engine's routes
        app.include_router(seq2seq_router(seq2seq, auth, fallback=engine_routes))
    if engine_routes is not None:
        app.include_router(engine_routes)
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
        if seq2seq is not None:
            status["seq2seq"] = seq2seq.names()
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
) -> tuple[InferenceEngine | None, AdapterPool[LoadedClassifier] | None, AdapterPool[LoadedSeq2Seq] | None]:
    """The engine for generation adapters (and the base), the pool of classifier adapters (task classification
    in their tuneforge_adapter.json: they answer /v1/classify) and the pool of seq2seq adapters (task seq2seq: they
    answer /v1/completions). Only classifiers and seq2seq adapters: no causal language model is loaded, and without
    --model each loads the base its adapter names. `engine_options`: the engine's weights and batching settings
    (InferenceEngine's keyword arguments)."""
    classifiers = {name: path for name, path in adapters.items() if is_classifier(path)}
    encoder_decoders = {name: path for name, path in adapters.items() if is_seq2seq(path)}
    generators = {name: path for name, path in adapters.items() if name not in classifiers | encoder_decoders}
    engine = None
    if generators or not (classifiers or encoder_decoders):
        engine = InferenceEngine(
            model or "smollm2",
            adapters=generators,
            max_loaded_adapters=max_adapters,
            model_name=model_name,
            chat_template=chat_template,
            dtype=dtype,
            **engine_options,
        )
    pool = classifier_pool(classifiers, model_path=model) if classifiers else None
    seq2seq = seq2seq_pool(encoder_decoders, model_path=model) if encoder_decoders else None
    return engine, pool, seq2seq


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

    # The engine's INFO lines go to the console beside uvicorn's: which decode path serves ("lean decode on (cpu,
    # float32, int8 weights)"), adapters served by the plain forward and why. Warnings show either way.
    serve_log = logging.getLogger("tuneforge.serve")
    if not serve_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        serve_log.addHandler(handler)
        serve_log.setLevel(logging.INFO)
    engine, pool, seq2seq = build_serving(
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
    app = create_app(engine, api_key=api_key, classifiers=pool, seq2seq=seq2seq)
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    names = (
        (engine.model_names() if engine else [])
        + [f"{n} (classifier)" for n in (pool.names() if pool else [])]
        + [f"{n} (seq2seq)" for n in (seq2seq.names() if seq2seq else [])]
    )
    print(f"tuneforge serve: {', '.join(names)}")
    print(f"  OpenAI base URL: http://{shown}:{port}/v1" + ("  (API key required)" if api_key else ""))
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0
