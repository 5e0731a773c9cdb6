"""Which API process watches a launched worker: a lease on its run (``runs.lease_owner``,
``runs.lease_expires_at``).

Several API processes may share one database. The one that launched a worker
is its parent and the only one that learns its exit status, so it alone
records the worker's end while its lease holds; another process takes the
run over only when that owner is gone (same machine: its process ended) or
its lease ran out (another machine). Runs from before this revision have no
owner, so the first API to look adopts their live workers, as a restarted
API always did.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=200), nullable=True))
        batch_op.add_column(
            sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("lease_owner")
