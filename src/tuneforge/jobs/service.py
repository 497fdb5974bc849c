"""The fine-tuning service as plain functions: submit, look at, list, cancel jobs; register and validate datasets.

The API routes only translate HTTP to these calls and back (and the CLI or a UI can call them the same way).
Errors are `TuneforgeError`s that carry their meaning: `NotFound` (-> 404), `Conflict` (-> 409), `SpecError` and
`PathRejected` (-> 422), each with a message that names the field or the id.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from ..data import validate_source
from ..data.formats import Template, TemplateError
from ..data.options import DataOptions
from ..errors import Conflict, LimitReached, NotFound, TuneforgeError
from ..keys import Principal
from ..models.adapters import check_adapter_folder
from ..models.fit import ensure_fits
from ..models.loader import ALIASES, SMOLLM2_ID, _hf_cached_snapshot, hub_reachable, load_tokenizer
from ..models.memory import TrainingSetup
from ..settings import Settings
from ..spec import DataConfig, DataFormat, JobSpec, SpecError, Task, parse_spec
from ..storage import Storage, open_storage
from ..train.plan import work_dir_for
from .limits import size_problems, string_problems
from .paths import (
    PathPolicy,
    PathRejected,
    check_path_text,
    classify_data_path,
    classify_model_path,
    is_job_id,
    looks_like_url,
)
from .store import ACTIVE, TERMINAL, Row, Store, TooManyJobs
from .sync import dataset_key, delete_job_copies, pull_run

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase


def scope(principal: Principal) -> str | None:
    """The owner to filter by: None (everything) for an admin key."""
    return None if principal.is_admin else principal.owner


def iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z") if t is not None else None


# --- jobs -------------------------------------------------------------------------------------------------------------


def _resolve_data(
    value: str, field: str, store: Store, principal: Principal, policy: PathPolicy, dataset_ids: list[str]
) -> str:
    check_path_text(value, field)  # a hub id or URL is no longer than a path, and none holds a NUL byte
    kind = classify_data_path(value)
    if kind == "url":
        return policy.url(value, field)
    if kind == "scheme":
        raise PathRejected(
            f"{field}: {value!r}: only http(s) URLs are supported (or an uploaded dataset id, a "
            "hub dataset id, or a file in an allowed folder)",
            field=field,
            value=value,
        )
    if kind == "dataset":
        ds = store.get_dataset(value, scope(principal))
        if ds is None:
            raise PathRejected(
                f"{field}: no uploaded dataset {value!r} (GET /v1/datasets lists yours)", field=field, value=value
            )
        if not ds["ok"]:
            raise PathRejected(
                f"{field}: dataset {value!r} has errors (GET /v1/datasets/{value} lists them); upload a corrected "
                f"file, or check it again with the job's prompt_template and data_format (POST /v1/datasets/{value}"
                "/validate) if it was read with other options",
                field=field,
                value=value,
            )
        dataset_ids.append(value)
        return str(ds["path"])
    if kind == "hub":
        return value
    return policy.local(value, field)


def resolve_spec(
    spec: JobSpec, store: Store, principal: Principal, policy: PathPolicy, storage: Storage | None = None
) -> tuple[JobSpec, list[str]]:
    """The spec the worker runs: dataset ids and job ids replaced by server paths, every local path checked
    against the policy. Raises SpecError listing every rejected field."""
    data = spec.to_dict(redact=False)
    problems: list[str] = []
    dataset_ids: list[str] = []
    d, p = data["data_config"], data["pretrainedmodel_config"]
    for name in ("data_path", "validation_data_path", "test_data_path"):
        if d.get(name):
            try:
                d[name] = _resolve_data(d[name], f"data_config.{name}", store, principal, policy, dataset_ids)
            except PathRejected as exc:
                problems.append(str(exc))
    try:
        if classify_model_path(p["model_path"]) == "local":
            p["model_path"] = policy.local(p["model_path"], "pretrainedmodel_config.model_path")
        else:
            check_path_text(p["model_path"], "pretrainedmodel_config.model_path")
    except PathRejected as exc:
        problems.append(str(exc))
    resume = p.get("resume_checkpoint_path") or ""
    if resume:
        field = "pretrainedmodel_config.resume_checkpoint_path"
        if is_job_id(resume):
            job = store.get_job(resume.strip(), scope(principal))
            if job is None or job["status"] != "succeeded":
                problems.append(
                    f"{field}: {resume!r} is not a succeeded job of yours; give a finished job id (its "
                    "adapter is the starting point) or a checkpoint folder in an allowed folder"
                )
            else:
                p["resume_checkpoint_path"] = str(run_folder(job, storage) / "adapter")
        else:
            try:
                p["resume_checkpoint_path"] = policy.local(resume, field)
            except PathRejected as exc:
                problems.append(str(exc))
    if problems:
        raise SpecError(problems)
    return parse_spec(data), dataset_ids


def submit_job(store: Store, settings: Settings, principal: Principal, spec: JobSpec) -> Row:
    """Check everything that can be checked before a job is queued, so that it fails here with 422 instead of
    later in the queue: field sizes, paths, the datasets it reads, its size against the server's limits, its
    target modules and its memory estimate."""
    problems = string_problems(spec.to_dict(redact=False), settings.max_field_chars)
    if problems:
        raise SpecError(problems)
    resolved, dataset_ids = resolve_spec(
        spec, store, principal, PathPolicy.from_settings(settings), open_storage(settings.storage)
    )
    n_rows = None
    for ds_id in dataset_ids[:1]:  # data_path (validation_data_path, when given, is the second)
        ds = store.get_dataset(ds_id)
        if ds is not None:  # resolve_spec found it; it may have been deleted since
            n_rows = json.loads(ds["report"]).get("n_rows")
    problems = (
        _template_problems(resolved)
        + size_problems(resolved, settings, n_rows)
        + _target_module_problems(resolved)
        + _task_problems(resolved)
    )
    if problems:
        raise SpecError(problems)
    _refuse_if_too_large(resolved)
    _refuse_if_cannot_launch(resolved)
    try:
        return store.insert_job(
            owner=principal.owner,
            key_id=principal.key_id,
            spec=resolved.to_dict(redact=False),
            spec_public=spec.to_dict(redact=True),
            dataset_ids=dataset_ids,
            runs_dir=settings.runs_dir,
            max_active_per_key=settings.max_active_jobs_per_key,
        )
    except TooManyJobs as exc:
        raise LimitReached(str(exc), field="api_key") from None


def _template_problems(spec: JobSpec) -> list[str]:
    """A prompt_template that cannot be parsed (no placeholder, a stray brace, attribute access), refused here
    rather than when the job starts reading its data."""
    d = spec.data_config
    if not d.prompt_template:
        return []
    try:
        Template.parse(d.prompt_template, d.completion_column)
    except TemplateError as err:
        text = str(err).removeprefix("prompt_template: ")
        field = "completion_column" if text.startswith("completion_column") else "prompt_template"
        return [f"data_config.{field}: {text}"]
    return []


def _model_config(model_path: str) -> PretrainedConfig | None:
    """The transformers config of a catalog model, a local model folder or a cached hub model; None if unknown."""
    from ..models.catalog import get_entry

    folder: str | None
    if Path(model_path).is_absolute():
        folder = model_path
    else:
        repo_id = ALIASES.get(model_path.lower(), model_path)
        entry = get_entry(repo_id)
        if entry is not None:
            return entry.transformers_config()
        folder = _hf_cached_snapshot(repo_id)
    if folder is None or not (Path(folder) / "config.json").is_file():
        return None
    from transformers import AutoConfig

    config: PretrainedConfig = AutoConfig.from_pretrained(folder)
    return config


def _target_module_problems(spec: JobSpec) -> list[str]:
    """`target_modules` that the model does not have (checked on a weightless skeleton of its architecture)."""
    p = spec.pretrainedmodel_config
    if not p.target_modules:
        return []
    from ..models.targets import inspect_linear_modules, missing_target_modules, skeleton_model

    try:
        config = _model_config(p.model_path)
        model = skeleton_model(config) if config is not None else None
    except Exception:
        return []
    if model is None:
        return []
    missing = missing_target_modules(model, list(p.target_modules))
    if not missing:
        return []
    return [
        f"pretrainedmodel_config.target_modules: {missing} not found in {p.model_path!r}; its linear layers "
        f"are {inspect_linear_modules(model)}"
    ]


def _task_problems(spec: JobSpec) -> list[str]:
    """A data_config.task the model cannot be trained for (e.g. classification on a model without a
    sequence-classification head, image classification on a text model, a text task on a vision model, seq2seq on a
    decoder-only model, causal_lm on T5), known from its config alone."""
    from ..models.classifier import task_problem

    try:
        config = _model_config(spec.pretrainedmodel_config.model_path)
    except Exception:  # an unreadable config: the job reports it when it loads the model
        return []
    if config is None:
        return []
    problem = task_problem(config, spec.data_config.task, spec.pretrainedmodel_config.model_path)
    return [problem] if problem else []


def _refuse_if_too_large(spec: JobSpec) -> None:
    """A job that cannot fit this server's device by the memory estimate is refused at submission, with the numbers,
    instead of failing in the queue. Only the config is read (catalog entry or local config.json), never weights."""
    model_path = spec.pretrainedmodel_config.model_path
    folder: str | None
    if Path(model_path).is_absolute():  # checked by the path policy
        model_id, folder = model_path, model_path
    else:  # an alias or hub id: its catalog entry, else its config in the hub cache (never a relative folder)
        model_id = ALIASES.get(model_path.lower(), model_path)
        folder = _hf_cached_snapshot(model_id)
    ensure_fits(model_id, config_dir=folder, setup=TrainingSetup.from_spec(spec))


def _refuse_if_cannot_launch(spec: JobSpec) -> None:
    """A multi-process job (training_config.distributed) is launched by a worker as `tuneforge train --nproc` is:
    what that launch would refuse on this machine (more processes than GPUs, or than CPU cores without a GPU; FSDP
    without FSDP2) is refused here, naming the field, instead of failing in the queue."""
    if spec.training_config.distributed.strategy == "none":
        return
    from ..train.distributed import resolve_launch  # torch: only for a distributed spec

    resolve_launch(spec)


def run_folder(job: Row, storage: Storage | None) -> Path:
    """A job's run folder on this machine; a succeeded job's is pulled from the shared storage when another machine
    trained it (or this machine's copy is gone)."""
    run_dir = Path(job["run_dir"])
    if storage is not None and job["status"] == "succeeded":
        pull_run(storage, job["id"], run_dir)
    return run_dir


def share_dataset(storage: Storage | None, dataset_id: str, path: Path) -> None:
    """Copy an upload to the shared storage, where workers on other machines find it."""
    if storage is not None:
        storage.put_file(path, dataset_key(dataset_id, path))


def get_job(store: Store, principal: Principal, job_id: str) -> Row:
    job = store.get_job(job_id, scope(principal))
    if job is None:
        raise NotFound(f"job {job_id!r} not found", field="job_id", value=job_id)
    return job


def cancel_job(store: Store, principal: Principal, job_id: str, storage: Storage | None = None) -> Row:
    job = get_job(store, principal, job_id)
    if job["status"] in TERMINAL:
        raise Conflict(
            f"job {job_id!r} has already {job['status']}; only queued or running jobs can be cancelled",
            field="job_id",
            value=job_id,
        )
    after = store.request_cancel(job_id) or job
    if after["status"] == "cancelled":  # a requeued job may hold checkpoints of an earlier attempt
        shutil.rmtree(work_dir_for(Path(after["run_dir"])), ignore_errors=True)
        delete_job_copies(storage, job_id)
    return after


def job_view(store: Store, job: Row, *, full: bool = True) -> dict[str, Any]:
    spec = json.loads(job["spec_public"])
    result = json.loads(job["result"]) if job["result"] else None
    # While it runs, the best validation loss so far; once done, the run's report says which step it kept (the
    # lowest loss by more than early_stopping_threshold, which a plain minimum does not know).
    best_loss, best_step = job["best_eval_loss"], job["best_step"]
    if result and result.get("best_step") is not None:
        best_loss, best_step = result.get("eval_loss"), result["best_step"]
    step, total, rate = job["step"], job["total_steps"], job["steps_per_second"]
    eta = None
    if job["status"] in ACTIVE and rate and total is not None and step is not None:
        eta = max(0.0, (total - step) / rate)
    elif job["status"] == "succeeded":
        eta = 0.0
    view: dict[str, Any] = {
        "job_id": job["id"],
        # MonsterAPI's launch response names the id `deployment_id`; scripts written for it read that key.
        "deployment_id": job["id"],
        "owner": job["owner"],
        "suffix": spec.get("suffix"),  # the spec's own copy: jobs submitted before the field existed have none
        "status": job["status"],
        "model": spec["pretrainedmodel_config"]["model_path"],
        "data_path": spec["data_config"]["data_path"],
        "created_at": iso(job["created_at"]),
        "started_at": iso(job["started_at"]),
        "finished_at": iso(job["finished_at"]),
        "updated_at": iso(job["updated_at"]),
        "queue_position": store.queue_position(job),
        "progress": {
            "step": step or 0,
            "total_steps": total,
            "epoch": job["epoch"],
            "percent": round(100.0 * (step or 0) / total, 1)
            if total
            else (100.0 if job["status"] == "succeeded" else 0.0),
            "steps_per_second": rate,
            "eta_seconds": eta,
        },
        "losses": {
            "train_loss": job["train_loss"],
            "eval_loss": job["eval_loss"],
            "best_eval_loss": best_loss,
            "best_step": best_step,
        },
        "error": job["error"],
        "cancel_requested": bool(job["cancel_requested"]),
        "attempts": job["attempts"],
        "node": job["node"],
        "devices": job["devices"],
        "events_url": f"/v1/finetune/llm/{job['id']}/events",
        "adapter_url": f"/v1/finetune/llm/{job['id']}/adapter" if job["status"] == "succeeded" else None,
    }
    if full:
        view["spec"] = spec
        view["result"] = result
        # Base vs adapter on the held-out test rows (None without test rows); rows: GET .../{id}/eval.
        view["evaluation"] = (view["result"] or {}).get("evaluation")
        view["eval_url"] = f"/v1/finetune/llm/{job['id']}/eval" if view["evaluation"] else None
    return view


def resolve_deployment(
    basemodel_path: str,
    loramodel_path: str | None,
    store: Store,
    principal: Principal,
    policy: PathPolicy,
    storage: Storage | None = None,
) -> tuple[str, str | None]:
    """(what the engine loads, the adapter folder or hub id) for a deploy request, checked before anything is
    built; raises SpecError with one line per bad field (both are checked)."""
    problems, model_load, adapter = [], "", None
    try:
        model_load = _resolve_base(basemodel_path, policy)
    except TuneforgeError as exc:
        problems.append(str(exc))
    try:
        adapter = _resolve_adapter(loramodel_path, store, principal, policy, storage)
    except TuneforgeError as exc:
        problems.append(str(exc))
    if problems:
        raise SpecError(problems)
    return model_load, adapter


def _resolve_base(value: str, policy: PathPolicy) -> str:
    return locate_model(value, policy, "basemodel_path")[0]


def locate_model(value: str, policy: PathPolicy, field: str) -> tuple[str, str]:
    """(what a loader loads, where it comes from) for a base model, or TuneforgeError naming `field`. Where: `local`
    (a model folder in an allowed folder), `bundled` (the default model shipped with tuneforge), `cached` (in the
    server's Hugging Face cache), `hub` (downloaded when first loaded; the hub is reachable now)."""
    v = value.strip()
    if classify_model_path(v) == "local":
        path = policy.local(v, field)
        if not (Path(path) / "config.json").is_file():
            raise TuneforgeError(
                f"{field}: {value!r} is not a Hugging Face model folder (no config.json)", field=field, value=value
            )
        return path, "local"
    check_path_text(v, field)
    repo_id = ALIASES.get(v.lower(), v)
    if repo_id == SMOLLM2_ID:
        return repo_id, "bundled"
    if _hf_cached_snapshot(repo_id) is not None:
        return repo_id, "cached"
    if not hub_reachable():
        # Checked now rather than failing the build; and a name like `models/SomeModel` is a hub id here, never a
        # folder under the server's working directory.
        raise TuneforgeError(
            f"{field}: {value!r} is not in the server's Hugging Face cache and the hub "
            "cannot be reached; give a catalog alias, a cached hub id, or a model folder in the "
            "server's allowed folders",
            field=field,
            value=value,
        )
    return repo_id, "hub"


def _resolve_adapter(
    value: str | None, store: Store, principal: Principal, policy: PathPolicy, storage: Storage | None = None
) -> str | None:
    """A succeeded job of the caller's (its adapter folder), an adapter folder the path policy allows, or a hub id
    the server can fetch."""
    v = (value or "").strip()
    field = "loramodel_path"
    if not v:
        return None
    if is_job_id(v):
        job = store.get_job(v, scope(principal))
        if job is None:
            raise TuneforgeError(
                f"{field}: no fine-tuning job {v!r} of yours (GET /v1/finetune/llm lists them)", field=field, value=v
            )
        if job["status"] != "succeeded":
            raise TuneforgeError(
                f"{field}: job {v!r} is {job['status']}; deploy it once it has succeeded", field=field, value=v
            )
        folder = run_folder(job, storage) / "adapter"
        check_adapter_folder(folder, field=field)
        return str(folder)
    if looks_like_url(v) or "://" in v:
        raise TuneforgeError(
            f"{field}: URLs are not supported here; give a succeeded job id, an adapter folder on "
            "the server, or a hub id",
            field=field,
            value=v,
        )
    if classify_model_path(v) == "local":
        local = policy.local(v, field)
        check_adapter_folder(local, field=field)
        return local
    if _hf_cached_snapshot(v) is None and not hub_reachable():
        raise TuneforgeError(
            f"{field}: {v!r} is not in the server's Hugging Face cache and the hub cannot be reached",
            field=field,
            value=v,
        )
    return v


def adapter_folder(settings: Settings, job: Row, *, action: str = "downloaded") -> Path:
    """A succeeded job's PEFT adapter folder on this machine (409 before it has succeeded, 404 once removed)."""
    if job["status"] != "succeeded":
        raise Conflict(
            f"job {job['id']!r} is {job['status']}; its adapter can be {action} once it has succeeded",
            field="job_id",
            value=job["id"],
        )
    adapter = run_folder(job, open_storage(settings.storage)) / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise NotFound(f"the adapter of job {job['id']!r} is no longer on the server", field="job_id", value=job["id"])
    return adapter


def adapter_zip(settings: Settings, job: Row) -> Path:
    """A zip of the job's PEFT adapter folder (files at the zip's root), built once and cached."""
    adapter = adapter_folder(settings, job)
    target = settings.cache_dir / "adapters" / f"{job['id']}.zip"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(adapter.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(adapter).as_posix())
    os.replace(tmp, target)  # atomic: concurrent downloads never see half a zip
    return target


def eval_rows(job: Row, *, limit: int, offset: int, differing: bool, storage: Storage | None = None) -> dict[str, Any]:
    """A page of the job's per-row evaluation file (prompt, reference, each model's answer and scores)."""
    from ..evaluate.runner import EVAL_ROWS_FILE

    if job["status"] != "succeeded":
        raise Conflict(
            f"job {job['id']!r} is {job['status']}; its evaluation is available once it has succeeded",
            field="job_id",
            value=job["id"],
        )
    summary = (json.loads(job["result"]) if job["result"] else {}).get("evaluation")
    if not summary:
        raise NotFound(
            f"job {job['id']!r} has no evaluation: it had no held-out test rows (give data_config."
            "data_split_config a 'test' fraction or data_config.test_data_path)",
            field="job_id",
            value=job["id"],
        )
    path = run_folder(job, storage) / EVAL_ROWS_FILE
    if not path.is_file():
        raise NotFound(
            f"the evaluation rows of job {job['id']!r} are no longer on the server", field="job_id", value=job["id"]
        )
    rows, total = [], 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if differing and len({a.strip() for a in row["answers"].values()}) < 2:
                continue
            if offset <= total < offset + limit:
                rows.append(row)
            total += 1
    return {"job_id": job["id"], "evaluation": summary, "rows": rows, "total": total, "limit": limit, "offset": offset}


# --- datasets ---------------------------------------------------------------------------------------------------------

_DC = DataConfig.model_fields


class DatasetOptions(BaseModel):
    """How to read an uploaded dataset for its validation report (the same meaning as in a job's data_config)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    prompt_template: str | None = Field(None, description=_DC["prompt_template"].description)
    data_format: DataFormat = Field("auto", description=_DC["data_format"].description)
    completion_column: str | None = Field(None, description=_DC["completion_column"].description)
    cutoff_len: int = Field(512, gt=0, description=_DC["cutoff_len"].description)
    train_on_inputs: bool = Field(False, description=_DC["train_on_inputs"].description)
    task: Task = Field("causal_lm", description=_DC["task"].description)
    text_column: str = Field("text", min_length=1, description=_DC["text_column"].description)
    label_column: str = Field("label", min_length=1, description=_DC["label_column"].description)
    image_column: str = Field("image", min_length=1, description=_DC["image_column"].description)
    model_path: str | None = Field(
        None,
        description="Tokenizer to count tokens with (a model id or a model folder in an allowed folder). "
        "Empty: token statistics are skipped.",
    )

    def data_options(self) -> DataOptions:
        return DataOptions(
            cutoff_len=self.cutoff_len,
            prompt_template=self.prompt_template,
            data_format=self.data_format,
            completion_column=self.completion_column,
            train_on_inputs=self.train_on_inputs,
            task=self.task,
            text_column=self.text_column,
            label_column=self.label_column,
            image_column=self.image_column,
        )

    @property
    def counts_tokens(self) -> bool:
        """Whether model_path's tokenizer is read: images have no tokens (and a vision model no tokenizer)."""
        return bool(self.model_path) and self.task != "image_classification"


def new_dataset_id() -> str:
    return "ds_" + secrets.token_hex(8)


def tokenizer_for(model_path: str, policy: PathPolicy) -> PreTrainedTokenizerBase:
    """The tokenizer of `model_path`, reading a local folder only where the path policy allows. Cached: the UI
    re-validates a dataset on every template edit."""
    if classify_model_path(model_path) == "local":
        model_path = policy.local(model_path, "model_path")
    else:
        check_path_text(model_path, "model_path")
    return _load_tokenizer(str(model_path))


@functools.lru_cache(maxsize=8)
def _load_tokenizer(model_path: str) -> PreTrainedTokenizerBase:
    # An absolute folder passed the path policy; anything else is a hub id or alias, never a folder under the
    # server's working directory.
    tokenizer: PreTrainedTokenizerBase = load_tokenizer(model_path, relative_is_local=False)
    return tokenizer


def validate_file(path: Path, options: DatasetOptions, policy: PathPolicy) -> dict[str, Any]:
    """The data layer's validation report for a stored file, as JSON."""
    tokenizer = tokenizer_for(options.model_path, policy) if options.model_path and options.counts_tokens else None
    report = validate_source(str(path), options.data_options(), tokenizer=tokenizer)
    report.source = policy.shown(str(path))  # <home>/uploads/...: not where the server keeps its files
    return report.to_dict()


def dataset_view(ds: Row, *, full: bool = True) -> dict[str, Any]:
    report = json.loads(ds["report"])
    view = {
        "id": ds["id"],
        "owner": ds["owner"],
        "filename": ds["filename"],
        "size_bytes": ds["size_bytes"],
        "sha256": ds["sha256"],
        "created_at": iso(ds["created_at"]),
        "ok": bool(ds["ok"]),
        "n_rows": report.get("n_rows"),
        "format": report.get("format"),
    }
    if full:
        view["report"] = report
    return view


def get_dataset(store: Store, principal: Principal, dataset_id: str) -> Row:
    ds = store.get_dataset(dataset_id, scope(principal))
    if ds is None:
        raise NotFound(f"dataset {dataset_id!r} not found", field="dataset_id", value=dataset_id)
    return ds


def delete_dataset(store: Store, principal: Principal, dataset_id: str, storage: Storage | None = None) -> None:
    ds = get_dataset(store, principal, dataset_id)
    users = store.jobs_using_dataset(dataset_id)
    if users:
        raise Conflict(
            f"dataset {dataset_id!r} is used by unfinished job(s) {', '.join(users)}; cancel them or wait "
            "until they finish",
            field="dataset_id",
            value=dataset_id,
        )
    store.delete_dataset(dataset_id)
    shutil.rmtree(Path(ds["path"]).parent, ignore_errors=True)
    if storage is not None:
        storage.delete(dataset_key(dataset_id, Path(ds["path"])))
