"""Every table of the service database, on one MetaData: the job store's (API keys, jobs, their events, uploaded
datasets) and the deployments'.

This describes the schema at the newest migration. Changing it means adding a migration in `migrations/versions/`
(docs/ARCHITECTURE.md, "Schema migrations"); tests/jobs/test_migrations.py fails while the two disagree.

Times are UNIX seconds (floats): heartbeat arithmetic stays trivial and portable across SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

# Constraints are unnamed, as the first release made them (PostgreSQL names them itself: `api_keys_key_hash_key`,
# `jobs_key_id_fkey`, ...; SQLite leaves them unnamed), so databases made before migrations existed and those made
# by the migrations are the same. A migration that alters one in SQLite's batch mode names it through
# `batch_alter_table(..., naming_convention=...)` (docs/ARCHITECTURE.md, "Schema migrations").
metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("owner", String(200), nullable=False, index=True),
    Column("prefix", String(16), nullable=False),  # shown in `keys list`, so a key can be recognised
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float),
    Column("revoked_at", Float),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("key_id", Integer, ForeignKey("api_keys.id")),
    Column("status", String(16), nullable=False),
    Column("spec", Text, nullable=False),  # what the worker runs: local paths resolved, secrets kept
    Column("spec_public", Text, nullable=False),  # what the owner sent, secrets redacted
    Column("dataset_ids", Text, nullable=False, default=""),  # comma-separated uploads this job reads
    Column("run_dir", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("worker_id", String(200)),
    Column("pid", Integer),
    Column("node", String(200)),  # the machine (host name or Ray node address) the attempt trains on (0003_cluster)
    Column("devices", String(200)),  # `cpu` or `cuda:0,1`: what it trains on there (0003_cluster)
    Column("heartbeat_at", Float),
    Column("attempts", Integer, nullable=False, default=0),  # claims by a worker
    Column("lost", Integer, nullable=False, default=0),  # times its worker died under it
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("error", Text),
    Column("step", Integer),
    Column("total_steps", Integer),
    Column("epoch", Float),
    Column("train_loss", Float),
    Column("eval_loss", Float),
    Column("best_eval_loss", Float),
    Column("best_step", Integer),
    Column("steps_per_second", Float),
    Column("last_seq", Integer, nullable=False, default=0),
    Column("result", Text),  # the run's report.json
    Index("ix_jobs_owner_created", "owner", "created_at"),
    Index("ix_jobs_status_created", "status", "created_at"),
)

job_events = Table(
    "job_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False),  # 1, 2, 3... per job: the `after=N` cursor
    Column("type", String(32), nullable=False),
    Column("time", Float, nullable=False),
    Column("data", Text, nullable=False),
    UniqueConstraint("job_id", "seq", name="uq_job_events_job_seq"),
)

datasets = Table(
    "datasets",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner", String(200), nullable=False, index=True),
    Column("filename", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("report", Text, nullable=False),
)

deployments = Table(
    "deployments",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("owner", String(200), nullable=False, index=True),
    Column("key_id", Integer),
    Column("status", String(16), nullable=False),
    # sha256 of the api_auth_token (never the token itself); unique: one token opens one deployment (0002)
    Column("token_hash", String(64), nullable=False, index=True, unique=True),
    Column("token_prefix", String(16), nullable=False),
    Column("basemodel_path", Text, nullable=False),  # as given
    Column("loramodel_path", Text),  # as given: a job id, a folder on the server or a hub id
    Column("model_load", Text, nullable=False),  # what the engine loads (a checked local path or a hub id)
    Column("adapter_source", Text),  # a checked local adapter folder or a hub id; NULL: the base model alone
    Column("prompt_template", Text, nullable=False),
    Column("max_model_len", Integer),
    Column("params", Text, nullable=False),  # the rest of the payload as given (per_gpu_vram, gpu_count, ...)
    Column("error", Text),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("live_at", Float),
    Column("terminated_at", Float),
    # One non-terminated deployment per name and owner: the name is the `model` on the OpenAI endpoints, resolved
    # within the caller's own deployments, so one tenant's names neither block nor reveal another's (0002).
    Index(
        "uq_deployments_active_name",
        "owner",
        "name",
        unique=True,
        sqlite_where=text("status != 'terminated'"),
        postgresql_where=text("status != 'terminated'"),
    ),
)
