"""`/v1/deploy/...`: MonsterAPI's deployment endpoints, and the OpenAI-compatible inference routes over the live
deployments. The official `monsterapi` client's `deploy("llm", ...)`, `get_deployment_status`,
`get_deployment_logs`, `get_list_of_deployments` and `terminate_deployment` work unchanged; the `openai` client
then calls a live deployment with `model` = its deployment name and its `api_auth_token` (or the owner's key) as
the API key. The deployments themselves live in `tuneforge.serve.deployments`; these routes speak HTTP only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel

from ..errors import TuneforgeError
from ..jobs import service
from ..jobs.paths import PathPolicy, classify_model_path, is_job_id, looks_like_url
from ..jobs.store import Principal, Store
from ..serve.deployments import DeploymentManager, DeployRequest
from ..serve.engine import check_adapter_folder
from ..serve.openai_routes import Auth, openai_router
from ..settings import Settings
from .auth import get_principal
from .errors import Responses

router = APIRouter(prefix="/v1/deploy", tags=["deployments"])

_ERRORS: Responses = {401: {"description": "Missing or invalid API key"},
           404: {"description": "No such deployment (or not yours)"},
           422: {"description": "Invalid input: `detail` and one `problems` entry per field"}}


def _manager(request: Request) -> DeploymentManager:
    manager: DeploymentManager = request.app.state.deployments
    return manager


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
        "model": row["name"],
        "api_auth_token": row["token_prefix"] + "…",  # only the create response shows the whole token
        "created_at": service.iso(row["created_at"]),
        "updated_at": service.iso(row["updated_at"]),
        "live_at": service.iso(row["live_at"]),
        "terminated_at": service.iso(row["terminated_at"]),
    }


def _visible(request: Request, principal: Principal, deployment_id: str) -> dict[str, Any]:
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
        local = policy.local(v, field)
        check_adapter_folder(local, field=field)
        return local
    from ..models.loader import _hf_cached_snapshot, hub_reachable

    if _hf_cached_snapshot(v) is None and not hub_reachable():
        raise TuneforgeError(f"{field}: {v!r} is not in the server's Hugging Face cache and the hub cannot be "
                             "reached", field=field, value=v)
    return v


@router.post("/llm", summary="Deploy a base model with a LoRA adapter as an API endpoint", responses=_ERRORS)
def deploy(req: DeployRequest, request: Request, principal: Principal = Depends(get_principal)) -> dict[str, Any]:
    """Starts building at once and returns `deployment_id`; poll `GET /v1/deploy/status/{id}` until `live`, then
    call `POST /v1/chat/completions` with `model` = `deployment_name` and `Authorization: Bearer <api_auth_token>`.
    The whole `api_auth_token` is in this response only."""
    settings, store = request.app.state.settings, request.app.state.store
    policy = PathPolicy.from_settings(settings)
    problems: list[str] = []
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
    assert model_load is not None  # resolved, or its problem was raised above
    row, token = _manager(request).create(req, owner=principal.owner, key_id=principal.key_id,
                                          model_load=model_load, adapter_source=adapter)
    return {"message": f"deployment {row['name']!r} is building", **_view(request, row), "api_auth_token": token}


@router.get("/status/{deployment_id}", summary="A deployment's status: building, live, failed or terminated",
            responses=_ERRORS)
def status(deployment_id: str, request: Request, principal: Principal = Depends(get_principal)) -> dict[str, Any]:
    return _view(request, _visible(request, principal, deployment_id))


@router.get("/logs/{deployment_id}", summary="The last lines of a deployment's log", responses=_ERRORS)
def logs(deployment_id: str, request: Request, principal: Principal = Depends(get_principal),
         n_lines: int = Query(100, ge=1, le=10000, description="How many of the last lines.")) -> dict[str, Any]:
    row = _visible(request, principal, deployment_id)
    lines = _manager(request).tail(row["id"], n_lines)
    return {"deployment_id": row["id"], "status": row["status"], "n_lines": len(lines), "logs": lines}


@router.get("/list", summary="Your deployments, newest first (an admin key: everyone's)", responses=_ERRORS)
def list_deployments(request: Request, principal: Principal = Depends(get_principal)) -> dict[str, Any]:
    rows = _manager(request).list(service.scope(principal))
    return {"deployments": [_view(request, r) for r in rows], "total": len(rows)}


class TerminateRequest(BaseModel):
    deployment_id: str
    actor: str | None = None  # sent by the monsterapi client ("user"); recorded in the log


@router.post("/terminate", summary="Stop a deployment", responses={
    **_ERRORS, 409: {"description": "Already terminated"}})
def terminate(body: TerminateRequest, request: Request, principal: Principal = Depends(get_principal)) -> dict[str, Any]:
    row = _visible(request, principal, body.deployment_id)
    if row["status"] == "terminated":
        raise service.Conflict(f"deployment {row['id']!r} is already terminated", field="deployment_id",
                               value=row["id"])
    manager = _manager(request)
    manager.log(row["id"], f"terminate requested by {principal.owner!r} ({body.actor or 'api'})")
    done = manager.terminate(row["id"])
    assert done is not None  # found above, and deployments are never deleted
    return {"message": f"deployment {done['name']!r} terminated", **_view(request, done)}


def deployment_auth(manager: DeploymentManager, store: Store) -> Auth:
    """Who may call a deployment on the OpenAI endpoints: its own api_auth_token, or its owner's (or an admin's)
    service key. Others get 404, as if it did not exist."""
    challenge = {"WWW-Authenticate": "Bearer"}

    def lookup(token: str, model: str | None) -> tuple[Principal | None, dict[str, Any] | None,
                                                       dict[str, Any] | None]:
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
        if not allowed or d is None:
            raise HTTPException(404, f"model {model!r} not found: no live deployment of that name that this key may "
                                     "use (a deployment answers to its api_auth_token and its owner's key)")
        if d["status"] == "building":
            raise HTTPException(503, f"deployment {model!r} is still building; poll GET /v1/deploy/status/{d['id']}")
        if d["status"] != "live":
            raise HTTPException(409, f"deployment {model!r} is {d['status']}" + (f": {d['error']}" if d["error"] else ""))

    return auth


def install(app: FastAPI, settings: Settings, store: Store) -> DeploymentManager:
    """Mount the deploy routes and the OpenAI-compatible routes on the service app; rebuild earlier deployments."""
    manager = DeploymentManager(store.engine, settings.logs_dir / "deployments")
    app.state.deployments = manager
    app.include_router(router)
    app.include_router(openai_router(manager, deployment_auth(manager, store)))
    manager.restore()
    return manager
