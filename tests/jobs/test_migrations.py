"""Schema migrations, on SQLite and on a real PostgreSQL server: databases made by the first release (before
migrations existed) are adopted and upgraded with every row intact; new databases get exactly `db/schema.py`;
processes starting at once migrate once; databases we did not make, or from a newer tuneforge, are refused."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import inspect, text

from tuneforge.db.engine import make_engine
from tuneforge.db.migrate import alembic_config, current_revision, head_revision, migration_transaction
from tuneforge.db.schema import metadata
from tuneforge.errors import TuneforgeError
from tuneforge.jobs.store import Store, hash_key
from tuneforge.serve.deployments import DeploymentManager

FIXTURES = Path(__file__).parent / "fixtures"
BASELINE = "0001"  # the first released schema
TABLES = {"api_keys", "jobs", "job_events", "datasets", "deployments"}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'service.db'}"
    return request.getfixturevalue("pg_database")


def first_release_ddl(dialect: str, *, tables: set[str] = TABLES) -> list[str]:
    """The CREATE statements the first release ran (`create_all`, captured from it), for the given tables."""
    sql = "\n".join(
        line for line in (FIXTURES / f"schema_v0.{dialect}.sql").read_text().splitlines() if not line.startswith("--")
    )
    statements = [s.strip() for s in sql.split(";") if s.strip()]
    return [s for s in statements if any(f" {t} " in s or f" {t}\n" in s for t in tables)]


def make_first_release_db(url: str, *, tables: set[str] = TABLES):
    engine = make_engine(url)
    with engine.begin() as conn:
        for statement in first_release_ddl(engine.dialect.name, tables=tables):
            conn.exec_driver_sql(statement)
    return engine


def fill(engine) -> dict:
    """Rows as the first release wrote them: keys (one revoked), jobs (finished, queued), events, a dataset and
    deployments (a live one, and a terminated one of the same name)."""
    report = {"ok": True, "format": "jsonl", "rows": 80}
    result = {"adapter": "/runs/j1/adapter", "eval_loss": 0.42}
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO api_keys (id, owner, prefix, key_hash, is_admin, created_at, revoked_at) VALUES "
                "(1, 'alice', 'tf_alice00', :h1, false, 100.0, NULL), (2, 'root', 'tf_root000', :h2, true, 101.0, NULL), "
                "(3, 'bob', 'tf_bob0000', :h3, false, 102.0, 150.0)"
            ),
            {"h1": hash_key("tf_alice-key"), "h2": hash_key("tf_root-key"), "h3": hash_key("tf_bob-key")},
        )
        conn.execute(
            text(
                "INSERT INTO jobs (id, owner, key_id, status, spec, spec_public, dataset_ids, run_dir, created_at, "
                "updated_at, started_at, finished_at, attempts, lost, cancel_requested, step, total_steps, train_loss, "
                "eval_loss, last_seq, result) VALUES "
                "('j1', 'alice', 1, 'succeeded', :spec, :spec, 'ds_1', '/runs/j1', 200.0, 260.0, 201.0, 260.0, 1, 0, "
                "false, 12, 12, 0.5, 0.42, 3, :result), "
                "('j2', 'alice', 1, 'queued', :spec, :spec, 'ds_1', '/runs/j2', 300.0, 300.0, NULL, NULL, 0, 0, false, "
                "NULL, NULL, NULL, NULL, 1, NULL)"
            ),
            {"spec": json.dumps({"x": 1}), "result": json.dumps(result)},
        )
        for job_id, seq, kind, data in [
            ("j1", 1, "status", {"type": "status", "status": "queued", "message": "job queued", "time": 200.0}),
            ("j1", 2, "metrics", {"type": "metrics", "step": 12, "loss": 0.5, "time": 250.0}),
            ("j1", 3, "status", {"type": "status", "status": "succeeded", "message": "done", "time": 260.0}),
            ("j2", 1, "status", {"type": "status", "status": "queued", "message": "job queued", "time": 300.0}),
        ]:
            conn.execute(
                text("INSERT INTO job_events (job_id, seq, type, time, data) VALUES (:j, :s, :k, :t, :d)"),
                {"j": job_id, "s": seq, "k": kind, "t": data["time"], "d": json.dumps(data)},
            )
        conn.execute(
            text(
                "INSERT INTO datasets (id, owner, filename, path, size_bytes, sha256, created_at, ok, report) VALUES "
                "('ds_1', 'alice', 'qa.jsonl', '/uploads/ds_1/qa.jsonl', 1234, :sha, 150.0, true, :report)"
            ),
            {"sha": "ab" * 32, "report": json.dumps(report)},
        )
        conn.execute(
            text(
                "INSERT INTO deployments (id, name, owner, key_id, status, token_hash, token_prefix, basemodel_path, "
                "loramodel_path, model_load, adapter_source, prompt_template, params, created_at, updated_at, live_at, "
                "terminated_at) VALUES "
                "('d1', 'qa-bot', 'alice', 1, 'live', :t1, 'tok_aaaa', 'smollm2', 'j1', '/models/smollm2', "
                "'/runs/j1/adapter', '{prompt}{completion}', '{}', 400.0, 410.0, 410.0, NULL), "
                "('d0', 'qa-bot', 'alice', 1, 'terminated', :t0, 'tok_bbbb', 'smollm2', NULL, '/models/smollm2', NULL, "
                "'{prompt}{completion}', '{}', 350.0, 390.0, 360.0, 390.0)"
            ),
            {"t1": hash_key("deploy-token-1"), "t0": hash_key("deploy-token-0")},
        )
    return {"report": report, "result": result}


def schema_differences(engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)


def test_a_first_release_database_is_adopted_upgraded_and_reads_back(db_url, tmp_path):
    engine = make_first_release_db(db_url)
    expected = fill(engine)
    with engine.connect() as conn:
        assert current_revision(conn) is None

    store = Store(db_url)  # what every service process does on start
    try:
        with store.engine.connect() as conn:
            assert current_revision(conn) == head_revision()
        assert schema_differences(store.engine) == []

        alice = store.authenticate("tf_alice-key")
        assert (alice.owner, alice.key_id, alice.is_admin) == ("alice", 1, False)
        assert store.authenticate("tf_root-key").is_admin
        assert store.authenticate("tf_bob-key") is None  # still revoked
        assert [(k["id"], k["owner"], k["revoked_at"]) for k in store.list_keys()] == [
            (1, "alice", None),
            (2, "root", None),
            (3, "bob", 150.0),
        ]

        j1 = store.get_job("j1", owner="alice")
        assert (j1["status"], j1["step"], j1["eval_loss"], j1["last_seq"]) == ("succeeded", 12, 0.42, 3)
        assert json.loads(j1["result"]) == expected["result"] and json.loads(j1["spec"]) == {"x": 1}
        assert [e["seq"] for e in store.events_after("j1")] == [1, 2, 3]
        assert store.events_after("j1", after=1)[0] == {
            "seq": 2,
            "type": "metrics",
            "step": 12,
            "loss": 0.5,
            "time": 250.0,
        }
        jobs, total = store.list_jobs(owner="alice")
        assert total == 2 and [j["id"] for j in jobs] == ["j2", "j1"]

        ds = store.get_dataset("ds_1", owner="alice")
        assert (ds["filename"], ds["size_bytes"], bool(ds["ok"])) == ("qa.jsonl", 1234, True)
        assert json.loads(ds["report"]) == expected["report"]
        assert store.jobs_using_dataset("ds_1") == ["j2"]

        deployments = DeploymentManager(store.engine, tmp_path / "logs")
        live = deployments.by_name("qa-bot")
        assert (live["id"], live["status"], live["adapter_source"]) == ("d1", "live", "/runs/j1/adapter")
        assert deployments.by_token("deploy-token-1")["id"] == "d1"
        assert [d["id"] for d in deployments.list("alice")] == ["d1", "d0"]

        # ... and the service carries on writing to it: the queued job is claimed, its events continue in order.
        assert store.claim_next("w1")["id"] == "j2"
        assert [e["seq"] for e in store.events_after("j2")] == [1, 2]
        assert store.add_event("j1", {"type": "log", "message": "after the upgrade"}) == 4
    finally:
        store.close()
        engine.dispose()


def test_a_database_with_only_the_job_store_tables_gets_the_rest(db_url):
    # `tuneforge keys create` before the server ever ran: the first release made the four job-store tables only.
    engine = make_first_release_db(db_url, tables=TABLES - {"deployments"})
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO api_keys (owner, prefix, key_hash, is_admin, created_at) "
                "VALUES ('alice', 'tf_alice00', :h, false, 1.0)"
            ),
            {"h": hash_key("tf_alice-key")},
        )
    store = Store(db_url)
    try:
        assert set(inspect(store.engine).get_table_names()) == TABLES | {"alembic_version"}
        assert schema_differences(store.engine) == []
        assert store.authenticate("tf_alice-key").owner == "alice"
    finally:
        store.close()
        engine.dispose()


def reflect(engine) -> dict:
    """Every table's columns (name, type, nullable), primary key, unique constraints, foreign keys and indexes."""
    insp = inspect(engine)
    out = {}
    for table in sorted(set(insp.get_table_names()) - {"alembic_version"}):
        out[table] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)],
            "pk": insp.get_pk_constraint(table)["constrained_columns"],
            "unique": sorted((u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(table)),
            "fks": sorted(
                (f["name"], tuple(f["constrained_columns"]), f["referred_table"], f["options"].get("ondelete"))
                for f in insp.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (
                    i["name"],
                    tuple(i["column_names"]),
                    bool(i["unique"]),
                    sorted((k, str(v)) for k, v in i.get("dialect_options", {}).items()),
                )
                for i in insp.get_indexes(table)
            ),
        }
    return out


