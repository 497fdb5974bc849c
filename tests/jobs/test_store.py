"""The job store on SQLite and on a real PostgreSQL server: keys, FIFO claims under racing workers, event
sequences, cancel, and requeue of jobs whose worker died."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tuneforge.jobs.store import Store
from tuneforge.jobs.worker import recover_stale
from tuneforge.settings import Settings


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_database")


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    yield s
    s.close()


def _job(store: Store, tmp_path: Path, owner: str = "alice", **kw) -> dict:
    return store.insert_job(
        owner=owner, key_id=None, spec={"x": 1}, spec_public={"x": 1}, dataset_ids=[], runs_dir=tmp_path, **kw
    )


def test_keys_are_stored_hashed_and_revocable(store):
    key_id, key = store.create_key("alice")
    _, admin_key = store.create_key("root", admin=True)
    assert key.startswith("tf_") and len(key) > 40
    rows = store.list_keys()
    assert all(key not in str(r.values()) for r in rows)  # never the key itself
    p = store.authenticate(key)
    assert (p.owner, p.key_id, p.is_admin) == ("alice", key_id, False)
    assert store.authenticate(admin_key).is_admin
    assert store.authenticate(key + "x") is None
    assert store.revoke_key(key_id) and not store.revoke_key(key_id)
    assert store.authenticate(key) is None


def test_claims_are_fifo_and_exclusive_across_racing_workers(db_url, store, tmp_path):
    ids = [_job(store, tmp_path)["id"] for _ in range(12)]
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(name):
        own = Store(db_url, create=False)  # each worker its own engine and connections, as separate processes have
        while (job := own.claim_next(name)) is not None:
            with lock:
                claimed.append((job["id"], name))
        own.close()

    threads = [threading.Thread(target=worker, args=(f"host:{i}:w",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c[0] for c in claimed) == sorted(ids)  # each job exactly once
    by_claim = [store.get_job(i) for i in ids]
    assert all(j["status"] == "validating" and j["attempts"] == 1 for j in by_claim)


def test_fifo_order_and_queue_position(store, tmp_path):
    a, b, c = (_job(store, tmp_path) for _ in range(3))
    assert [store.queue_position(store.get_job(j["id"])) for j in (a, b, c)] == [1, 2, 3]
    assert store.claim_next("h:1:w")["id"] == a["id"]
    assert store.queue_position(store.get_job(b["id"])) == 1


def test_events_get_dense_sequences_and_only_the_owner_worker_writes(store, tmp_path):
    job = _job(store, tmp_path)
    store.claim_next("h:1:w")
    for step in range(1, 6):
        store.add_event(
            job["id"],
            {"type": "train", "step": step, "loss": 1.0 / step},
            progress={"step": step, "total_steps": 5},
            worker_id="h:1:w",
        )
    assert store.add_event(job["id"], {"type": "log", "message": "impostor"}, worker_id="other:2:w") is None
    events = store.events_after(job["id"], 0)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["type"] for e in events] == ["status", "status"] + ["train"] * 5
    assert [e["seq"] for e in store.events_after(job["id"], 5)] == [6, 7]
    assert store.get_job(job["id"])["step"] == 5
    assert all("time" in e for e in events)


def test_cancel_queued_at_once_and_active_by_flag(store, tmp_path):
    queued, active = _job(store, tmp_path), _job(store, tmp_path)
    assert store.claim_next("h:1:w")["id"] == queued["id"]  # FIFO: the first one is now active
    queued, active = active, queued
    assert store.request_cancel(queued["id"])["status"] == "cancelled"
    job = store.request_cancel(active["id"])
    assert job["status"] == "validating" and job["cancel_requested"]
    assert store.finish(active["id"], "cancelled", worker_id="h:1:w")
    assert not store.finish(active["id"], "failed", worker_id="h:1:w")  # already terminal: no second outcome


def test_stale_jobs_are_requeued_then_failed_past_max_lost(store, tmp_path):
    settings = Settings(home=tmp_path / "home", db=store.url, stale_after_seconds=1, max_lost=2)
    job = _job(store, tmp_path)
    for attempt in (1, 2):
        assert store.claim_next("elsewhere:123:w")["id"] == job["id"]
        assert recover_stale(store, settings) == []  # heartbeat fresh, worker on another host: leave it
        time.sleep(1.2)
        assert recover_stale(store, settings) == [job["id"]]
        row = store.get_job(job["id"])
        assert (row["status"], row["lost"], row["worker_id"]) == ("queued", attempt, None)
    store.claim_next("elsewhere:123:w")
    time.sleep(1.2)
    recover_stale(store, settings)
    row = store.get_job(job["id"])
    assert row["status"] == "failed" and "lost its worker 3 times" in row["error"]


def test_a_dead_worker_on_this_host_is_noticed_at_once(store, tmp_path):
    import socket

    settings = Settings(home=tmp_path / "home", db=store.url, stale_after_seconds=3600)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    job = _job(store, tmp_path)
    store.claim_next(f"{socket.gethostname()}:{dead.pid}:abc")
    assert recover_stale(store, settings) == [job["id"]]
    assert store.get_job(job["id"])["status"] == "queued"
    events = store.events_after(job["id"], 0)
    assert "resumes from its last checkpoint" in events[-1]["message"]


def test_dataset_in_use_by_unfinished_jobs(store, tmp_path):
    store.insert_dataset(
        dataset_id="ds_0123456789abcdef",
        owner="alice",
        filename="a.jsonl",
        path="/x/a.jsonl",
        size_bytes=3,
        sha256="0" * 64,
        report={"ok": True},
    )
    job = store.insert_job(
        owner="alice", key_id=None, spec={}, spec_public={}, dataset_ids=["ds_0123456789abcdef"], runs_dir=tmp_path
    )
    assert store.jobs_using_dataset("ds_0123456789abcdef") == [job["id"]]
    store.request_cancel(job["id"])
    assert store.jobs_using_dataset("ds_0123456789abcdef") == []
    assert store.get_dataset("ds_0123456789abcdef", "bob") is None
    assert store.get_dataset("ds_0123456789abcdef", "alice")["ok"]
