"""The job queue: when ``POST /api/jobs`` queued a run (``runs.queued_at``).

Launches now wait for a worker slot instead of being refused. A queued run
has neither worker handle nor ingest token, just like a run created by a
worker started by hand before it registers; this column tells the two apart.
Runs from before this revision have NULL there: their workers were started
when they were launched, so none of them is waiting.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 12:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.add_column(sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_column("queued_at")
