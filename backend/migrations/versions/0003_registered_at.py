"""When a run's module list was first registered (``runs.registered_at``).

An empty list (a ``full`` run) leaves no module rows, so without this a
later, different list was taken as a first registration. Runs from before
this revision have NULL there; their stored modules still fix their layout.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 12:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.add_column(sa.Column("registered_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_column("registered_at")
