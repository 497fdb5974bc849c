"""`/v1/deploy/...`: MonsterAPI's deployment endpoints, and the OpenAI-compatible inference routes over the live
deployments. The official `monsterapi` client's `deploy("llm", ...)`, `get_deployment_status`,
`get_deployment_logs`, `get_list_of_deployments` and `terminate_deployment` work unchanged; the `openai` client
then calls a live deployment with `model` = its deployment name and its `api_auth_token` (or the owner's key) as
the API key. The deployments themselves (and who may call them) live in `tuneforge.serve.deployments`, and resolving a
request's paths in `tuneforge.jobs.service`; these routes speak HTTP only.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..errors import Conflict, TuneforgeError
from ..jobs import service
from ..jobs.limits import string_problems
from ..jobs.paths import PathPolicy
from ..jobs.store import Store
from ..serve import metrics
from ..serve.classify import LoadedClassifier, classify_router
from ..serve.deployments import DeploymentManager, DeployRequest, deployment_auth
from ..serve.engine import Generation, SamplingParams, UnknownModelError
from ..serve.openai_routes import Auth, openai_router
from ..serve.seq2seq import LoadedSeq2Seq, seq2seq_router
from ..settings import Settings
from ..spec import CLASSIFIER_TASKS, SpecError
from .auth import CurrentPrincipal, SettingsDep, StoreDep
from .errors import Responses
from .limits import client_address, throttled
from .responses import (
    Deployment,
    DeploymentCreated,
    DeploymentLogs,
    DeploymentMetrics,
    DeploymentPage,
    DeploymentTerminated,
)

router = APIRouter(prefix="/v1/deploy", tags=["deployments"])

_ERRORS: Responses = {
    401: {"description": "Missing or invalid API key"},
    404: {"description": "No such deployment (or not yours)"},
    422: {"description": "Invalid input: `detail` and one `problems` entry per field"},
}


def _manager(request: Request) -> DeploymentManager:
    manager: DeploymentManager = request.app.state.deployments
    return manager


Manager = Annotated[DeploymentManager, Depends(_manager)]


def _view(request: Request, row: dict[str, Any]) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/")
    return {
        "deployment_id": row["id"],
        "deployment_name": row["name"],
        "status": row["status"],
        "owner": row["owner"],
        "basemodel_path": row["basemodel_path"],
        "loramodel_path": row["loramodel_path"],
        "prompt_template": row["prompt_template"],
        "max_model_len": row["max_model_len"],
        "error": row["error"],
        # MonsterAPI's status names the endpoint `URL`; here it is the OpenAI base URL, `model` = deployment_name.
        "URL": f"{base}/v1",
        # MonsterAPI's own POST <url>/generate (input_variables or prompt): the official client's base_url.
        "generate_base_url": f"{base}/v1/deploy/{row['name']}",
        "model": row["name"],
        "api_auth_token": row["token_prefix"] + "…",  # only the create response shows the whole token
        "created_at": service.iso(row["created_at"]),
        "updated_at": service.iso(row["updated_at"]),
        "live_at": service.iso(row["live_at"]),
        "terminated_at": service.iso(row["terminated_at"]),
        **_task(request, row),
    }


def _task(request: Request, row: dict[str, Any]) -> dict[str, Any]:
    """What a live deployment answers: text generation (causal_lm or seq2seq), or text or image classification with
    its labels (known once live)."""
    if row["status"] != "live":
        return {"task": None, "labels": None}
    manager = _manager(request)
    labels = manager.classifier_labels(row["id"])
    return {"task": manager.task(row["id"]), "labels": list(labels) if labels is not None else None}


@router.post("/llm", summary="Deploy a base model with a LoRA adapter as an API endpoint", responses=_ERRORS)
def deploy(
    req: DeployRequest,
    request: Request,
    manager: Manager,
    store: StoreDep,
    settings: SettingsDep,
    principal: CurrentPrincipal,
) -> DeploymentCreated:
    """Starts building at once and returns `deployment_id`; poll `GET /v1/deploy/status/{id}` until `live`, then
    call `POST /v1/chat/completions` with `model` = `deployment_name` and `Authorization: Bearer <api_auth_token>`.
    The whole `api_auth_token` is in this response only."""
    problems = string_problems(req.model_dump(), settings.max_field_chars)
    if problems:
        raise SpecError(problems)
    model_load, adapter = service.resolve_deployment(
        req.basemodel_path,
        req.loramodel_path,
        store,
        principal,
        PathPolicy.from_settings(settings),
        request.app.state.storage,
    )
    row, token = manager.create(
        req, owner=principal.owner, key_id=principal.key_id, model_load=model_load, adapter_source=adapter
    )
    return DeploymentCreated(
        message=f"deployment {row['name']!r} is building", **{**_view(request, row), "api_auth_token": token}
    )


@router.get(
    "/status/{deployment_id}", summary="A deployment's status: building, live, failed or terminated", responses=_ERRORS
)
def status(deployment_id: str, request: Request, manager: Manager, principal: CurrentPrincipal) -> Deployment:
    return Deployment(**_view(request, manager.visible(deployment_id, principal)))


@router.get("/logs/{deployment_id}", summary="The last lines of a deployment's log", responses=_ERRORS)
def logs(
    deployment_id: str,
    manager: Manager,
    principal: CurrentPrincipal,
    n_lines: Annotated[int, Query(ge=1, le=10000, description="How many of the last lines.")] = 100,
) -> DeploymentLogs:
    row = manager.visible(deployment_id, principal)
    lines = manager.tail(row["id"], n_lines)
    return DeploymentLogs(deployment_id=row["id"], status=row["status"], n_lines=len(lines), logs=lines)


@router.get(
    "/metrics/{deployment_id}",
    summary="A live deployment's serving figures: requests, tokens, latency percentiles, queue",
    responses={**_ERRORS, 409: {"description": "The deployment is not live, or is a classifier"}},
)
def deployment_metrics(deployment_id: str, manager: Manager, principal: CurrentPrincipal) -> DeploymentMetrics:
    """The figures `GET /metrics` exports for Prometheus (an administrator's), for one deployment and readable by
    its owner: counters since the server started (the UI turns two readings into tokens/s) and its engine's gauges
    now. The engine is shared by the deployments of one base model: its queue and batch are theirs together."""
    row = manager.visible(deployment_id, principal)
    serving = manager.serving(row["id"])
    if serving is None:
        task = manager.task(row["id"])
        why = (
            "a classifier (no generation metrics)"
            if task in CLASSIFIER_TASKS
            else "a seq2seq model (it generates outside the engine: no engine metrics)"
            if task == "seq2seq"
            else row["status"]
        )
        raise Conflict(
            f"deployment {row['name']!r} is {why}; serving metrics are kept for live causal text-generation "
            "deployments",
            field="deployment_id",
            value=deployment_id,
        )
    engine, model = serving
    return DeploymentMetrics(
        deployment_id=row["id"], deployment_name=row["name"], time=time.time(), **metrics.snapshot(engine, model)
    )


@router.get("/list", summary="Your deployments, newest first (an admin key: everyone's)", responses=_ERRORS)
def list_deployments(request: Request, manager: Manager, principal: CurrentPrincipal) -> DeploymentPage:
    rows = manager.list(service.scope(principal))
    return DeploymentPage(deployments=[Deployment.model_validate(_view(request, r)) for r in rows], total=len(rows))


class TerminateRequest(BaseModel):
    deployment_id: str
    actor: str | None = None  # sent by the monsterapi client ("user"); recorded in the log


@router.post(
    "/terminate", summary="Stop a deployment", responses={**_ERRORS, 409: {"description": "Already terminated"}}
)
def terminate(
    body: TerminateRequest, request: Request, manager: Manager, principal: CurrentPrincipal
) -> DeploymentTerminated:
    row = manager.terminate_for(body.deployment_id, principal, actor=body.actor)
    return DeploymentTerminated(message=f"deployment {row['name']!r} terminated", **_view(request, row))


# --- MonsterAPI's deployment endpoint: POST <deployment URL>/generate ------------------------------------------


class GenerateRequest(BaseModel):
    """MonsterAPI's `DeployLLM` payload (monsterapi.InputDataModels): `input_variables` fill the deployment's
    prompt_template, or `prompt` is sent as is."""

    model_config = ConfigDict(extra="forbid")

    input_variables: dict[str, Any] | None = Field(
        None, description='Values for the placeholders of the deployment\'s prompt_template (e.g. {"prompt": ...}).'
    )
    prompt: str | None = Field(
        None, description="A formatted prompt, used as is (no prompt template). Give it or input_variables, not both."
    )
    stream: bool = Field(False, description='Stream NUL-delimited JSON chunks {"text": [...]} as they grow.')
    n: int = Field(1, ge=1, le=16, description="Number of outputs.")
    temperature: float = Field(0.6, ge=0, le=2, description="Sampling temperature (0: greedy).")
    max_tokens: int = Field(256, ge=1, description="Most new tokens per output.")
    top_p: float = Field(1.0, gt=0, le=1, description="(tuneforge) Nucleus sampling mass.")
    seed: int | None = Field(None, description="(tuneforge) Seed for reproducible sampling (output i uses seed+i).")


@router.post(
    "/{deployment:path}/generate",
    response_model=None,
    responses={
        **_ERRORS,
        200: {
            "description": 'A JSON string holding {"text": [output, ...]} (MonsterAPI\'s shape), or with '
            "`stream` NUL-delimited JSON objects of that shape",
            "content": {
                "application/json": {"schema": {"type": "string"}},
                "application/octet-stream": {"schema": {"type": "string"}},
            },
        },
    },
    summary="MonsterAPI's deployment endpoint: generate from input_variables or a prompt",
)
async def generate(deployment: str, body: GenerateRequest, request: Request) -> JSONResponse | StreamingResponse:
    """The deployment's base URL for the official client is `<server>/v1/deploy/<name or id>` (the status's
    `generate_base_url`): `MClient(api_key=TOKEN, base_url=...).generate("deploy-llm", {...})`. As MonsterAPI's
    deployments do, the answer is a JSON string holding `{"text": [output, ...]}` (the official client decodes it
    twice), and a stream is NUL-delimited JSON objects of the same shape, each with the text so far."""
    manager = _manager(request)
    row = manager.get(deployment) or manager.by_name(deployment)
    name = row["name"] if row is not None else deployment
    await request.app.state.deployment_auth(request, name)
    has_vars, has_prompt = bool(body.input_variables), bool(body.prompt)
    if has_vars == has_prompt:
        raise TuneforgeError(
            "give either input_variables (filled into the deployment's prompt_template) or prompt "
            "(used as is), not " + ("both" if has_vars else "neither"),
            field="input_variables",
        )
    loop = asyncio.get_running_loop()
    gens: list[Generation] = []
    try:
        for i in range(body.n):
            params = SamplingParams(
                max_tokens=body.max_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                seed=None if body.seed is None else body.seed + i,
            )
            gens.append(
                manager.submit(
                    name,
                    body.prompt if has_prompt else None,
                    params,
                    loop=loop,
                    raw=True,
                    input_variables=body.input_variables if has_vars else None,
                )
            )
    except BaseException:
        for g in gens:
            g.cancel()
        raise
    if body.stream:
        return StreamingResponse(_stream_texts(gens), media_type="application/octet-stream")
    try:
        texts = [(await g.aresult()).text for g in gens]
    finally:
        for g in gens:
            g.cancel()
    return JSONResponse(json.dumps({"text": texts}))


async def _stream_texts(gens: list[Generation]) -> AsyncIterator[bytes]:
    texts = [""] * len(gens)
    # (output index, its next text delta; the exception that ended it; None once it has ended)
    updates: asyncio.Queue[tuple[int, str | Exception | None]] = asyncio.Queue()

    async def pump(i: int, gen: Generation) -> None:
        try:
            async for delta in gen.astream():
                await updates.put((i, delta))
        except Exception as exc:
            await updates.put((i, exc))
        finally:
            await updates.put((i, None))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    try:
        running = len(gens)
        while running:
            i, item = await updates.get()
            if item is None:
                running -= 1
                continue
            if isinstance(item, Exception):
                yield json.dumps({"error": str(item)}).encode() + b"\0"
                continue
            texts[i] += item
            yield json.dumps({"text": texts}).encode() + b"\0"
    finally:
        for t in tasks:
            t.cancel()
        for g in gens:
            g.cancel()


def install(app: FastAPI, settings: Settings, store: Store) -> DeploymentManager:
    """Mount the deploy routes and the OpenAI-compatible routes on the service app; rebuild earlier deployments."""
    manager = DeploymentManager(
        store.engine,
        settings.logs_dir / "deployments",
        engine_options={
            "max_batch_size": settings.serve_max_batch_size,
            "kv_cache_mb": settings.serve_kv_cache_mb,
            "max_waiting": settings.serve_max_waiting,
            "weights": settings.serve_weights,
        },
    )
    app.state.deployments = manager
    app.include_router(router)
    auth = throttled_auth(deployment_auth(manager, store.authenticate, key_active=store.key_active))
    app.state.deployment_auth = auth  # MonsterAPI's /generate checks callers the same way
    engine_routes = openai_router(manager, auth)
    # First: seq2seq deployments answer /v1/completions themselves; every other model goes on to the engine routes.
    app.include_router(seq2seq_router(_DeployedSeq2Seq(manager), auth, fallback=engine_routes))
    app.include_router(engine_routes)
    app.include_router(classify_router(_DeployedClassifiers(manager), auth))  # classifier deployments
    manager.restore()
    return manager


class _DeployedClassifiers:
    """The live classifier deployments as `POST /v1/classify`'s pool."""

    def __init__(self, manager: DeploymentManager):
        self.manager = manager

    def get(self, name: str) -> LoadedClassifier:
        return self.manager.classifier(name)


