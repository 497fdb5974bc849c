"""cluster: where a job runs (its node and devices), for services spread over several machines (issue 14)

Revision ID: 0003_cluster
Revises: 0002
Create Date: 2026-11-30

- `jobs.node`: the machine the job's current (or last) attempt trains on: its host name, or the Ray node's address
  with `tuneforge worker --ray`. Recorded by the training process itself, so it names where the work happens even
  when the worker that claimed the job runs elsewhere.
- `jobs.devices`: what that attempt trains on there: `cpu`, or the CUDA devices it sees (`cuda:0,1`).

Both are nullable (older jobs never recorded them); adding nullable columns needs no SQLite batch mode. Frozen:
later changes are new revisions.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_cluster"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("node", sa.String(200), nullable=True))
    op.add_column("jobs", sa.Column("devices", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("devices")
        batch.drop_column("node")
