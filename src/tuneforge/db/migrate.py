"""Bring a service database to the newest schema with the Alembic migrations in `migrations/`.

Every service process that opens the database (`tuneforge server`, `worker`, `keys ...`) calls `upgrade` first,
so updating tuneforge updates the database on the next start. Several processes may start at the same moment:
on PostgreSQL the whole upgrade runs in one transaction under an advisory lock (PostgreSQL's DDL is
transactional); on SQLite in one `BEGIN IMMEDIATE` transaction, which holds the database's write lock. Either
way the others wait, then find the database at head and do nothing, and a migration that fails leaves the
database as it was.

Databases made before migrations existed (by `create_all`, without an `alembic_version` table) are adopted by
the baseline migration, which creates only the tables they lack.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from ..errors import TuneforgeError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

# Any fixed number shared by every tuneforge process; the same one `create_all` ran under before migrations existed,
# so an older process starting next to a newer one still waits for it.
PG_ADVISORY_LOCK = 727364


def alembic_config(connection: Connection | None = None) -> Config:
    """The Alembic configuration of the shipped migrations; `connection`: run them on it (see migrations/env.py)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, f"no migrations in {MIGRATIONS_DIR}"  # a broken install, not a user error
    return head


def current_revision(conn: Connection) -> str | None:
    """The database's schema revision; None for an empty database or one made before migrations existed."""
    return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def migration_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that only one process at a time holds, for running migrations on."""
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        raw = conn.connection.dbapi_connection
        assert raw is not None  # a connection checked out of the pool is open
        if sqlite:
            # SQLite's batch mode rebuilds a table by copying it and dropping the original; with foreign keys on,
            # dropping `jobs` would cascade-delete every job event. SQLite's documented procedure for schema
            # changes: foreign keys off (only possible outside a transaction), change, check, commit, back on.
            raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():  # SQLite: BEGIN IMMEDIATE (see engine.py), the database's write lock
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_ADVISORY_LOCK})")
                yield conn
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"a migration left rows that break foreign keys (rolled back): {broken[:5]}")
        finally:
            if sqlite:
                raw.execute("PRAGMA foreign_keys=ON")


def upgrade(engine: Engine) -> None:
    """Migrate the database to the newest schema this tuneforge knows (a no-op when it is there already)."""
    head = head_revision()
    with engine.connect() as conn:
        if current_revision(conn) == head:  # the common case: no advisory lock, no Alembic environment
            return
    with migration_transaction(engine) as conn:
        current = current_revision(conn)
        known = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
        if current is not None and current not in known:
            raise TuneforgeError(
                f"the database {engine.url.render_as_string(hide_password=True)} is at schema revision {current!r}, "
                f"which this tuneforge does not know (its newest is {head!r}): a newer tuneforge upgraded it. Run "
                "that version, or restore a backup of the database made before the upgrade",
                field="database",
                value=current,
            )
        if current != head:  # another process may have done it while this one waited for the lock
            print(
                f"tuneforge: upgrading the database {engine.url.render_as_string(hide_password=True)} from schema "
                f"revision {current or '(none)'} to {head}",
                file=sys.stderr,
                flush=True,
            )
            command.upgrade(alembic_config(conn), "head")
