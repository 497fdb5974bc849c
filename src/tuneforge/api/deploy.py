"""`/v1/deploy/...`: MonsterAPI's deployment endpoints, and the OpenAI-compatible inference routes over the live
deployments. The official `monsterapi` client's `deploy("llm", ...)`, `get_deployment_status`,
`get_deployment_logs`, `get_list_of_deployments` and `terminate_deployment` work unchanged; the `openai` client
then calls a live deployment with `model` = its deployment name and its `api_auth_token` (or the owner's key) as
the API key. The deployments themselves (and who may call them) live in `tuneforge.serve.deployments`, and resolving a
request's paths in `tuneforge.jobs.service`; these routes speak HTTP only.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel

from ..jobs import service
from ..jobs.limits import string_problems
from ..jobs.paths import PathPolicy
from ..jobs.store import Store
from ..serve.deployments import DeploymentManager, DeployRequest, deployment_auth
from ..serve.openai_routes import openai_router
from ..spec import SpecError
from .auth import CurrentPrincipal, SettingsDep, StoreDep
from .limits import client_address, throttled
from .responses import Deployment, DeploymentCreated, DeploymentLogs, DeploymentPage, DeploymentTerminated

router = APIRouter(prefix="/v1/deploy", tags=["deployments"])

_ERRORS = {401: {"description": "Missing or invalid API key"},
           404: {"description": "No such deployment (or not yours)"},
           422: {"description": "Invalid input: `detail` and one `problems` entry per field"}}


def _manager(request: Request) -> DeploymentManager:
    return request.app.state.deployments


Manager = Annotated[DeploymentManager, Depends(_manager)]


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
        "model": row["name"],
        "api_auth_token": row["token_prefix"] + "…",  # only the create response shows the whole token
        "created_at": service.iso(row["created_at"]),
        "updated_at": service.iso(row["updated_at"]),
        "live_at": service.iso(row["live_at"]),
        "terminated_at": service.iso(row["terminated_at"]),
    }


@router.post("/llm", summary="Deploy a base model with a LoRA adapter as an API endpoint", responses=_ERRORS)
def deploy(req: DeployRequest, request: Request, manager: Manager, store: StoreDep, settings: SettingsDep,
           principal: CurrentPrincipal) -> DeploymentCreated:
    """Starts building at once and returns `deployment_id`; poll `GET /v1/deploy/status/{id}` until `live`, then
    call `POST /v1/chat/completions` with `model` = `deployment_name` and `Authorization: Bearer <api_auth_token>`.
    The whole `api_auth_token` is in this response only."""
    problems = string_problems(req.model_dump(), settings.max_field_chars)
    if problems:
        raise SpecError(problems)
    model_load, adapter = service.resolve_deployment(req.basemodel_path, req.loramodel_path, store, principal,
                                                     PathPolicy.from_settings(settings))
    row, token = manager.create(req, owner=principal.owner, key_id=principal.key_id, model_load=model_load,
                                adapter_source=adapter)
    return DeploymentCreated(message=f"deployment {row['name']!r} is building",
                             **{**_view(request, row), "api_auth_token": token})


@router.get("/status/{deployment_id}", summary="A deployment's status: building, live, failed or terminated",
            responses=_ERRORS)
def status(deployment_id: str, request: Request, manager: Manager, principal: CurrentPrincipal) -> Deployment:
    return Deployment(**_view(request, manager.visible(deployment_id, principal)))


@router.get("/logs/{deployment_id}", summary="The last lines of a deployment's log", responses=_ERRORS)
def logs(deployment_id: str, manager: Manager, principal: CurrentPrincipal,
         n_lines: Annotated[int, Query(ge=1, le=10000, description="How many of the last lines.")] = 100,
         ) -> DeploymentLogs:
    row = manager.visible(deployment_id, principal)
    lines = manager.tail(row["id"], n_lines)
    return DeploymentLogs(deployment_id=row["id"], status=row["status"], n_lines=len(lines), logs=lines)


@router.get("/list", summary="Your deployments, newest first (an admin key: everyone's)", responses=_ERRORS)
def list_deployments(request: Request, manager: Manager, principal: CurrentPrincipal) -> DeploymentPage:
    rows = manager.list(service.scope(principal))
    return DeploymentPage(deployments=[_view(request, r) for r in rows], total=len(rows))


class TerminateRequest(BaseModel):
    deployment_id: str
    actor: str | None = None  # sent by the monsterapi client ("user"); recorded in the log


@router.post("/terminate", summary="Stop a deployment", responses={
    **_ERRORS, 409: {"description": "Already terminated"}})
def terminate(body: TerminateRequest, request: Request, manager: Manager,
              principal: CurrentPrincipal) -> DeploymentTerminated:
    row = manager.terminate_for(body.deployment_id, principal, actor=body.actor)
    return DeploymentTerminated(message=f"deployment {row['name']!r} terminated", **_view(request, row))


def install(app: FastAPI, settings, store: Store) -> DeploymentManager:
    """Mount the deploy routes and the OpenAI-compatible routes on the service app; rebuild earlier deployments."""
    manager = DeploymentManager(store.engine, settings.logs_dir / "deployments")
    app.state.deployments = manager
    app.include_router(router)
    auth = deployment_auth(manager, store.authenticate, key_active=store.key_active)
    app.include_router(openai_router(manager, throttled_auth(auth)))
    manager.restore()
    return manager


def throttled_auth(auth):
    """`auth` of the OpenAI routes, with failed attempts counted against the client address's budget
    (TUNEFORGE_AUTH_FAILURES_PER_MINUTE) as on every other route: guessing api_auth_tokens is throttled too."""

    async def checked(request: Request, model: str | None) -> None:
        throttle = request.app.state.auth_throttle
        refusal = throttled(throttle, request)
        if refusal is not None:
            raise refusal
        try:
            await auth(request, model)
        except HTTPException as exc:
            if exc.status_code == 401 and request.headers.get("authorization"):
                throttle.failed(client_address(request))
            raise

    return checked
