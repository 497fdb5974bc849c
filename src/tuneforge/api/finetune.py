"""`/v1/finetune/llm`: MonsterAPI's fine-tuning endpoint and tuneforge's job endpoints around it.

`POST /v1/finetune/llm` takes exactly the payload the official `monsterapi` client sends from
`client.finetune("llm", params)` (the `JobSpec`, whose field help is the OpenAPI documentation), and answers with
the job id under both `job_id` and MonsterAPI's `deployment_id`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event
from pydantic import BaseModel, ConfigDict, Field

from ..jobs import exports, service
from ..jobs.store import STATUSES, TERMINAL, Store
from ..spec import GGUFType, JobSpec
from .auth import CurrentPrincipal, SettingsDep, StorageDep, StoreDep
from .errors import Responses
from .responses import (
    Job,
    JobEvaluation,
    JobEvent,
    JobEvents,
    JobExport,
    JobExports,
    JobLaunched,
    JobPage,
    JobSummary,
)

router = APIRouter(prefix="/v1/finetune/llm", tags=["fine-tuning"])

MAX_SEQ = 2**63 - 1  # the database's integer: a larger cursor would overflow the query instead of matching nothing

_ERRORS: Responses = {
    401: {"description": "Missing or invalid API key"},
    404: {"description": "No such job (or not yours)"},
    422: {"description": "Invalid input: `detail` and one `problems` entry per field"},
}


@router.post("", status_code=201, summary="Launch a fine-tuning job", responses=_ERRORS)
def launch(spec: JobSpec, store: StoreDep, settings: SettingsDep, principal: CurrentPrincipal) -> JobLaunched:
    """Queue a LoRA/QLoRA fine-tuning job. `data_config.data_path` may be an uploaded dataset id (`ds_...`), an
    http(s) URL, a Hugging Face dataset id, or a file inside the server's allowed folders."""
    job = service.submit_job(store, settings, principal, spec)
    return JobLaunched(message="fine-tuning job queued", **service.job_view(store, job))


@router.get("", summary="List jobs, newest first", responses=_ERRORS)
def list_jobs(
    store: StoreDep,
    principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=100, description="Jobs per page.")] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_SEQ, description="Jobs to skip (page * limit).")] = 0,
    status: Annotated[
        Literal[STATUSES] | None,  # type: ignore[valid-type]
        Query(description="Only jobs in this status."),
    ] = None,
    owner: Annotated[str | None, Query(description="Admin keys only: only this owner's jobs.")] = None,
) -> JobPage:
    who = service.scope(principal)
    if principal.is_admin and owner:
        who = owner
    rows, total = store.list_jobs(owner=who, status=status, limit=limit, offset=offset)
    jobs = [JobSummary.model_validate(service.job_view(store, r, full=False)) for r in rows]
    return JobPage(jobs=jobs, total=total, limit=limit, offset=offset)


@router.get("/{job_id}", summary="A job's status, progress and losses", responses=_ERRORS)
def get_job(job_id: str, store: StoreDep, principal: CurrentPrincipal) -> Job:
    return Job(**service.job_view(store, service.get_job(store, principal, job_id)))


@router.post(
    "/{job_id}/cancel",
    summary="Cancel a queued or running job",
    responses={**_ERRORS, 409: {"description": "The job has already finished"}},
)
def cancel(job_id: str, store: StoreDep, storage: StorageDep, principal: CurrentPrincipal) -> Job:
    """A queued job is cancelled at once; a running one is stopped by its worker at its next poll
    (`TUNEFORGE_POLL_SECONDS`, 0.5 s by default: under a second in all), `cancel_requested` being true until then."""
    return Job(**service.job_view(store, service.cancel_job(store, principal, job_id, storage)))