def test_the_baseline_migration_makes_exactly_the_first_release_schema(db_url, request, tmp_path):
    if db_url.startswith("sqlite"):
        other_url = f"sqlite:///{tmp_path / 'first-release.db'}"
    else:
        other_url = request.getfixturevalue("pg_second_database")
    legacy = make_first_release_db(other_url)
    engine = make_engine(db_url)
    with migration_transaction(engine) as conn:
        command.upgrade(alembic_config(conn), BASELINE)
    try:
        assert reflect(engine) == reflect(legacy)
    finally:
        engine.dispose()
        legacy.dispose()


@pytest.fixture
def pg_second_database(postgres_url):
    import psycopg

    name = "t2_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_new_database_gets_exactly_the_schema_module(db_url):
    store = Store(db_url)
    try:
        assert set(inspect(store.engine).get_table_names()) == TABLES | {"alembic_version"}
        # Fails when db/schema.py changes without a migration (or a migration without the schema).
        assert schema_differences(store.engine) == []
    finally:
        store.close()


def test_processes_starting_at_once_migrate_once(db_url):
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def start():
        try:
            barrier.wait()
            Store(db_url).close()  # each its own engine and connections, as separate processes have
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head_revision()]
    engine.dispose()


def test_a_table_tuneforge_did_not_make_is_refused_and_nothing_is_written(db_url):
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE jobs (id INTEGER PRIMARY KEY, title TEXT)")  # another app's
    with pytest.raises(
        TuneforgeError,
        match=r"table 'jobs' that tuneforge did not make: it lacks the columns "
        r"owner, key_id, status, spec, spec_public and 23 more\. Give tuneforge a database of its own",
    ):
        Store(db_url)
    assert set(inspect(engine).get_table_names()) == {"jobs"}  # rolled back: no alembic_version, no api_keys
    engine.dispose()


def test_a_database_from_a_newer_tuneforge_is_refused(db_url):
    Store(db_url).close()
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(
        TuneforgeError,
        match=rf"schema revision '9999', which this tuneforge does not know \(its "
        rf"newest is '{head_revision()}'\): a newer tuneforge upgraded it",
    ):
        Store(db_url)
    engine.dispose()


def _add_column_in_batch_mode(conn) -> None:
    """What a later migration does to `jobs` on SQLite: batch mode copies the table and drops the original."""
    with Operations(MigrationContext.configure(conn)).batch_alter_table("jobs", recreate="always") as batch:
        batch.add_column(sa.Column("note", sa.Text()))


def test_sqlite_batch_migrations_keep_rows_that_reference_the_rebuilt_table(tmp_path):
    url = f"sqlite:///{tmp_path / 'service.db'}"
    engine = make_first_release_db(url)
    fill(engine)
    with migration_transaction(engine) as conn:
        _add_column_in_batch_mode(conn)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM job_events")).scalar() == 4
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1  # back on for the pooled connection

    # The hazard this guards against: with foreign keys on, dropping the old `jobs` cascades to its events.
    with engine.begin() as conn:
        _add_column_in_batch_mode(conn)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM job_events")).scalar() == 0
    engine.dispose()
