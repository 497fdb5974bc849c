"""Small read-only routes the web UI needs besides the fine-tuning API, and the UI's static files at `/`.

- `GET /v1/me`: who the key belongs to (the UI's sign-in check).
- `GET /v1/spec/schema`: the job spec's JSON schema; every field's `description` is the UI's help text.
- `GET /v1/catalog/models`: the model catalog with LoRA/QLoRA memory estimates (`tuneforge models --json`).
- `GET /v1/catalog/local`: model folders and data files in the server's allowed folders (what a job may name).
- `GET /v1/catalog/estimate`: the LoRA and QLoRA memory estimate of one model for the form's settings.
- `GET /v1/catalog/check`: whether a model name can be loaded here (on this server, or downloadable), with close
  catalog matches for a misspelt one: the form checks the model when it is chosen, not the queue minutes later.
- `POST /v1/data/inspect`: a dataset's validation report for given reading options plus a token-length histogram;
  nothing is stored (`POST /v1/datasets/{id}/validate` replaces the stored report instead).

Everything here reads; the work is done by the same functions the CLI uses (models/listing.py, models/fit.py,
data/validate.py).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import anyio
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import Field

from ..data.report import DataIssue
from ..data.split import check_fractions, small_validation_warning, split_counts
from ..data.validate import scan_path
from ..errors import TuneforgeError
from ..jobs import service
from ..jobs.paths import PathPolicy, check_path_text, classify_data_path, classify_model_path
from ..jobs.service import DatasetOptions, locate_model, tokenizer_for
from ..jobs.store import Store
from ..keys import Principal
from ..models.catalog import get_entry, suggest
from ..models.fit import model_shape
from ..models.listing import REFERENCE, catalog_rows
from ..models.loader import SMOLLM2_ID, _hf_cached_snapshot
from ..models.memory import TrainingSetup, device_memory, estimate_training_memory
from ..runtime import DeviceType, Precision, auto_precision, local_device_type, resolve_optimizer
from ..spec import MAX_INT32, DataConfig, JobSpec
from .auth import CurrentPrincipal
from .errors import Responses

UI_DIR = Path(__file__).resolve().parent.parent / "ui"

router = APIRouter(tags=["web UI support"])

_ERRORS: Responses = {401: {"description": "Missing or invalid API key"}}
_DATA_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".parquet", ".pq", ".txt", ".arrow")
_MAX_LISTED = 200


@router.get("/v1/me", summary="Who this API key belongs to", responses=_ERRORS)
def me(principal: CurrentPrincipal) -> dict[str, Any]:
    return {"owner": principal.owner, "is_admin": principal.is_admin}


@router.get(
    "/v1/spec/schema",
    summary="The job spec's JSON schema (field help texts, limits) and its defaults",
    responses=_ERRORS,
)
def spec_schema(principal: CurrentPrincipal) -> dict[str, Any]:
    """`schema`: `JobSpec.model_json_schema()`, whose field descriptions are the spec's own docs. `defaults`: a
    spec with every default filled in (including those the schema cannot show, such as `data_split_config`);
    `data_config.data_path` has no default and is left out."""
    return _schema()


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    defaults = JobSpec(data_config=DataConfig(data_path="-")).to_dict(redact=False)
    del defaults["data_config"]["data_path"]
    return {"schema": JobSpec.model_json_schema(), "defaults": defaults}


# The UI's heavier routes (catalog, estimates, inspection) run one at a time in worker threads: transformers'
# lazily imported names are not safe to resolve from two threads at once (an ImportError for `AutoConfig` was seen),
# and the catalog's first build (seconds) should happen once.
_work_lock = threading.Lock()
P = ParamSpec("P")
T = TypeVar("T")


def _serialized(fn: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        with _work_lock:
            return fn(*args, **kwargs)

    return run


@functools.lru_cache(maxsize=1)
def _catalog() -> dict[str, Any]:
    return {"reference_setup": dataclasses.asdict(REFERENCE), "models": catalog_rows(REFERENCE)}


@router.get("/v1/catalog/models", summary="The model catalog with LoRA and QLoRA memory estimates", responses=_ERRORS)
async def catalog(principal: CurrentPrincipal) -> dict[str, Any]:
    """As `tuneforge models --json`: each model's size, context, licence, LoRA targets, and the estimated peak
    memory of LoRA and QLoRA training in the reference setup (`reference_setup`)."""

    def work() -> dict[str, Any]:
        # The first call builds every entry on the meta device (seconds); later ones are cached. Where each model
        # is (`on_server`: bundled or in the Hugging Face cache; else it needs a download) changes as jobs download
        # models, so it is looked up on every call (a local lookup per entry).
        cat = _catalog()
        models = [{**m, "on_server": _on_server(m["id"])} for m in cat["models"]]
        return {**cat, "models": models}

    return await anyio.to_thread.run_sync(_serialized(work))


def _on_server(repo_id: str) -> bool:
    return repo_id == SMOLLM2_ID or _hf_cached_snapshot(repo_id) is not None


@router.get(
    "/v1/catalog/check",
    summary="Whether a base model can be loaded here, with close catalog matches for a misspelt name",
    responses=_ERRORS,
)
async def check_model(
    request: Request,
    principal: CurrentPrincipal,
    model_path: str = Query(..., description="A catalog id or alias, a hub id, or a model folder on the server."),
) -> dict[str, Any]:
    """`ok`: a job naming this model can load it. `source`: `local` (a model folder in an allowed folder),
    `bundled` (shipped with tuneforge), `cached` (in the server's Hugging Face cache), `hub` (downloaded when the
    job starts). `message` says what is wrong (or, with `ok`, what to expect); `suggestions` are catalog names
    close to a misspelt one."""
    policy = _policy(request)

    def work() -> dict[str, Any]:
        out: dict[str, Any] = {"model_path": model_path, "ok": False, "source": None, "message": None}
        try:
            load, out["source"] = locate_model(model_path, policy, "model_path")
        except TuneforgeError as exc:
            out["message"] = str(exc)
        else:
            out["ok"] = True
            if out["source"] == "hub" and get_entry(load) is None:
                out["ok"], out["message"] = _hub_model_exists(load)
        out["in_catalog"] = get_entry(model_path) is not None
        out["suggestions"] = [] if out["ok"] and out["source"] != "hub" else suggest(model_path)
        return out

    # Not behind the UI's work lock: nothing here imports transformers, and the answer should not wait for the
    # catalog's first build.
    return await anyio.to_thread.run_sync(work)


def _hub_model_exists(repo_id: str) -> tuple[bool, str]:
    """A name that is neither in the catalog nor cached, with the hub reachable: ask the hub whether it exists, so
    that a typo is caught now. A gated or private repository may still load with the job's hf_token."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(repo_id, timeout=10)
    except GatedRepoError:
        return True, f"model_path: {repo_id!r} is gated on the hub: the job needs an hf_token with access"
    except RepositoryNotFoundError:
        return False, f"model_path: no model {repo_id!r} on the Hugging Face hub (or it is private)"
    except Exception as exc:  # a network error: the job's own download will say more
        return (
            True,
            f"model_path: {repo_id!r} could not be checked on the hub ({type(exc).__name__}); it is "
            "downloaded when the job starts",
        )
    return True, f"model_path: {repo_id!r} is downloaded from the hub when the job starts"


