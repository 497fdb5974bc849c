"""The shapes of the service's JSON answers, so that the OpenAPI page documents every response.

The wire format is MonsterAPI's where MonsterAPI has the route (the official `monsterapi` client reads these
answers) and must not drift: the models forbid undeclared keys, so a view function that starts returning a new
key fails the API tests until the key is declared here (and documented). Field order is the key order on the wire.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..jobs.store import STATUSES
from ..serve.deployments import STATUSES as DEPLOYMENT_STATUSES
from ..spec import GGUFType


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Message(_Response):
    message: str = Field(description="What happened, in words.")


# --- fine-tuning jobs ---------------------------------------------------------------------------------------------
class JobProgress(_Response):
    step: int = Field(description="Optimizer steps done.")
    total_steps: int | None = Field(description="Steps the job will run (known once its data is validated).")
    epoch: float | None
    percent: float
    steps_per_second: float | None
    eta_seconds: float | None = Field(description="Estimated seconds left; 0 once succeeded.")


class JobLosses(_Response):
    train_loss: float | None
    eval_loss: float | None
    best_eval_loss: float | None = Field(
        description="The lowest validation loss so far; once the job is done, the loss of the step whose adapter was "
        "kept (an improvement counts when larger than early_stopping_threshold)."
    )
    best_step: int | None = Field(description="The step of best_eval_loss.")


class JobSummary(_Response):
    """A job as listed."""

    job_id: str
    deployment_id: str = Field(description="The job id again, under the name MonsterAPI's launch response uses.")
    owner: str
    suffix: str | None = Field(description="The job's name (the spec's `suffix`), if it was given one.")
    status: Literal[STATUSES]  # type: ignore[valid-type]
    model: str
    data_path: str
    created_at: str | None = Field(description="ISO 8601, UTC.")
    started_at: str | None
    finished_at: str | None
    updated_at: str | None
    queue_position: int | None = Field(description="1 = next to run; null when not queued.")
    progress: JobProgress
    losses: JobLosses
    error: str | None
    cancel_requested: bool
    attempts: int
    node: str | None = Field(
        description="The machine the current or last attempt trains on: its host name, or the Ray node's address."
    )
    devices: str | None = Field(description="What that attempt trains on there: `cpu`, or CUDA devices (`cuda:0,1`).")
    events_url: str
    adapter_url: str | None = Field(description="Where to download the adapter once the job has succeeded.")


class Job(JobSummary):
    """A job with its spec (secrets redacted) and, once succeeded, its training report."""

    spec: dict[str, Any]
    result: dict[str, Any] | None = Field(description="The run's report.json: losses, steps, tokens, memory, time.")
    evaluation: dict[str, Any] | None = Field(
        None, description="Base model vs adapter on the held-out test rows: metrics per model (null without test rows)."
    )
    eval_url: str | None = Field(None, description="The per-row evaluation (GET), when the job has one.")


class JobLaunched(Job, _Message):  # _Message last: `message` comes first on the wire
    pass


class JobPage(_Response):
    jobs: list[JobSummary]
    total: int
    limit: int
    offset: int


class JobEvaluation(_Response):
    """A page of a job's per-row evaluation: each row's prompt, reference and every model's answer and scores."""

    job_id: str
    evaluation: dict[str, Any] = Field(description="The summary: metrics per model, as in the job's `evaluation`.")
    rows: list[dict[str, Any]]
    total: int = Field(description="Rows matching the query (all rows, or those whose answers differ).")
    limit: int
    offset: int


class JobExport(_Response):
    """An export of a succeeded job's adapter merged into its base, made by the server in the background."""

    id: str = Field(description="`merged`, `gguf-q8_0` or `gguf-f16`: one export of each kind per job.")
    format: Literal["merged", "gguf"]
    gguf_type: GGUFType | None = Field(description="The GGUF weight type (GGUF exports only).")
    status: Literal["running", "succeeded", "failed"]
    stage: Literal["merging", "packing"] | None = Field(
        description="While running: `merging` (loading the base, merging; for GGUF also converting) or `packing` "
        "(zipping the merged folder)."
    )
    percent: float | None = Field(description="How much of `packing` is done (null in other stages).")
    error: str | None = Field(description="Why the export failed, in words.")
    file_name: str = Field(description="The download's file name: a zip of the Hugging Face folder, or a .gguf.")
    size_bytes: int | None
    started_at: float = Field(description="Unix time.")
    finished_at: float | None
    url: str = Field(description="This export's state.")
    download_url: str | None = Field(description="The file, once the export has succeeded.")


