"""harden: deployment tokens unique; deployment names per owner; finished jobs' tokens dropped (issue 12)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

- `deployments.token_hash` becomes a unique index: one api_auth_token opens one deployment. Before, a client could
  give a second deployment a token already in use. Where a database holds such duplicates, the newest deployment
  keeps the token and the older ones get the hash of a random token nobody holds (their owners still reach them
  with their API keys, and a new deployment gets a new token).
- `uq_deployments_active_name` covers (owner, name) instead of name: one tenant's deployment names no longer
  block, nor reveal, another's. Every database that satisfied the old index satisfies the new one.
- The stored spec of every finished (succeeded, failed, cancelled) job loses its `hf_token`, `wandb_login_key` and
  `user_session_token`: the service now drops them when a job ends, and earlier jobs kept them forever.

Index changes need no SQLite batch mode (CREATE/DROP INDEX work in place). Frozen: later changes are new revisions.
"""

from __future__ import annotations

import hashlib
import json
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = sa.text("status != 'terminated'")
SECRETS = (
    ("logging_config", "wandb_login_key", ""),
    ("hf_config", "hf_token", None),
    (None, "user_session_token", None),
)


def _unusable_hash() -> str:
    return hashlib.sha256(("revoked-" + secrets.token_urlsafe(32)).encode()).hexdigest()


def _without_secrets(spec_json: str) -> str | None:
    """The spec without its tokens, or None when it holds none (or is not a JSON object)."""
    try:
        spec = json.loads(spec_json)
    except ValueError:
        return None
    if not isinstance(spec, dict):
        return None
    changed = False
    for section, key, empty in SECRETS:
        holder = spec.get(section) if section else spec
        if isinstance(holder, dict) and holder.get(key):
            holder[key] = empty
            changed = True
    return json.dumps(spec) if changed else None


def upgrade() -> None:
    conn = op.get_bind()
    deployments = sa.table(
        "deployments", sa.column("id", sa.String), sa.column("token_hash", sa.String), sa.column("created_at", sa.Float)
    )
    dupes = (
        conn.execute(sa.select(deployments.c.token_hash).group_by(deployments.c.token_hash).having(sa.func.count() > 1))
        .scalars()
        .all()
    )
    for token_hash in dupes:
        rows = (
            conn.execute(
                sa.select(deployments.c.id)
                .where(deployments.c.token_hash == token_hash)
                .order_by(deployments.c.created_at.desc(), deployments.c.id.desc())
            )
            .scalars()
            .all()
        )
        for older in rows[1:]:
            conn.execute(sa.update(deployments).where(deployments.c.id == older).values(token_hash=_unusable_hash()))
    op.drop_index("ix_deployments_token_hash", table_name="deployments")
    op.create_index("ix_deployments_token_hash", "deployments", ["token_hash"], unique=True)
    op.drop_index("uq_deployments_active_name", table_name="deployments")
    op.create_index(
        "uq_deployments_active_name",
        "deployments",
        ["owner", "name"],
        unique=True,
        sqlite_where=ACTIVE,
        postgresql_where=ACTIVE,
    )

    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("status", sa.String), sa.column("spec", sa.Text))
    for job_id, spec in conn.execute(sa.select(jobs.c.id, jobs.c.spec).where(jobs.c.status.in_(TERMINAL))).all():
        cleaned = _without_secrets(spec)
        if cleaned is not None:
            conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(spec=cleaned))


def downgrade() -> None:
    # The dropped tokens cannot come back (they were the point). Going back to one name across owners fails if two
    # owners now have live deployments of the same name: terminate one first.
    op.drop_index("uq_deployments_active_name", table_name="deployments")
    op.create_index(
        "uq_deployments_active_name", "deployments", ["name"], unique=True, sqlite_where=ACTIVE, postgresql_where=ACTIVE
    )
    op.drop_index("ix_deployments_token_hash", table_name="deployments")
    op.create_index("ix_deployments_token_hash", "deployments", ["token_hash"])
