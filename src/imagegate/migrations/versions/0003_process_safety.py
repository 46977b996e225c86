"""process safety: incarnations, rejected usage rows, scoped idempotency keys, ids never reused

- `incarnations`: one row per server process; reservations and idempotency claims name the
  process that holds them, so start-up releases only what provably dead processes left.
- `usage_rejects`: usage rows the database refused, for the operator.
- `idempotency` is rebuilt with the key scoped to (account, API key, endpoint). Replay answers
  kept before the upgrade are dropped: they did not record their endpoint, so replaying them
  could answer in another endpoint's shape (a retry across the upgrade runs again).
- SQLite: the tables whose ids are referenced get AUTOINCREMENT (rebuilt; ids are kept), so a
  deleted key's id is never given to a new key. PostgreSQL's sequences never reuse ids: no-op.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

AUTOINCREMENT_TABLES = ("accounts", "api_keys", "ledger_entries", "usage")


def upgrade() -> None:
    op.create_table(
        "incarnations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("node_id", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_incarnations_node_id", "incarnations", ["node_id"])

    op.create_table(
        "usage_rejects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(length=80), nullable=True),
        sa.Column("row", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_usage_rejects_created_at", "usage_rejects", ["created_at"])

    with op.batch_alter_table("reservations") as batch:
        batch.add_column(sa.Column("incarnation", sa.String(length=32), nullable=True))
        batch.create_index("ix_reservations_incarnation", ["incarnation"])

    op.drop_table("idempotency")
    op.create_table(
        "idempotency",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("body_hash", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("holder", sa.String(length=32), nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "key_id", "endpoint", "key"),
    )

    if op.get_bind().dialect.name == "sqlite":
        # A rebuild copies the rows with their ids; SQLite then counts on from the largest.
        # accounts/database.py runs migrations with foreign keys off, so dropping the old
        # `accounts` does not cascade into the tables that refer to it.
        for table in AUTOINCREMENT_TABLES:
            with op.batch_alter_table(table, recreate="always",
                                      table_kwargs={"sqlite_autoincrement": True}):
                pass


def downgrade() -> None:
    op.drop_table("idempotency")
    op.create_table(
        "idempotency",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("body_hash", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "key"),
    )
    with op.batch_alter_table("reservations") as batch:
        batch.drop_index("ix_reservations_incarnation")
        batch.drop_column("incarnation")
    op.drop_index("ix_usage_rejects_created_at", "usage_rejects")
    op.drop_table("usage_rejects")
    op.drop_index("ix_incarnations_node_id", "incarnations")
    op.drop_table("incarnations")
