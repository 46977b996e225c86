"""labels: per-account AI-content label producer and visible mark, per-key visible mark

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as table:
        table.add_column(sa.Column("label_producer", sa.String(length=200), nullable=True))
        table.add_column(sa.Column("visible_mark", sa.Boolean(), nullable=True))
    with op.batch_alter_table("api_keys") as table:
        table.add_column(sa.Column("visible_mark", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        table.drop_column("visible_mark")
    with op.batch_alter_table("accounts") as table:
        table.drop_column("visible_mark")
        table.drop_column("label_producer")
