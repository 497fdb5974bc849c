"""`/v1/finetune/llm`: MonsterAPI's fine-tuning endpoint and tuneforge's job endpoints around it.

`POST /v1/finetune/llm` takes exactly the payload the official `monsterapi` client sends from
`client.finetune("llm", params)` (the `JobSpec`, whose field help is the OpenAPI documentation), and answers with
the job id under both `job_id` and MonsterAPI's `deployment_id`.
"""

from __future__ import annotations

import json
import time
from typing import Literal

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import FileResponse, StreamingResponse

from ..jobs import service
from ..jobs.store import STATUSES, TERMINAL, Principal
from ..spec import JobSpec
from .auth import get_principal

router = APIRouter(prefix="/v1/finetune/llm", tags=["fine-tuning"])

_ERRORS = {401: {"description": "Missing or invalid API key"},
           404: {"description": "No such job (or not yours)"},
           422: {"description": "Invalid input: `detail` and one `problems` entry per field"}}


def _store(request: Request):
    return request.app.state.store


@router.post("", status_code=201, summary="Launch a fine-tuning job", responses=_ERRORS)
def launch(spec: JobSpec, request: Request, principal: Principal = Depends(get_principal)) -> dict:
    """Queue a LoRA/QLoRA fine-tuning job. `data_config.data_path` may be an uploaded dataset id (`ds_...`), an
    http(s) URL, a Hugging Face dataset id, or a file inside the server's allowed folders."""
    job = service.submit_job(_store(request), request.app.state.settings, principal, spec)
    return {"message": "fine-tuning job queued", **service.job_view(_store(request), job)}


@router.get("", summary="List jobs, newest first", responses=_ERRORS)
def list_jobs(request: Request, principal: Principal = Depends(get_principal),
              limit: int = Query(20, ge=1, le=100, description="Jobs per page."),
              offset: int = Query(0, ge=0, description="Jobs to skip (page * limit)."),
              status: Literal[STATUSES] | None = Query(None, description="Only jobs in this status."),  # type: ignore[valid-type]
              owner: str | None = Query(None, description="Admin keys only: only this owner's jobs.")) -> dict:
    store = _store(request)
    who = service.scope(principal)
    if principal.is_admin and owner:
        who = owner
    rows, total = store.list_jobs(owner=who, status=status, limit=limit, offset=offset)
    return {"jobs": [service.job_view(store, r, full=False) for r in rows], "total": total, "limit": limit,
            "offset": offset}


@router.get("/{job_id}", summary="A job's status, progress and losses", responses=_ERRORS)
def get_job(job_id: str, request: Request, principal: Principal = Depends(get_principal)) -> dict:
    return service.job_view(_store(request), service.get_job(_store(request), principal, job_id))


@router.post("/{job_id}/cancel", summary="Cancel a queued or running job",
             responses={**_ERRORS, 409: {"description": "The job has already finished"}})
def cancel(job_id: str, request: Request, principal: Principal = Depends(get_principal)) -> dict:
    """A queued job is cancelled at once; a running one is stopped by its worker within seconds
    (`cancel_requested` is true until then)."""
    job = service.cancel_job(_store(request), principal, job_id)
    return service.job_view(_store(request), job)


@router.get("/{job_id}/adapter", summary="Download the trained PEFT adapter (zip)",
            responses={**_ERRORS, 409: {"description": "The job has not succeeded (yet)"},
                       200: {"content": {"application/zip": {}}}}, response_class=FileResponse)
def adapter(job_id: str, request: Request, principal: Principal = Depends(get_principal)):
    job = service.get_job(_store(request), principal, job_id)
    path = service.adapter_zip(request.app.state.settings, job)
    return FileResponse(path, media_type="application/zip", filename=f"adapter-{job_id}.zip")


@router.get("/{job_id}/eval", summary="Held-out evaluation: base model vs adapter, row by row",
            responses={**_ERRORS, 409: {"description": "The job has not succeeded (yet)"}})
def evaluation(job_id: str, request: Request, principal: Principal = Depends(get_principal),
               limit: int = Query(100, ge=1, le=1000, description="Rows per page."),
               offset: int = Query(0, ge=0, description="Rows to skip."),
               differing: bool = Query(False, description="Only rows where the models' answers differ.")) -> dict:
    """The summary (metrics per model, as in the job's `evaluation` field) and a page of the per-row file: each
    row's prompt, reference answer, and every model's answer and scores. 404 when the job had no test rows."""
    job = service.get_job(_store(request), principal, job_id)
    return service.eval_rows(job, limit=limit, offset=offset, differing=differing)


@router.get("/{job_id}/events", summary="Metrics and log lines, incremental (JSON or server-sent events)",
            responses={**_ERRORS, 200: {"content": {"application/json": {}, "text/event-stream": {}}}})
async def events(job_id: str, request: Request, principal: Principal = Depends(get_principal),
                 after: int = Query(0, ge=0, description="Return events with `seq` greater than this."),
                 limit: int = Query(500, ge=1, le=5000, description="At most this many events (JSON only)."),
                 stream: bool = Query(False, description="Stream as server-sent events (as does "
                                                         "`Accept: text/event-stream`) until the job ends."),
                 accept: str | None = Header(None), last_event_id: str | None = Header(None)):
    """Each event has `seq` (1, 2, ...), `type` (`status`, `log`, `validation`, `train`, `eval`, `evaluation`) and
    its fields: `train` has step, total_steps, epoch, loss, lr; `eval` has step, eval_loss; `evaluation` (once,
    after training, when the job has test rows) has the base-vs-adapter summary of the job's `evaluation` field. Pass the last `seq` you saw as
    `after` to get only newer ones. When a job resumes after its worker died, the steps after its last checkpoint
    are trained and reported again (a `status` event `queued` marks the gap): the later values are the ones that
    count."""
    store = _store(request)
    job = await anyio.to_thread.run_sync(service.get_job, store, principal, job_id)
    if stream or (accept and "text/event-stream" in accept):
        if last_event_id and last_event_id.isdigit() and after == 0:
            after = int(last_event_id)  # a reconnecting EventSource continues where it left off
        return StreamingResponse(_sse(store, job["id"], after, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    rows = await anyio.to_thread.run_sync(store.events_after, job["id"], after, limit)
    return {"job_id": job["id"], "status": job["status"], "events": rows,
            "next_after": rows[-1]["seq"] if rows else after}


async def _sse(store, job_id: str, after: int, request: Request):
    yield "retry: 2000\n\n"
    last_sent = time.monotonic()
    while not await request.is_disconnected():
        # Status first, then events: the terminal status and its event commit together, so a job seen finished
        # here has all of its events visible to the query below.
        job = await anyio.to_thread.run_sync(store.get_job, job_id)
        rows = await anyio.to_thread.run_sync(store.events_after, job_id, after, 500)
        for ev in rows:
            after = ev["seq"]
            yield f"id: {ev['seq']}\nevent: {ev['type']}\ndata: {json.dumps(ev, default=str)}\n\n"
            last_sent = time.monotonic()
        if rows:
            continue
        if job is None or job["status"] in TERMINAL:
            status = job["status"] if job else "deleted"
            yield f"event: end\ndata: {json.dumps({'status': status, 'last_seq': after})}\n\n"
            return
        if time.monotonic() - last_sent > 15:
            yield ": keep-alive\n\n"  # proxies close silent connections
            last_sent = time.monotonic()
        await anyio.sleep(0.5)
