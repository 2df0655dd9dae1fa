"""Several workers on one store: an index change log every worker replays, item events for
`imgaudit status`, per-source cursors, who processed an item, and external write-back state.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 01:40:42.391672
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("image_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(length=24), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_image_id"), ["image_id"], unique=False)

    op.create_table(
        "index_log",
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("image_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("op", sa.String(length=8), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "source_state",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("processed_by", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("writeback", sa.String(length=16), nullable=True))
        batch_op.create_index("ix_images_processed", ["processed_at"], unique=False)
        batch_op.create_index("ix_images_writeback", ["writeback", "id"], unique=False)

    # Images indexed before this revision enter the log in id order, so replaying it rebuilds them.
    op.execute(
        "INSERT INTO index_log (image_id, op, at) "
        "SELECT id, 'add', COALESCE(processed_at, created_at) FROM images WHERE indexed = 1 ORDER BY id"
    )


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index("ix_images_writeback")
        batch_op.drop_index("ix_images_processed")
        batch_op.drop_column("writeback")
        batch_op.drop_column("processed_by")

    op.drop_table("source_state")
    op.drop_table("index_log")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_image_id"))

    op.drop_table("events")
