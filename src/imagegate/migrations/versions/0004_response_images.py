"""response images: what `/v1/responses` answers returned, for `previous_response_id`

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "response_images",
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("response_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("output_index", sa.Integer(), nullable=False),
        sa.Column("image", sa.String(length=80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("item_id"),
    )
    op.create_index("ix_response_images_response_id", "response_images", ["response_id"])
    op.create_index("ix_response_images_account_id", "response_images", ["account_id"])
    op.create_index("ix_response_images_created_at", "response_images", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_response_images_created_at", "response_images")
    op.drop_index("ix_response_images_account_id", "response_images")
    op.drop_index("ix_response_images_response_id", "response_images")
    op.drop_table("response_images")