@router.get(
    "/{job_id}/adapter",
    summary="Download the trained PEFT adapter (zip)",
    responses={
        **_ERRORS,
        409: {"description": "The job has not succeeded (yet)"},
        200: {"content": {"application/zip": {}}},
    },
    response_class=FileResponse,
)
def adapter(job_id: str, store: StoreDep, settings: SettingsDep, principal: CurrentPrincipal) -> FileResponse:
    job = service.get_job(store, principal, job_id)
    path = service.adapter_zip(settings, job)
    return FileResponse(path, media_type="application/zip", filename=f"adapter-{job_id}.zip")


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["merged", "gguf"] = Field(
        description="`merged`: the adapter merged into its base, a Hugging Face folder (zip); `gguf`: that model as "
        "one GGUF file for llama.cpp, Ollama or LM Studio (text-generation jobs)."
    )
    gguf_type: GGUFType = Field("q8_0", description="GGUF weights: `q8_0` (8-bit, about half of f16) or `f16`.")


@router.post(
    "/{job_id}/exports",
    status_code=202,
    summary="Export the merged model (Hugging Face folder or GGUF), in the background",
    responses={
        **_ERRORS,
        200: {"description": "That export runs or has succeeded already", "model": JobExport},
        409: {"description": "The job has not succeeded (yet)"},
    },
)
def start_export(
    job_id: str,
    body: ExportRequest,
    response: Response,
    store: StoreDep,
    settings: SettingsDep,
    principal: CurrentPrincipal,
) -> JobExport:
    """What `tuneforge export` makes, on the server: the merge (and GGUF conversion) runs in a child process while
    this answers at once; poll the export's `url` for its stage, then download `download_url`. Each kind is made once
    and kept in the job's run folder; one that failed (or that a restart cut short) is started again."""
    job = service.get_job(store, principal, job_id)
    adapter = service.adapter_folder(settings, job, action="exported")
    gguf_type = body.gguf_type if body.format == "gguf" else None
    view, started = exports.start_export(job, adapter.parent, body.format, gguf_type)
    if not started:
        response.status_code = 200
    return JobExport(**view)


@router.get("/{job_id}/exports", summary="A job's exports and their state", responses=_ERRORS)
def list_exports(job_id: str, store: StoreDep, storage: StorageDep, principal: CurrentPrincipal) -> JobExports:
    job = service.get_job(store, principal, job_id)
    run_dir = service.run_folder(job, storage)
    return JobExports(job_id=job["id"], exports=[JobExport(**v) for v in exports.list_exports(job, run_dir)])


@router.get("/{job_id}/exports/{export_id}", summary="One export's state", responses=_ERRORS)
def get_export(
    job_id: str, export_id: str, store: StoreDep, storage: StorageDep, principal: CurrentPrincipal
) -> JobExport:
    job = service.get_job(store, principal, job_id)
    return JobExport(**exports.get_export(job, service.run_folder(job, storage), export_id))


@router.get(
    "/{job_id}/exports/{export_id}/file",
    summary="Download a finished export (zip or GGUF)",
    responses={
        **_ERRORS,
        409: {"description": "The export has not succeeded"},
        200: {"content": {"application/zip": {}, "application/octet-stream": {}}},
    },
    response_class=FileResponse,
)
def export_file(
    job_id: str, export_id: str, store: StoreDep, storage: StorageDep, principal: CurrentPrincipal
) -> FileResponse:
    job = service.get_job(store, principal, job_id)
    path = exports.export_file(job, service.run_folder(job, storage), export_id)
    media = "application/zip" if path.suffix == ".zip" else "application/octet-stream"
    return FileResponse(path, media_type=media, filename=path.name)


@router.get(
    "/{job_id}/eval",
    summary="Held-out evaluation: base model vs adapter, row by row",
    responses={**_ERRORS, 409: {"description": "The job has not succeeded (yet)"}},
)
def evaluation(
    job_id: str,
    store: StoreDep,
    storage: StorageDep,
    principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=1000, description="Rows per page.")] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_SEQ, description="Rows to skip.")] = 0,
    differing: Annotated[bool, Query(description="Only rows where the models' answers differ.")] = False,
) -> JobEvaluation:
    """The summary (metrics per model, as in the job's `evaluation` field) and a page of the per-row file: each
    row's prompt, reference, and every model's answer and scores. 404 when the job had no test rows."""
    job = service.get_job(store, principal, job_id)
    return JobEvaluation(**service.eval_rows(job, limit=limit, offset=offset, differing=differing, storage=storage))


