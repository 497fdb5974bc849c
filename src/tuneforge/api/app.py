"""The FastAPI application: `create_app(settings)` wires the store, the error handlers and the routers.

Routes only speak HTTP; what they do lives in `tuneforge.jobs.service`. Other parts of tuneforge that serve
over the same server (deployments, the web UI) add their routers here.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Response
from starlette.types import Lifespan

from .. import __version__
from ..jobs.store import Store
from ..serve import metrics
from ..settings import Settings
from ..storage import open_storage
from . import datasets, deploy, finetune, ui_support
from .auth import CurrentPrincipal
from .errors import install_error_handlers
from .limits import AuthThrottle, BodyLimit

DESCRIPTION = """
Self-hosted LoRA/QLoRA fine-tuning with a MonsterAPI-compatible API.

Every endpoint except `/v1/health` (and this page, unless the operator sets `TUNEFORGE_PUBLIC_DOCS=false`) needs
`Authorization: Bearer <key>`; keys are made on the server with
`tuneforge keys create NAME [--admin]`. Each key's owner sees only their own jobs and datasets; an admin key sees
all. Errors are `{"detail": "..."}`; invalid input (422) also lists `problems`, one per field.

The official `monsterapi` Python client works unchanged with `MClient(api_key=KEY, base_url="http://HOST:PORT/v1")`.
"""


def create_app(
    settings: Settings | None = None, *, store: Store | None = None, lifespan: Lifespan[FastAPI] | None = None
) -> FastAPI:
    settings = settings or Settings()
    settings.ensure_dirs()
    public = settings.public_docs  # else no docs pages and no schema (FastAPI's default URLs otherwise)
    app = FastAPI(
        title="tuneforge",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs" if public else None,
        redoc_url="/redoc" if public else None,
        openapi_url="/openapi.json" if public else None,
    )
    app.state.settings = settings
    app.state.store = store or Store(settings.database_url)
    # Opened once: a storage URL without its filesystem package stops the server here, not at the first upload.
    app.state.storage = open_storage(settings.storage)
    app.state.auth_throttle = AuthThrottle(settings.auth_failures_per_minute)
    app.add_middleware(BodyLimit, max_bytes=int(settings.max_request_bytes))
    install_error_handlers(app)

    @app.get("/v1/health", tags=["service"], summary="Liveness check (no key needed)")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get(
        "/metrics",
        tags=["service"],
        summary="Prometheus metrics of the deployments' engines (an administrator key)",
        response_class=Response,
    )
    def prometheus_metrics(principal: CurrentPrincipal) -> Response:
        # model labels name every tenant's adapters: only an administrator (the scraper's key) reads them
        if not principal.is_admin:
            raise HTTPException(403, "GET /metrics needs an administrator key (tuneforge keys create NAME --admin)")
        return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)

    app.include_router(finetune.router)
    app.include_router(datasets.router)
    deploy.install(app, settings, app.state.store)  # /v1/deploy/... and the OpenAI-compatible routes
    ui_support.install(app)  # the web UI at / and the small read-only routes it uses (catalog, schema, ...)
    return app
