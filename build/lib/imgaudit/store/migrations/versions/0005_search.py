"""Search: what sources say about an image (caption, fields), its top ImageNet labels, dominant colours
and image-text (CLIP) embedding, and the log of finished items that the search indexes follow.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 04:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("caption", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("meta", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("labels", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("colours", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("clip_embedding", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("ai_caption", sa.Text(), nullable=True))
    op.create_table(
        "search_log",
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("image_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sqlite_autoincrement=True,
    )
    # Everything already finished is searchable once the indexes catch up.
    op.execute("INSERT INTO search_log (image_id) SELECT id FROM images WHERE status = 'done' ORDER BY id")


def downgrade() -> None:
    op.drop_table("search_log")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("ai_caption")
        batch_op.drop_column("clip_embedding")
        batch_op.drop_column("colours")
        batch_op.drop_column("labels")
        batch_op.drop_column("meta")
        batch_op.drop_column("caption")
