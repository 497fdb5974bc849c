"""`/v1/deploy/...`: MonsterAPI's deployment endpoints, and the OpenAI-compatible inference routes over the live
deployments. The official `monsterapi` client's `deploy("llm", ...)`, `get_deployment_status`,
`get_deployment_logs`, `get_list_of_deployments` and `terminate_deployment` work unchanged; the `openai` client
then calls a live deployment with `model` = its deployment name and its `api_auth_token` (or the owner's key) as
the API key. The deployments themselves live in `tuneforge.serve.deployments`; these routes speak HTTP only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..errors import TuneforgeError
from ..jobs import service
from ..jobs.paths import PathPolicy, classify_model_path, is_job_id, looks_like_url
from ..jobs.store import Principal, Store
from ..serve.deployments import DeploymentManager, DeployRequest
from ..serve.engine import SamplingParams, check_adapter_folder
from ..serve.openai_routes import openai_router
from .auth import get_principal

router = APIRouter(prefix="/v1/deploy", tags=["deployments"])

_ERRORS = {401: {"description": "Missing or invalid API key"},
           404: {"description": "No such deployment (or not yours)"},
           422: {"description": "Invalid input: `detail` and one `problems` entry per field"}}


def _manager(request: Request) -> DeploymentManager:
    return request.app.state.deployments


def _view(request: Request, row: dict) -> dict:
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
    }


def _visible(request: Request, principal: Principal, deployment_id: str) -> dict:
    row = _manager(request).get(deployment_id.strip())
    if row is None or (not principal.is_admin and row["owner"] != principal.owner):
        raise service.NotFound(f"deployment {deployment_id!r} not found", field="deployment_id", value=deployment_id)
    return row


def _resolve_base(value: str, policy: PathPolicy) -> str:
    from ..models.loader import ALIASES

    v = value.strip()
    if classify_model_path(v) == "local":
        path = policy.local(v, "basemodel_path")
        if not (Path(path) / "config.json").is_file():
            raise TuneforgeError(f"basemodel_path: {value!r} is not a Hugging Face model folder (no config.json)",
                                 field="basemodel_path", value=value)
        return path
    return ALIASES.get(v.lower(), v)


def _resolve_adapter(value: str | None, store: Store, principal: Principal, policy: PathPolicy) -> str | None:
    v = (value or "").strip()
    field = "loramodel_path"
    if not v:
        return None
    if is_job_id(v):
        job = store.get_job(v, service.scope(principal))
        if job is None:
            raise TuneforgeError(f"{field}: no fine-tuning job {v!r} of yours (GET /v1/finetune/llm lists them)",
                                 field=field, value=v)
        if job["status"] != "succeeded":
            raise TuneforgeError(f"{field}: job {v!r} is {job['status']}; deploy it once it has succeeded",
                                 field=field, value=v)
        folder = Path(job["run_dir"]) / "adapter"
        check_adapter_folder(folder, field=field)
        return str(folder)
    if looks_like_url(v) or "://" in v:
        raise TuneforgeError(f"{field}: URLs are not supported here; give a succeeded job id, an adapter folder on "
                             "the server, or a hub id", field=field, value=v)
    if classify_model_path(v) == "local":
        folder = policy.local(v, field)
        check_adapter_folder(folder, field=field)
        return folder
    from ..models.loader import _hf_cached_snapshot, hub_reachable

    if _hf_cached_snapshot(v) is None and not hub_reachable():
        raise TuneforgeError(f"{field}: {v!r} is not in the server's Hugging Face cache and the hub cannot be "
                             "reached", field=field, value=v)
    return v


@router.post("/llm", summary="Deploy a base model with a LoRA adapter as an API endpoint", responses=_ERRORS)
def deploy(req: DeployRequest, request: Request, principal: Principal = Depends(get_principal)) -> dict:
    """Starts building at once and returns `deployment_id`; poll `GET /v1/deploy/status/{id}` until `live`, then
    call `POST /v1/chat/completions` with `model` = `deployment_name` and `Authorization: Bearer <api_auth_token>`.
    The whole `api_auth_token` is in this response only."""
    settings, store = request.app.state.settings, request.app.state.store
    policy = PathPolicy.from_settings(settings)
    problems = []
    model_load = adapter = None
    try:
        model_load = _resolve_base(req.basemodel_path, policy)
    except TuneforgeError as exc:
        problems.append(str(exc))
    try:
        adapter = _resolve_adapter(req.loramodel_path, store, principal, policy)
    except TuneforgeError as exc:
        problems.append(str(exc))
    if problems:
        from ..spec import SpecError

        raise SpecError(problems)
    row, token = _manager(request).create(req, owner=principal.owner, key_id=principal.key_id,
                                          model_load=model_load, adapter_source=adapter)
    return {"message": f"deployment {row['name']!r} is building", **_view(request, row), "api_auth_token": token}


@router.get("/status/{deployment_id}", summary="A deployment's status: building, live, failed or terminated",
            responses=_ERRORS)
def status(deployment_id: str, request: Request, principal: Principal = Depends(get_principal)) -> dict:
    return _view(request, _visible(request, principal, deployment_id))


@router.get("/logs/{deployment_id}", summary="The last lines of a deployment's log", responses=_ERRORS)
def logs(deployment_id: str, request: Request, principal: Principal = Depends(get_principal),
         n_lines: int = Query(100, ge=1, le=10000, description="How many of the last lines.")) -> dict:
    row = _visible(request, principal, deployment_id)
    lines = _manager(request).tail(row["id"], n_lines)
    return {"deployment_id": row["id"], "status": row["status"], "n_lines": len(lines), "logs": lines}


@router.get("/list", summary="Your deployments, newest first (an admin key: everyone's)", responses=_ERRORS)
def list_deployments(request: Request, principal: Principal = Depends(get_principal)) -> dict:
    rows = _manager(request).list(service.scope(principal))
    return {"deployments": [_view(request, r) for r in rows], "total": len(rows)}


class TerminateRequest(BaseModel):
    deployment_id: str
    actor: str | None = None  # sent by the monsterapi client ("user"); recorded in the log


@router.post("/terminate", summary="Stop a deployment", responses={
    **_ERRORS, 409: {"description": "Already terminated"}})
def terminate(body: TerminateRequest, request: Request, principal: Principal = Depends(get_principal)) -> dict:
    row = _visible(request, principal, body.deployment_id)
    if row["status"] == "terminated":
        raise service.Conflict(f"deployment {row['id']!r} is already terminated", field="deployment_id",
                               value=row["id"])
    manager = _manager(request)
    manager.log(row["id"], f"terminate requested by {principal.owner!r} ({body.actor or 'api'})")
    row = manager.terminate(row["id"])
    return {"message": f"deployment {row['name']!r} terminated", **_view(request, row)}


# --- MonsterAPI's deployment endpoint: POST <deployment URL>/generate ------------------------------------------

class GenerateRequest(BaseModel):
    """MonsterAPI's `DeployLLM` payload (monsterapi.InputDataModels): `input_variables` fill the deployment's
    prompt_template, or `prompt` is sent as is."""

    model_config = ConfigDict(extra="forbid")

    input_variables: dict[str, Any] | None = Field(None, description="Values for the placeholders of the "
                                                   "deployment's prompt_template (e.g. {\"prompt\": ...}).")
    prompt: str | None = Field(None, description="A formatted prompt, used as is (no prompt template). Give it or "
                               "input_variables, not both.")
    stream: bool = Field(False, description="Stream NUL-delimited JSON chunks {\"text\": [...]} as they grow.")
    n: int = Field(1, ge=1, le=16, description="Number of outputs.")
    temperature: float = Field(0.6, ge=0, le=2, description="Sampling temperature (0: greedy).")
    max_tokens: int = Field(256, ge=1, description="Most new tokens per output.")
    top_p: float = Field(1.0, gt=0, le=1, description="(tuneforge) Nucleus sampling mass.")
    seed: int | None = Field(None, description="(tuneforge) Seed for reproducible sampling (output i uses seed+i).")


@router.post("/{deployment:path}/generate", responses=_ERRORS,
             summary="MonsterAPI's deployment endpoint: generate from input_variables or a prompt")
async def generate(deployment: str, body: GenerateRequest, request: Request):
    """The deployment's base URL for the official client is `<server>/v1/deploy/<name or id>` (the status's
    `generate_base_url`): `MClient(api_key=TOKEN, base_url=...).generate("deploy-llm", {...})`. As MonsterAPI's
    deployments do, the answer is a JSON string holding `{"text": [output, ...]}` (the official client decodes it
    twice), and a stream is NUL-delimited JSON objects of the same shape, each with the text so far."""
    manager = _manager(request)
    row = manager.get(deployment) or manager.by_name(deployment)
    name = row["name"] if row is not None else deployment
    await deployment_auth(manager, request.app.state.store)(request, name)
    has_vars, has_prompt = bool(body.input_variables), bool(body.prompt)
    if has_vars == has_prompt:
        raise TuneforgeError("give either input_variables (filled into the deployment's prompt_template) or prompt "
                             "(used as is), not " + ("both" if has_vars else "neither"), field="input_variables")
    loop = asyncio.get_running_loop()
    gens = []
    try:
        for i in range(body.n):
            params = SamplingParams(max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                                    seed=None if body.seed is None else body.seed + i)
            gens.append(manager.submit(name, body.prompt if has_prompt else None, params, loop=loop, raw=True,
                                       input_variables=body.input_variables if has_vars else None))
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


async def _stream_texts(gens) -> AsyncIterator[bytes]:
    texts = [""] * len(gens)
    updates: asyncio.Queue = asyncio.Queue()

    async def pump(i, gen):
        try:
            async for delta in gen.astream():
                await updates.put((i, delta))
        except Exception as exc:  # noqa: BLE001 -- reported in the stream: the status line is sent already
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


def deployment_auth(manager: DeploymentManager, store: Store):
    """Who may call a deployment on the OpenAI endpoints: its own api_auth_token, or its owner's (or an admin's)
    service key. Others get 404, as if it did not exist."""
    challenge = {"WWW-Authenticate": "Bearer"}

    def lookup(token: str, model: str | None):
        return store.authenticate(token), manager.by_token(token), manager.by_name(model) if model else None

    async def auth(request: Request, model: str | None) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "missing key: send 'Authorization: Bearer <api_auth_token or API key>'",
                                headers=challenge)
        principal, own, d = await anyio.to_thread.run_sync(lookup, token, model)
        if principal is None and own is None:
            raise HTTPException(401, "invalid API key or api_auth_token", headers=challenge)
        if model is None:
            return
        allowed = d is not None and ((own is not None and own["id"] == d["id"]) or (
            principal is not None and (principal.is_admin or principal.owner == d["owner"])))
        if not allowed:
            raise HTTPException(404, f"model {model!r} not found: no live deployment of that name that this key may "
                                     "use (a deployment answers to its api_auth_token and its owner's key)")
        if d["status"] == "building":
            raise HTTPException(503, f"deployment {model!r} is still building; poll GET /v1/deploy/status/{d['id']}")
        if d["status"] != "live":
            raise HTTPException(409, f"deployment {model!r} is {d['status']}" + (f": {d['error']}" if d["error"] else ""))

    return auth


def install(app: FastAPI, settings, store: Store) -> DeploymentManager:
    """Mount the deploy routes and the OpenAI-compatible routes on the service app; rebuild earlier deployments."""
    manager = DeploymentManager(store.engine, settings.logs_dir / "deployments")
    app.state.deployments = manager
    app.include_router(router)
    app.include_router(openai_router(manager, deployment_auth(manager, store)))
    manager.restore()
    return manager
