"""Alembic environment: always run with a connection handed in by accounts/database.py."""

from alembic import context

from imagegate.accounts.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
