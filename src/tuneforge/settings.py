"""The service's one settings object (the server, its workers and `tuneforge keys`), separate from the per-job spec.

Every field reads the environment variable `TUNEFORGE_<FIELD>` (e.g. `TUNEFORGE_HOME`, `TUNEFORGE_DB`,
`TUNEFORGE_ALLOWED_PATHS`); command-line flags override them. Components never read the environment themselves:
they get a `Settings` (or the values they need) as arguments, and the worker passes the same values on to the
processes it starts through `Settings.to_env()`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import ByteSize, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import TuneforgeError


def default_home() -> Path:
    return Path("~/.tuneforge").expanduser()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", extra="ignore", validate_default=True)

    home: Path = Field(
        default_factory=default_home,
        description="Folder that holds the service state: the SQLite database, uploads, runs, logs, and the "
        "`models/` and `datasets/` folders that jobs may read local files from.",
    )
    db: str | None = Field(
        None,
        description="SQLAlchemy database URL, e.g. postgresql://user:pass@host/dbname. Default: SQLite in "
        "<home>/tuneforge.db.",
    )
    storage: str | None = Field(
        None,
        description="Shared storage every machine of the service reads and writes: a local folder (e.g. a network "
        "mount) or an fsspec URL such as s3://bucket/prefix (credentials and endpoint from the AWS_* variables). "
        "Uploaded datasets, checkpoints and finished runs are copied there, so a job can run, resume or be served "
        "on any machine. Default: none, the home folder is the only copy (one machine).",
    )
    host: str = Field("127.0.0.1", description="Address the API server listens on.")
    port: int = Field(8000, ge=0, lt=65536, description="Port the API server listens on.")
    workers: int = Field(
        1,
        ge=0,
        le=64,
        description="Workers the server starts beside itself (each runs one job at a time, FIFO). 0: none; run "
        "`tuneforge worker` processes instead.",
    )
    worker_devices: str = Field(
        "",
        description="Comma-separated CUDA device indices, one worker per entry pinned to it with "
        "CUDA_VISIBLE_DEVICES (e.g. '0,1'); overrides `workers`. Empty: `workers` unpinned workers.",
    )
    allowed_paths: str = Field(
        "",
        description="Extra local folders (colon-separated) that jobs may read models and data from, besides "
        "<home>/models and <home>/datasets.",
    )
    allow_private_urls: bool = Field(
        False,
        description="Let jobs download data from URLs on loopback/private/link-local addresses (off: a tenant "
        "could otherwise make the server fetch from internal services).",
    )
    max_upload_bytes: ByteSize = Field(
        ByteSize(2 * 1024**3), description="Largest dataset upload accepted, in bytes or with a unit ('500MB')."
    )
    max_request_bytes: ByteSize = Field(
        ByteSize(1024**2),
        description="Largest request body accepted on every route but the dataset upload (which has "
        "max_upload_bytes), in bytes or with a unit ('2MB'). A job spec is a few kilobytes.",
    )
    max_field_chars: int = Field(
        32768,
        ge=256,
        description="Longest string accepted in any field of a job spec or deployment (a prompt_template, a name, "
        "a path); paths are also limited to 4096 characters.",
    )
    max_active_jobs_per_key: int = Field(
        10,
        ge=1,
        description="Queued plus running jobs one API key may have at a time; more are refused with 429.",
    )
    max_steps_per_job: int = Field(
        100_000,
        ge=1,
        description="Most optimizer steps one job may run (max_steps, or epochs x batches per epoch): a job "
        "beyond it would hold a worker for days.",
    )
    max_tokens_per_job: int = Field(
        2_000_000_000,
        ge=1,
        description="Most tokens one job may train on, counted as steps x batch_size x "
        "gradient_accumulation_steps x cutoff_len (an upper bound of the real count).",
    )
    auth_failures_per_minute: int = Field(
        20,
        ge=1,
        description="Failed authentications (API keys and deployment tokens) one client address may make per "
        "minute before it gets 429 until the minute is over.",
    )
    public_docs: bool = Field(
        True,
        description="Serve the OpenAPI page (/docs, /redoc, /openapi.json) without a key. The schema holds no "
        "secrets, but it tells anyone who can reach the server what it is; false: not served at all.",
    )
    serve_max_batch_size: int = Field(
        32, ge=1, description="Deployments: most requests one base model's engine decodes together (one step)."
    )
    serve_kv_cache_mb: float = Field(
        2048,
        ge=0.01,
        description="Deployments: memory for each base model's running batch KV cache, in MiB; requests beyond "
        "it wait in the queue.",
    )
    serve_weights: Literal["dense", "int8"] = Field(
        "dense",
        description="Deployments: decode-step weights. int8: llama.cpp's q8_0 format in tuneforge's C kernels for "
        "deployments on a CPU (float32 activations; ~4x faster per token, next-token KL ~0.005 nats against "
        "float32); deployments on a GPU keep dense weights.",
    )
    serve_max_waiting: int = Field(
        1024, ge=1, description="Deployments: queued requests per base model at most; more get 503 with Retry-After."
    )
    heartbeat_seconds: float = Field(2.0, gt=0, description="How often a worker marks its running job as alive.")
    stale_after_seconds: float = Field(
        30.0,
        gt=0,
        description="A running job whose worker has not marked it alive for this long is put back in the queue "
        "(and resumes from its last checkpoint).",
    )
    max_lost: int = Field(
        3, ge=1, description="Times a job may lose its worker (crash, SIGKILL) before it is failed instead of requeued."
    )
    poll_seconds: float = Field(0.5, gt=0, description="How often idle workers look for jobs and cancel requests.")
    cancel_grace_seconds: float = Field(
        5.0, ge=0, description="After SIGTERM, how long a cancelled job's process may take before SIGKILL."
    )

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, v: Path) -> Path:
        return Path(os.path.abspath(v.expanduser()))

    @field_validator("db", "storage", mode="after")
    @classmethod
    def _empty_is_default(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        return v.strip()

    # --- derived -------------------------------------------------------------------------------------------------
    @property
    def database_url(self) -> str:
        return self.db or f"sqlite:///{self.home / 'tuneforge.db'}"

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def tmp_dir(self) -> Path:
        return self.home / "tmp"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def allowed_dirs(self) -> list[Path]:
        extra = [Path(os.path.abspath(Path(p).expanduser())) for p in self.allowed_paths.split(":") if p.strip()]
        return [self.home / "models", self.home / "datasets", *extra]

    @property
    def private_dirs(self) -> list[Path]:
        """Never readable through a job's paths, whatever `allowed_paths` says: other tenants' uploads and runs."""
        return [self.uploads_dir, self.runs_dir, self.logs_dir, self.tmp_dir, self.cache_dir]

    def ensure_dirs(self) -> None:
        for d in (self.home, self.home / "models", self.home / "datasets", *self.private_dirs):
            d.mkdir(parents=True, exist_ok=True)
        # The home holds the database (keys' hashes, job specs with their tokens until the job ends), uploads and
        # adapters of every tenant: only the service's own user may read it. models/ and datasets/ keep the
        # operator's own permissions (they are the operator's to share).
        for d in (self.home, *self.private_dirs):
            try:
                os.chmod(d, 0o700)
            except PermissionError as exc:
                raise TuneforgeError(
                    f"home: cannot make {d} private to this user (chmod 700): {exc.strerror}; run "
                    "the service as the owner of its home",
                    field="home",
                    value=str(d),
                ) from None

    def relative(self, path: str | os.PathLike) -> str:
        """`path` as shown to API users: relative to the home (`<home>/datasets/x.jsonl`) so that error messages
        do not disclose where the server keeps its files."""
        text = str(path)
        home = str(self.home)
        if text == home or text.startswith(home + os.sep):
            return "<home>" + text[len(home) :]
        return text

    def to_env(self) -> dict[str, str]:
        """The environment that makes `Settings()` in a child process equal to this one."""
        env = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            env[f"TUNEFORGE_{name.upper()}"] = str(value)
        return env


def redact_url(url: str) -> str:
    """A database URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def load_settings(**overrides) -> Settings:
    """Settings from the environment, with the non-None `overrides` (command-line flags) on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
