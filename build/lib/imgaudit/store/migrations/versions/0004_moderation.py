"""Moderation results: the verdict, its reasons, the signals behind them and the OCR text.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 04:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("moderation", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("reasons", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("signals", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("ocr_text", sa.Text(), nullable=True))
        batch_op.create_index("ix_images_moderation", ["moderation", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index("ix_images_moderation")
        batch_op.drop_column("ocr_text")
        batch_op.drop_column("signals")
        batch_op.drop_column("reasons")
        batch_op.drop_column("moderation")