@router.get(
    "/{job_id}/events",
    summary="Metrics and log lines, incremental (JSON or server-sent events)",
    response_model=JobEvents,
    responses={
        **_ERRORS,
        200: {
            "content": {
                "text/event-stream": {
                    "schema": {
                        "type": "string",
                        "description": "With `stream=true` or `Accept: text/event-stream`: one event per "
                        "job event (`id` = seq, `event` = type, `data` = the event as JSON), then `event: end` with "
                        '`{"status", "last_seq"}` when the job has finished.',
                    }
                }
            }
        },
    },
)
async def events(
    job_id: str,
    request: Request,
    store: StoreDep,
    principal: CurrentPrincipal,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="Return events with `seq` greater than this.")] = 0,
    limit: Annotated[int, Query(ge=1, le=5000, description="At most this many events (JSON only).")] = 500,
    stream: Annotated[
        bool,
        Query(description="Stream as server-sent events (as does `Accept: text/event-stream`) until the job ends."),
    ] = False,
    accept: Annotated[str | None, Header()] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse | JobEvents:
    """Each event has `seq` (1, 2, ...), `type` (`status`, `log`, `validation`, `train`, `eval`, `evaluation`) and
    its fields: `train` has step, total_steps, epoch, loss, lr; `eval` has step, eval_loss; `evaluation` (once,
    after training, when the job has test rows) has the base-vs-adapter summary of the job's `evaluation` field.
    Pass the last `seq` you saw as
    `after` to get only newer ones. When a job resumes after its worker died, the steps after its last checkpoint
    are trained and reported again (a `status` event `queued` marks the gap): the later values are the ones that
    count."""
    job = await anyio.to_thread.run_sync(service.get_job, store, principal, job_id)
    if stream or (accept and "text/event-stream" in accept):
        if last_event_id and after == 0:
            if not (last_event_id.isascii() and last_event_id.isdigit()) or len(last_event_id) > 18:
                from ..spec import SpecError

                raise SpecError(
                    [f"Last-Event-ID: {last_event_id[:40]!r} is not an event seq (an integer from 0 to {MAX_SEQ})"]
                )
            after = int(last_event_id)  # a reconnecting EventSource continues where it left off
        # One path serves JSON and the stream (chosen per request), so the stream is returned as a response
        # rather than through a generator route; FastAPI's SSE encoder writes the frames.
        return EventSourceResponse(
            _sse(store, job["id"], after, request), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
    rows = await anyio.to_thread.run_sync(store.events_after, job["id"], after, limit)
    return JobEvents(
        job_id=job["id"],
        status=job["status"],
        events=[JobEvent.model_validate(e) for e in rows],
        next_after=rows[-1]["seq"] if rows else after,
    )


SSE_RETRY_MS = 2000  # how long a disconnected EventSource waits before reconnecting (with Last-Event-ID)
KEEPALIVE_SECONDS = 15  # proxies close connections that stay silent longer


async def _sse(store: Store, job_id: str, after: int, request: Request) -> AsyncIterator[bytes]:
    yield format_sse_event(retry=SSE_RETRY_MS)
    last_sent = anyio.current_time()
    while not await request.is_disconnected():
        # Status first, then events: the terminal status and its event commit together, so a job seen finished
        # here has all of its events visible to the query below.
        job = await anyio.to_thread.run_sync(store.get_job, job_id)
        rows = await anyio.to_thread.run_sync(store.events_after, job_id, after, 500)
        for ev in rows:
            after = ev["seq"]
            yield format_sse_event(id=str(ev["seq"]), event=ev["type"], data_str=json.dumps(ev, default=str))
            last_sent = anyio.current_time()
        if rows:
            continue
        if job is None or job["status"] in TERMINAL:
            status = job["status"] if job else "deleted"
            yield format_sse_event(event="end", data_str=json.dumps({"status": status, "last_seq": after}))
            return
        if anyio.current_time() - last_sent > KEEPALIVE_SECONDS:
            yield KEEPALIVE_COMMENT
            last_sent = anyio.current_time()
        await anyio.sleep(0.5)
