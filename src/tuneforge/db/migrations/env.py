"""Alembic's entry point for tuneforge's migrations.

Service processes run them through `tuneforge.db.migrate.upgrade`, which passes a connection that is already in
a locked transaction. The `alembic` command line (for developers: `make migration`, docs/ARCHITECTURE.md) gets
the database from `-x url=...`, else from the service settings (`TUNEFORGE_DB`, `TUNEFORGE_HOME`), and takes
the same lock.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from tuneforge.db.engine import make_engine
from tuneforge.db.migrate import migration_transaction
from tuneforge.db.schema import metadata


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most of a table: batch mode copies it into a new table instead. On PostgreSQL
        # batch operations are plain ALTERs, so one migration serves both.
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():  # inside the caller's transaction: a no-op that commits nothing
        context.run_migrations()


if context.is_offline_mode():
    # The baseline inspects the database (it adopts tables made before migrations existed): SQL scripts can't.
    raise SystemExit("tuneforge migrations run on a live database only; drop --sql and give -x url=DATABASE_URL")

given = context.config.attributes.get("connection")
if given is not None:
    run_migrations(given)
else:
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        from tuneforge.settings import Settings

        url = Settings().database_url
    engine = make_engine(url)
    try:
        with migration_transaction(engine) as conn:
            run_migrations(conn)
    finally:
        engine.dispose()
