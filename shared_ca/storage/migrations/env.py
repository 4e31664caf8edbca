"""Alembic environment: migrations run only on a connection handed in by `migrate_to_head`."""

from __future__ import annotations

from alembic import context

from shared_ca.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the CLI is the only entry point
    raise RuntimeError("run migrations with `gateway db upgrade`, not the alembic command")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
