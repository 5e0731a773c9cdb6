"""The GPUs a launched run holds (``runs.gpu_reservation``).

The local launcher gives each job its own GPUs (backend.gpus): when the
scheduler takes a run out of the queue it stores the machine and the GPU ids
it reserved, and a queued job starts only when enough of the machine's GPUs
are held by no live run. Every API process on the machine reads the same
reservations. Runs from before this revision hold none.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.add_column(sa.Column("gpu_reservation", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_column("gpu_reservation")