def _policy(request: Request) -> PathPolicy:
    return PathPolicy.from_settings(request.app.state.settings)


@router.get(
    "/v1/catalog/local", summary="Model folders and data files in the server's allowed folders", responses=_ERRORS
)
def local_files(request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
    """Folders with a `config.json` (models) and data files, up to two levels below each allowed folder: the
    local paths a job may name as `model_path` and `data_path`."""
    settings = request.app.state.settings
    policy = _policy(request)
    models: list[dict[str, Any]] = []
    datasets: list[dict[str, Any]] = []
    for root in settings.allowed_dirs:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            depth = len(Path(dirpath).relative_to(root).parts)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < 2 else []
            path = Path(dirpath)
            if "config.json" in filenames and len(models) < _MAX_LISTED:
                try:
                    policy.local(str(path), "model_path")
                except TuneforgeError:
                    continue
                models.append({"path": str(path), "name": path.name, **_local_model_facts(path)})
                dirnames[:] = []  # a model's subfolders are not models of their own
                continue
            for name in sorted(filenames):
                if name.lower().endswith(_DATA_SUFFIXES) and len(datasets) < _MAX_LISTED:
                    f = path / name
                    try:
                        policy.local(str(f), "data_path")
                    except TuneforgeError:
                        continue
                    datasets.append({"path": str(f), "name": name, "size_bytes": f.stat().st_size})
    return {"allowed_folders": [str(p) for p in settings.allowed_dirs], "models": models, "datasets": datasets}


def _local_model_facts(folder: Path) -> dict[str, Any]:
    import json

    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {"architecture": None}
    return {"architecture": cfg.get("model_type"), "context_length": cfg.get("max_position_embeddings")}


@router.get(
    "/v1/catalog/estimate",
    summary="Estimated training memory of one model, LoRA and QLoRA",
    responses={**_ERRORS, 422: {"description": "Unknown model or invalid settings"}},
)
async def estimate(
    request: Request,
    principal: CurrentPrincipal,
    model_path: str = Query(..., description="A catalog id or alias, or a model folder in an allowed folder."),
    batch_size: int = Query(8, ge=1, le=4096),
    cutoff_len: int = Query(512, ge=1, le=MAX_INT32),
    lora_r: int = Query(8, ge=1, lt=2048),
    gradient_checkpointing: bool = Query(False),
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Query("auto"),
    device: Literal["auto", "cuda", "cpu"] = Query("auto"),
) -> dict[str, Any]:
    """What models/fit.py checks before a job loads its model: the peak memory of LoRA and of QLoRA training with
    these settings on `device` (auto: CUDA when the server has it, else the CPU), and the memory there is."""
    policy = _policy(request)

    def work() -> dict[str, Any]:
        import torch

        folder = None
        if classify_model_path(model_path) == "local":
            folder = policy.local(model_path, "model_path")
        else:
            check_path_text(model_path, "model_path")
        shape = model_shape(model_path, folder)
        if shape is None:
            raise TuneforgeError(
                f"model_path: no size known for {model_path!r} (not in the catalog and no readable "
                "config.json on the server)",
                field="model_path",
                value=model_path,
            )
        out = {"model_path": model_path, "params": shape.params, "architecture": shape.model_type}
        # As TrainingSetup.from_spec resolves a spec on this server, but for any device: the catalog's reference
        # columns are for a CUDA GPU even on a server without one.
        dev: DeviceType = local_device_type() if device == "auto" else device
        prec: Precision = auto_precision(dev) if precision == "auto" else precision
        for method in ("lora", "qlora"):
            optimizer = resolve_optimizer("auto", quantized=method == "qlora", device_type=dev)
            setup = TrainingSetup(
                method=method,
                batch_size=batch_size,
                seq_len=cutoff_len,
                lora_r=lora_r,
                gradient_checkpointing=gradient_checkpointing,
                precision=prec,
                device=dev,
                optimizer=optimizer,
            )
            out[method] = estimate_training_memory(shape, setup).to_dict()
        if dev == "cuda" and not torch.cuda.is_available():
            out["device"] = {"type": dev, "available_bytes": None, "what": "no CUDA device on this server"}
        else:
            available, what = device_memory(dev)
            out["device"] = {"type": dev, "available_bytes": available, "what": what}
        return out

    return await anyio.to_thread.run_sync(_serialized(work))


class InspectRequest(DatasetOptions):
    data_path: str = Field(
        ...,
        min_length=1,
        description="An uploaded dataset id (`ds_...`) of yours, or a data file in the server's allowed folders.",
    )
    bins: int = Field(20, ge=1, le=200, description="Bars of the token-length histogram.")
    data_split_config: dict[str, float] | None = Field(
        None,
        description="The job's split fractions (as in data_config): the report then gives the rows per split "
        "(`splits`) and warns, as training would, when the validation rows are too few to be useful.",
    )


@router.post(
    "/v1/data/inspect",
    summary="A dataset's validation report and token-length histogram (not stored)",
    responses={**_ERRORS, 404: {"description": "No such dataset (or not yours)"}},
)
async def inspect(body: InspectRequest, request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
    """The report for these reading options (as `POST /v1/datasets/{id}/validate`, without storing it), and, when
    `model_path` gives a tokenizer, `token_histogram`: tokens per trainable example after `cutoff_len` (`edges` has
    one more entry than `counts`; `truncated` examples were longer and are cut to `cutoff_len`)."""
    store, policy = request.app.state.store, _policy(request)

    def work() -> dict[str, Any]:
        path, shown = _data_file(body.data_path, store, principal, policy)
        tokenizer = tokenizer_for(body.model_path, policy) if body.model_path and body.counts_tokens else None

        result = scan_path(str(path), body.data_options(), tokenizer=tokenizer, keep=tokenizer is not None)
        report = result.report.to_dict()
        report["source"] = shown  # not the upload's path on the server
        if body.data_split_config and report["n_trainable"]:
            _add_split(report, check_fractions(body.data_split_config))
        lengths = [len(k.example) for k in result.kept if k.example is not None]
        return {
            "data_path": body.data_path,
            "report": report,
            "token_histogram": _histogram(lengths, body.bins, body.cutoff_len, report) if lengths else None,
        }

    return await anyio.to_thread.run_sync(_serialized(work))


def _add_split(report: dict[str, Any], fractions: dict[str, float]) -> None:
    """Rows per split and the small-validation warning training would give, before the job is launched."""
    n = report["n_trainable"]
    report["splits"] = split_counts(n, fractions)
    if fractions["validation"] > 0:
        source = f"the 'validation' fraction {fractions['validation']:g} of {n:,} rows gives"
        message = small_validation_warning(report["splits"]["validation"], source)
        if message:
            report["warnings"].append(dataclasses.asdict(DataIssue("small_validation", message)))


def _data_file(value: str, store: Store, principal: Principal, policy: PathPolicy) -> tuple[str, str]:
    """(the file to read, how to name it in the report)."""
    value = value.strip()
    kind = classify_data_path(value)
    if kind == "dataset":
        ds = service.get_dataset(store, principal, value)
        return str(ds["path"]), f"{ds['filename']} ({value})"
    if kind in ("url", "scheme", "hub"):
        raise TuneforgeError(
            f"data_path: {value!r}: only uploaded datasets and files in the server's allowed folders "
            "can be inspected here; hub datasets and URLs are checked when the job starts",
            field="data_path",
            value=value,
        )
    return policy.local(value, "data_path"), value


def _histogram(lengths: list[int], bins: int, cutoff: int, report: dict[str, Any]) -> dict[str, Any]:
    lo, hi = min(lengths), max(lengths)
    width = max(1, -(-(hi - lo + 1) // bins))  # ceil: integer-wide bars that cover lo..hi
    start = lo // width * width
    counts = [0] * ((hi - start) // width + 1)
    for n in lengths:
        counts[(n - start) // width] += 1
    stats = report.get("token_stats") or {}
    return {
        "edges": [start + i * width for i in range(len(counts) + 1)],
        "counts": counts,
        "cutoff_len": cutoff,
        "truncated": stats.get("truncated", 0),
        "count": len(lengths),
    }


# --------------------------------------------------------------------------------------------------- static UI
def install(app: FastAPI) -> None:
    """Mount the support routes, the UI's assets at `/ui/`, and its page at `/`."""
    app.include_router(router)
    app.mount("/ui", StaticFiles(directory=UI_DIR / "static"), name="ui")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(UI_DIR / "static" / "index.html", headers={"Cache-Control": "no-cache"})