class JobExports(_Response):
    job_id: str
    exports: list[JobExport]


class JobEvent(BaseModel):
    """One event: `seq`, `type` and the type's own fields (`train`: step, total_steps, epoch, loss, lr, ...;
    `eval`: step, eval_loss, ...; `log`: message; `status`: status; `validation`: report)."""

    model_config = ConfigDict(extra="allow")

    seq: int = Field(description="1, 2, ... in the order the events happened.")
    type: str


class JobEvents(_Response):
    job_id: str
    status: Literal[STATUSES]  # type: ignore[valid-type]
    events: list[JobEvent]
    next_after: int = Field(description="Pass as `after` to get only newer events.")


# --- datasets -----------------------------------------------------------------------------------------------------
class DatasetSummary(_Response):
    id: str = Field(description="Use as a job's `data_config.data_path`.")
    owner: str
    filename: str
    size_bytes: int
    sha256: str
    created_at: str | None
    ok: bool = Field(description="Trainable: the validation report has no errors.")
    n_rows: int | None
    format: str | None


class Dataset(DatasetSummary):
    report: dict[str, Any] = Field(description="The validation report, as `tuneforge data validate --json` prints.")


class DatasetPage(_Response):
    datasets: list[DatasetSummary]
    total: int
    limit: int
    offset: int


class DatasetDeleted(_Response):
    id: str
    deleted: bool


# --- deployments --------------------------------------------------------------------------------------------------
class Deployment(_Response):
    deployment_id: str
    deployment_name: str
    status: Literal[DEPLOYMENT_STATUSES]  # type: ignore[valid-type]
    owner: str
    basemodel_path: str
    loramodel_path: str | None
    prompt_template: str
    max_model_len: int | None
    error: str | None
    URL: str = Field(description="The OpenAI base URL to call this deployment at, with `model` = deployment_name.")
    generate_base_url: str = Field(
        description="MonsterAPI's own endpoint: POST <generate_base_url>/generate with "
        "input_variables or prompt (the official client's base_url)."
    )
    model: str
    api_auth_token: str = Field(description="Its first characters; the create response alone has the whole token.")
    created_at: str | None
    updated_at: str | None
    live_at: str | None
    terminated_at: str | None
    task: Literal["causal_lm", "classification", "image_classification", "seq2seq"] | None = Field(
        description="What the live deployment answers: text generation (causal_lm: /v1/completions, "
        "/v1/chat/completions; seq2seq, an encoder-decoder: /v1/completions), or text or image classification "
        "(/v1/classify; an image classifier takes image data URLs); null until it is live."
    )
    labels: list[str] | None = Field(
        description="A classifier's labels, in the order of /v1/classify's `probs` (null for text generation)."
    )


class DeploymentCreated(Deployment, _Message):
    api_auth_token: str = Field(description="The whole token: shown in this response only (the server keeps a hash).")


class DeploymentTerminated(Deployment, _Message):
    pass


class DeploymentLogs(_Response):
    deployment_id: str
    status: Literal[DEPLOYMENT_STATUSES]  # type: ignore[valid-type]
    n_lines: int
    logs: list[str]


class LatencySummary(_Response):
    count: int = Field(description="Requests measured.")
    mean: float | None
    p50: float | None = Field(description="Median, interpolated in the histogram's buckets (as histogram_quantile).")
    p90: float | None
    p99: float | None


class DeploymentMetrics(_Response):
    """One deployment's serving figures (what `GET /metrics` exports for Prometheus, for this deployment alone)."""

    deployment_id: str
    deployment_name: str
    time: float = Field(description="Unix time of this reading: two readings give tokens per second.")
    requests: int = Field(description="Requests answered since the server started.")
    requests_by_finish_reason: dict[str, int] = Field(description="stop, length, cancelled, error.")
    prompt_tokens: int
    generated_tokens: int
    ttft_seconds: LatencySummary = Field(description="Time to first token (queueing included).")
    tpot_seconds: LatencySummary = Field(description="Time per output token after the first.")
    queue_depth: int = Field(description="Requests waiting on the engine (shared by its base model's deployments).")
    running_requests: int = Field(description="Requests being decoded by the engine now.")
    loaded_adapters: int = Field(description="Adapters held on the engine's device now.")
    registered_adapters: int = Field(description="Adapters the engine can serve by name.")
    rejected_requests: int = Field(description="Requests the engine refused with 503 (queue full).")


class DeploymentPage(_Response):
    deployments: list[Deployment]
    total: int
