"""Each run keeps the last step of its telemetry streams (``runs.heads``).

Runs from before this revision have NULL there; ingest computes their heads
from the stored rows on their next batch (backend.services.ingest).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 10:03:19
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.add_column(sa.Column("heads", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_column("heads")
