"""Every run gets a writer token; launches are marked apart; the database's instance id.

``runs.ingest_token_hash`` used to double as the marker "a worker was
launched for this run" (only launched runs had a token). Runs created by a
worker started by hand now get one too, so the marker becomes its own
column, ``runs.launched_at``: set when the scheduler takes a run out of the
queue to start its worker. Every run from before this revision that has a
token hash was launched, so those get ``launched_at = updated_at``.

``instance`` holds one row: the id of this database's API instance, made
here once. Workers carry it and an API with another id refuses them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 09:00:00
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.add_column(sa.Column("launched_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE runs SET launched_at = updated_at "
        "WHERE ingest_token_hash IS NOT NULL AND launched_at IS NULL"
    )
    instance = op.create_table(
        "instance",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(instance, [{"id": uuid.uuid4().hex, "created_at": datetime.now(timezone.utc)}])


def downgrade() -> None:
    op.drop_table("instance")
    # Before 0005 a token hash meant "launched": hand-made runs lose theirs.
    op.execute("UPDATE runs SET ingest_token_hash = NULL WHERE launched_at IS NULL")
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_column("launched_at")
