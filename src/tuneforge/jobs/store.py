"""The service's state: API keys, jobs with their event streams, and uploaded datasets (SQLAlchemy Core).

One database is shared by the API server, its workers and each job's training process, possibly on several
machines (PostgreSQL) or as separate processes on one (SQLite in WAL mode). Every state change is one short
transaction whose WHERE clause states what must still be true ("status is queued", "this worker still owns the
job"), so two processes racing for the same job cannot both win, on either database.

The tables are in `db/schema.py`; opening a store migrates the database to the newest schema (`db/migrate.py`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeAlias

import sqlalchemy
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from ..db.engine import make_engine
from ..db.migrate import upgrade
from ..db.schema import api_keys, datasets, job_events, jobs
from ..keys import Principal, hash_key

ACTIVE = ("validating", "running")  # a worker owns the job
TERMINAL = ("succeeded", "failed", "cancelled")
STATUSES = ("queued", *ACTIVE, *TERMINAL)


class TooManyJobs(Exception):
    def __init__(self, active: int, limit: int):
        super().__init__(
            f"this API key already has {active} queued or running job(s), this server's limit "
            f"(TUNEFORGE_MAX_ACTIVE_JOBS_PER_KEY={limit}); wait for one to finish or cancel one"
        )
        self.active, self.limit = active, limit


_SECRETS = (
    ("logging_config", "wandb_login_key", ""),
    ("hf_config", "hf_token", None),
    (None, "user_session_token", None),
)


def without_secrets(spec_json: str) -> str:
    """A stored spec with its tokens removed (a finished job never needs them again)."""
    spec = json.loads(spec_json)
    for section, key, empty in _SECRETS:
        holder = spec.get(section) if section else spec
        if isinstance(holder, dict) and holder.get(key):
            holder[key] = empty
    return json.dumps(spec)


def _now() -> float:
    return time.time()


# A row as a dict, column name -> value: what the service functions, the worker and the routes pass around.
Row: TypeAlias = dict[str, Any]


def _row(r: sqlalchemy.Row[Any] | None) -> Row | None:
    return dict(r._mapping) if r is not None else None


def _inserted(row: Row | None) -> Row:
    assert row is not None, "a row read back in the transaction that inserted it"
    return row


def _rows(result: Iterable[sqlalchemy.Row[Any]]) -> list[Row]:
    return [dict(r._mapping) for r in result]


class Store:
    def __init__(self, url: str, *, create: bool = True) -> None:
        """`create`: create or upgrade the schema first (service processes); False: the database is known to be
        at the newest schema already (a job's training process, started by a worker that opened it)."""
        self.url = url
        self.engine = make_engine(url)
        if create:
            upgrade(self.engine)
        self._private_file_mode()

    def _private_file_mode(self) -> None:
        """A SQLite database holds key hashes and the specs (tokens) of unfinished jobs: owner-only (0600). SQLite
        creates its -wal and -shm files with the database file's mode."""
        database = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        if not database or database == ":memory:":
            return
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):  # not created yet, or not ours to chmod
                os.chmod(database + suffix, 0o600)

    def close(self) -> None:
        self.engine.dispose()

    # --- keys ----------------------------------------------------------------------------------------------------
    def create_key(self, owner: str, *, admin: bool = False) -> tuple[int, str]:
        """A new key for `owner`; returns (id, key). Only the hash is stored: the key is shown once."""
        key = "tf_" + secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            key_id = conn.execute(
                insert(api_keys)
                .values(owner=owner, prefix=key[:10], key_hash=hash_key(key), is_admin=admin, created_at=_now())
                .returning(api_keys.c.id)
            ).scalar_one()
        return int(key_id), key

    def authenticate(self, key: str) -> Principal | None:
        with self.engine.connect() as conn:
            r = conn.execute(
                select(api_keys).where(api_keys.c.key_hash == hash_key(key), api_keys.c.revoked_at.is_(None))
            ).first()
        if r is None:
            return None
        return Principal(owner=r.owner, key_id=r.id, is_admin=bool(r.is_admin))

    def list_keys(self) -> list[Row]:
        with self.engine.connect() as conn:
            return _rows(conn.execute(select(api_keys).order_by(api_keys.c.id)))

    def key_active(self, key_id: int) -> bool:
        """The key exists and is not revoked (a deployment's api_auth_token is only as good as its creator's key)."""
        with self.engine.connect() as conn:
            r = conn.execute(select(api_keys.c.id).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)))
            return r.first() is not None

    def revoke_key(self, key_id: int) -> bool:
        with self.engine.begin() as conn:
            res = conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
        return res.rowcount == 1

    # --- jobs ----------------------------------------------------------------------------------------------------
    def insert_job(
        self,
        *,
        owner: str,
        key_id: int | None,
        spec: dict[str, Any],
        spec_public: dict[str, Any],
        dataset_ids: list[str],
        runs_dir: Path,
        job_id: str | None = None,
        max_active_per_key: int | None = None,
    ) -> Row:
        """Queue a job. With `max_active_per_key`, raise `TooManyJobs` when the key already has that many queued or
        running jobs (counted in the inserting transaction: SQLite's BEGIN IMMEDIATE serializes it with other
        submissions)."""
        job_id = job_id or str(uuid.uuid4())
        now = _now()
        with self.engine.begin() as conn:
            if max_active_per_key is not None and key_id is not None:
                active = conn.execute(
                    select(func.count())
                    .select_from(jobs)
                    .where(jobs.c.key_id == key_id, jobs.c.status.in_(("queued", *ACTIVE)))
                ).scalar_one()
                if active >= max_active_per_key:
                    raise TooManyJobs(active, max_active_per_key)
            conn.execute(
                insert(jobs).values(
                    id=job_id,
                    owner=owner,
                    key_id=key_id,
                    status="queued",
                    spec=json.dumps(spec),
                    spec_public=json.dumps(spec_public),
                    dataset_ids=",".join(dataset_ids),
                    run_dir=str(runs_dir / job_id),
                    created_at=now,
                    updated_at=now,
                    attempts=0,
                    lost=0,
                    cancel_requested=False,
                    last_seq=0,
                )
            )
            self._add_event(conn, job_id, {"type": "status", "status": "queued", "message": "job queued"})
            return _inserted(self.get_job_conn(conn, job_id))

    def get_job(self, job_id: str, owner: str | None = None) -> Row | None:
        q = select(jobs).where(jobs.c.id == job_id)
        if owner is not None:
            q = q.where(jobs.c.owner == owner)
        with self.engine.connect() as conn:
            return _row(conn.execute(q).first())

    def list_jobs(
        self, *, owner: str | None, status: str | None = None, limit: int = 20, offset: int = 0
    ) -> tuple[list[Row], int]:
        where = []
        if owner is not None:
            where.append(jobs.c.owner == owner)
        if status is not None:
            where.append(jobs.c.status == status)
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(jobs).where(*where)).scalar_one()
            rows = conn.execute(
                select(jobs)
                .where(*where)
                .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
                .limit(limit)
                .offset(offset)
            )
            return _rows(rows), int(total)

    def queue_position(self, job: Row) -> int | None:
        """1 = next to run."""
        if job["status"] != "queued":
            return None
        with self.engine.connect() as conn:
            ahead = conn.execute(
                select(func.count())
                .select_from(jobs)
                .where(jobs.c.status == "queued", jobs.c.created_at < job["created_at"])
            ).scalar_one()
        return int(ahead) + 1

    def claim_next(self, worker_id: str) -> Row | None:
        """Take the oldest queued job (FIFO) for `worker_id`, or None. Safe against racing workers."""
        for _ in range(5):
            with self.engine.begin() as conn:
                candidate = conn.execute(
                    select(jobs.c.id).where(jobs.c.status == "queued").order_by(jobs.c.created_at, jobs.c.id).limit(1)
                ).scalar()
                if candidate is None:
                    return None
                now = _now()
                res = conn.execute(
                    update(jobs)
                    .where(jobs.c.id == candidate, jobs.c.status == "queued")
                    .values(
                        status="validating",
                        worker_id=worker_id,
                        heartbeat_at=now,
                        updated_at=now,
                        pid=None,
                        attempts=jobs.c.attempts + 1,
                    )
                )
                if res.rowcount == 1:
                    self._add_event(
                        conn,
                        candidate,
                        {"type": "status", "status": "validating", "message": f"picked up by worker {worker_id}"},
                    )
                    return self.get_job_conn(conn, candidate)
        return None

    @staticmethod
    def get_job_conn(conn: Connection, job_id: str) -> Row | None:
        return _row(conn.execute(select(jobs).where(jobs.c.id == job_id)).first())

    def set_pid(self, job_id: str, worker_id: str, pid: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.worker_id == worker_id).values(pid=pid))

    def set_placement(self, job_id: str, worker_id: str, *, node: str, devices: str) -> bool:
        """Record where the job's attempt runs (set by its training process, on the machine that trains it)."""
        with self.engine.begin() as conn:
            res = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.worker_id == worker_id, jobs.c.status.in_(ACTIVE))
                .values(node=node, devices=devices)
            )
            return res.rowcount == 1

    def heartbeat(self, job_id: str, worker_id: str) -> Row | None:
        """Mark the job alive; returns its row, or None when this worker no longer owns it."""
        with self.engine.begin() as conn:
            res = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.worker_id == worker_id, jobs.c.status.in_(ACTIVE))
                .values(heartbeat_at=_now())
            )
            if res.rowcount != 1:
                return None
            return self.get_job_conn(conn, job_id)

    def set_running(self, job_id: str, worker_id: str) -> bool:
        now = _now()
        with self.engine.begin() as conn:
            res = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.worker_id == worker_id, jobs.c.status.in_(ACTIVE))
                .values(status="running", updated_at=now, started_at=func.coalesce(jobs.c.started_at, now))
            )
            if res.rowcount == 1:
                self._add_event(conn, job_id, {"type": "status", "status": "running", "message": "training"})
            return res.rowcount == 1

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        worker_id: str | None = None,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        message: str | None = None,
        from_statuses: tuple[str, ...] = ACTIVE,
    ) -> bool:
        """Move a job from one of `from_statuses` (and, given `worker_id`, still owned by that worker) to a
        terminal status; False when it was no longer in such a state (someone else finished it first)."""
        assert status in TERMINAL
        now = _now()
        cond = [jobs.c.id == job_id, jobs.c.status.in_(from_statuses)]
        if worker_id is not None:
            cond.append(jobs.c.worker_id == worker_id)
        values: dict[str, Any] = dict(status=status, updated_at=now, finished_at=now, error=error, pid=None)
        if result is not None:
            values["result"] = json.dumps(result)
        with self.engine.begin() as conn:
            res = conn.execute(update(jobs).where(*cond).values(**values))
            if res.rowcount == 1:
                # The job's tokens (hf_token, wandb_login_key) are needed only while it can still run: drop them
                # from the stored spec in the same transaction that ends it.
                spec = conn.execute(select(jobs.c.spec).where(jobs.c.id == job_id)).scalar_one()
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(spec=without_secrets(spec)))
                ev = {"type": "status", "status": status, "message": message or status}
                if error:
                    ev["error"] = error
                self._add_event(conn, job_id, ev)
            return res.rowcount == 1

    def request_cancel(self, job_id: str) -> Row | None:
        """Cancel a job: a queued one at once, an active one by flagging it for its worker (which stops the
        process within a poll interval). Returns the job afterwards."""
        if not self.finish(job_id, "cancelled", message="cancelled before it started", from_statuses=("queued",)):
            with self.engine.begin() as conn:
                res = conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.status.in_(ACTIVE), jobs.c.cancel_requested.is_(False))
                    .values(cancel_requested=True, updated_at=_now())
                )
                if res.rowcount == 1:
                    self._add_event(conn, job_id, {"type": "log", "message": "cancel requested"})
        return self.get_job(job_id)

    def requeue(self, job_id: str, worker_id: str | None, *, message: str, lost: bool) -> bool:
        """Put an active job back at the head of the queue (its `created_at` keeps its FIFO place)."""
        cond = [jobs.c.id == job_id, jobs.c.status.in_(ACTIVE)]
        if worker_id is not None:
            cond.append(jobs.c.worker_id == worker_id)
        with self.engine.begin() as conn:
            res = conn.execute(
                update(jobs)
                .where(*cond)
                .values(
                    status="queued",
                    worker_id=None,
                    pid=None,
                    heartbeat_at=None,
                    updated_at=_now(),
                    lost=jobs.c.lost + (1 if lost else 0),
                )
            )
            if res.rowcount == 1:
                self._add_event(conn, job_id, {"type": "status", "status": "queued", "message": message})
            return res.rowcount == 1

    def active_jobs(self) -> list[Row]:
        with self.engine.connect() as conn:
            return _rows(conn.execute(select(jobs).where(jobs.c.status.in_(ACTIVE))))

    def delete_job_rows(self, job_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(job_events.delete().where(job_events.c.job_id == job_id))
            conn.execute(jobs.delete().where(jobs.c.id == job_id))

    # --- events --------------------------------------------------------------------------------------------------
    @staticmethod
    def _add_event(
        conn: Connection,
        job_id: str,
        data: dict[str, Any],
        *,
        progress: dict[str, Any] | None = None,
        worker_id: str | None = None,
    ) -> int | None:
        cond = [jobs.c.id == job_id]
        if worker_id is not None:
            cond.append(jobs.c.worker_id == worker_id)
        # Bumping last_seq on the job row takes its row lock, so events of one job get dense, ordered sequence
        # numbers and commit in that order: a reader polling `after=N` never skips one (on PostgreSQL too).
        seq = conn.execute(
            update(jobs)
            .where(*cond)
            .values(last_seq=jobs.c.last_seq + 1, **(progress or {}))
            .returning(jobs.c.last_seq)
        ).scalar()
        if seq is None:
            return None
        data = {**data, "time": float(data.get("time") or _now())}
        conn.execute(
            insert(job_events).values(
                job_id=job_id,
                seq=seq,
                type=str(data.get("type", "log")),
                time=data["time"],
                data=json.dumps(data, default=str),
            )
        )
        return int(seq)

    def add_event(
        self, job_id: str, data: dict[str, Any], *, progress: dict[str, Any] | None = None, worker_id: str | None = None
    ) -> int | None:
        """Append an event (and update the job's progress columns). None: `worker_id` no longer owns the job."""
        with self.engine.begin() as conn:
            return self._add_event(conn, job_id, data, progress=progress, worker_id=worker_id)

    def events_after(self, job_id: str, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(job_events.c.seq, job_events.c.data)
                .where(job_events.c.job_id == job_id, job_events.c.seq > after)
                .order_by(job_events.c.seq)
                .limit(limit)
            )
            return [{"seq": r.seq, **json.loads(r.data)} for r in rows]

    # --- datasets ------------------------------------------------------------------------------------------------
    def insert_dataset(
        self,
        *,
        dataset_id: str,
        owner: str,
        filename: str,
        path: str,
        size_bytes: int,
        sha256: str,
        report: dict[str, Any],
    ) -> Row:
        with self.engine.begin() as conn:
            conn.execute(
                insert(datasets).values(
                    id=dataset_id,
                    owner=owner,
                    filename=filename,
                    path=path,
                    size_bytes=size_bytes,
                    sha256=sha256,
                    created_at=_now(),
                    ok=bool(report.get("ok")),
                    report=json.dumps(report, default=str),
                )
            )
            return _inserted(_row(conn.execute(select(datasets).where(datasets.c.id == dataset_id)).first()))

    def update_dataset_report(self, dataset_id: str, report: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(datasets)
                .where(datasets.c.id == dataset_id)
                .values(ok=bool(report.get("ok")), report=json.dumps(report, default=str))
            )

    def get_dataset(self, dataset_id: str, owner: str | None = None) -> Row | None:
        q = select(datasets).where(datasets.c.id == dataset_id)
        if owner is not None:
            q = q.where(datasets.c.owner == owner)
        with self.engine.connect() as conn:
            return _row(conn.execute(q).first())

    def list_datasets(self, *, owner: str | None, limit: int = 100, offset: int = 0) -> tuple[list[Row], int]:
        where = [datasets.c.owner == owner] if owner is not None else []
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(datasets).where(*where)).scalar_one()
            rows = conn.execute(
                select(datasets).where(*where).order_by(datasets.c.created_at.desc()).limit(limit).offset(offset)
            )
            return _rows(rows), int(total)

    def jobs_using_dataset(self, dataset_id: str) -> list[str]:
        """Ids of unfinished jobs that read this dataset."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.dataset_ids).where(
                    jobs.c.status.in_(("queued", *ACTIVE)), jobs.c.dataset_ids.contains(dataset_id)
                )
            )
            return [r.id for r in rows if dataset_id in r.dataset_ids.split(",")]

    def delete_dataset(self, dataset_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(datasets.delete().where(datasets.c.id == dataset_id))