class _DeployedSeq2Seq:
    """The live seq2seq deployments as the seq2seq router's models (serve/seq2seq.py)."""

    def __init__(self, manager: DeploymentManager):
        self.manager = manager
        self.created = manager.created

    def names(self) -> list[str]:
        return []  # every live deployment is listed by the engine routes' GET /v1/models already

    def has(self, name: str) -> bool:
        return self.manager.seq2seq(name) is not None

    def get(self, name: str) -> LoadedSeq2Seq:
        model = self.manager.seq2seq(name)
        if model is None:
            raise UnknownModelError(f"model {name!r} is not a live seq2seq deployment here", field="model", value=name)
        return model


def throttled_auth(auth: Auth) -> Auth:
    """`auth` of the OpenAI routes, with failed attempts counted against the client address's budget
    (TUNEFORGE_AUTH_FAILURES_PER_MINUTE) as on every other route: guessing api_auth_tokens is throttled too."""

    async def checked(request: Request, model: str | None) -> None:
        throttle = request.app.state.auth_throttle
        refusal = throttled(throttle, request)
        if refusal is not None:
            raise refusal
        try:
            result = auth(request, model)  # an Auth may be a plain function or a coroutine function
            if inspect.isawaitable(result):
                await result
        except HTTPException as exc:
            if exc.status_code == 401 and request.headers.get("authorization"):
                throttle.failed(client_address(request))
            raise

    return checked
