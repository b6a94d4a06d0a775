"""Alembic environment for autofuse's own tables (version table ``autofuse_alembic_version``,
so the tables can share a database with Optuna's, which has its own ``alembic_version``)."""

from alembic import context

VERSION_TABLE = "autofuse_alembic_version"

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - autofuse always passes a connection
    raise RuntimeError(
        "run autofuse migrations through autofuse.storage.history.HistoryStore.upgrade()"
    )
context.configure(
    connection=connection,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
