"""baseline: the first released schema (API keys, jobs, job events, datasets, deployments)

Revision ID: 0001
Revises:
Create Date: 2026-11-29

Databases made before migrations existed were created by `metadata.create_all` (jobs/store.py made the first
four tables, serve/deployments.py the fifth when the server first started), so one may hold all of these tables,
only the first four (keys were made with `tuneforge keys create` before the server ever ran), or none. This
migration adopts such a database: it checks that each table it finds has the columns tuneforge made, creates
the tables that are missing, and Alembic then records the database at this revision.

Constraints are unnamed, as `create_all` made them. Frozen: later schema changes are new migrations, never edits here.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

from tuneforge.errors import TuneforgeError

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _api_keys() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_used_at", sa.Float(), nullable=True),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_index("ix_api_keys_owner", "api_keys", ["owner"])


def _jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("spec_public", sa.Text(), nullable=False),
        sa.Column("dataset_ids", sa.Text(), nullable=False),
        sa.Column("run_dir", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("worker_id", sa.String(length=200), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("heartbeat_at", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lost", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("total_steps", sa.Integer(), nullable=True),
        sa.Column("epoch", sa.Float(), nullable=True),
        sa.Column("train_loss", sa.Float(), nullable=True),
        sa.Column("eval_loss", sa.Float(), nullable=True),
        sa.Column("best_eval_loss", sa.Float(), nullable=True),
        sa.Column("best_step", sa.Integer(), nullable=True),
        sa.Column("steps_per_second", sa.Float(), nullable=True),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_jobs_owner_created", "jobs", ["owner", "created_at"])
    op.create_index("ix_jobs_status_created", "jobs", ["status", "created_at"])


def _job_events() -> None:
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("time", sa.Float(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "seq", name="uq_job_events_job_seq"),
    )


def _datasets() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_datasets_owner", "datasets", ["owner"])


def _deployments() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("token_prefix", sa.String(length=16), nullable=False),
        sa.Column("basemodel_path", sa.Text(), nullable=False),
        sa.Column("loramodel_path", sa.Text(), nullable=True),
        sa.Column("model_load", sa.Text(), nullable=False),
        sa.Column("adapter_source", sa.Text(), nullable=True),
        sa.Column("prompt_template", sa.Text(), nullable=False),
        sa.Column("max_model_len", sa.Integer(), nullable=True),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("live_at", sa.Float(), nullable=True),
        sa.Column("terminated_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_deployments_owner", "deployments", ["owner"])
    op.create_index("ix_deployments_token_hash", "deployments", ["token_hash"])
    op.create_index(
        "uq_deployments_active_name",
        "deployments",
        ["name"],
        unique=True,
        sqlite_where=sa.text("status != 'terminated'"),
        postgresql_where=sa.text("status != 'terminated'"),
    )


# In creation order (foreign keys point backwards), with the columns the first release gave each table.
TABLES: list[tuple[str, Callable[[], None], tuple[str, ...]]] = [
    (
        "api_keys",
        _api_keys,
        ("id", "owner", "prefix", "key_hash", "is_admin", "created_at", "last_used_at", "revoked_at"),
    ),
    (
        "jobs",
        _jobs,
        (
            "id",
            "owner",
            "key_id",
            "status",
            "spec",
            "spec_public",
            "dataset_ids",
            "run_dir",
            "created_at",
            "updated_at",
            "started_at",
            "finished_at",
            "worker_id",
            "pid",
            "heartbeat_at",
            "attempts",
            "lost",
            "cancel_requested",
            "error",
            "step",
            "total_steps",
            "epoch",
            "train_loss",
            "eval_loss",
            "best_eval_loss",
            "best_step",
            "steps_per_second",
            "last_seq",
            "result",
        ),
    ),
    ("job_events", _job_events, ("id", "job_id", "seq", "type", "time", "data")),
    ("datasets", _datasets, ("id", "owner", "filename", "path", "size_bytes", "sha256", "created_at", "ok", "report")),
    (
        "deployments",
        _deployments,
        (
            "id",
            "name",
            "owner",
            "key_id",
            "status",
            "token_hash",
            "token_prefix",
            "basemodel_path",
            "loramodel_path",
            "model_load",
            "adapter_source",
            "prompt_template",
            "max_model_len",
            "params",
            "error",
            "created_at",
            "updated_at",
            "live_at",
            "terminated_at",
        ),
    ),
]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    existing = set(inspector.get_table_names())
    for name, create, columns in TABLES:
        if name not in existing:
            create()
            continue
        # A table of this name that tuneforge did not make (another application's `jobs` in a shared database):
        # stop before anything is written, rather than record it as ours.
        found = {c["name"] for c in inspector.get_columns(name)}
        missing = [c for c in columns if c not in found]
        if missing:
            url = op.get_bind().engine.url.render_as_string(hide_password=True)
            raise TuneforgeError(
                f"the database {url} has a table {name!r} that tuneforge did not make: it lacks the columns "
                f"{', '.join(missing[:5])}{f' and {len(missing) - 5} more' if len(missing) > 5 else ''}. Give tuneforge a database of its own (--db / TUNEFORGE_DB), or rename "
                "that table",
                field="database",
                value=url,
            )


def downgrade() -> None:
    for name, _create, _columns in reversed(TABLES):
        op.drop_table(name)
