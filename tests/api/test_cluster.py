"""The service beyond one machine: workers with their own disks sharing one PostgreSQL database and one S3 storage
(a real S3-compatible server, moto's), the way separate hosts would. Each worker gets its own home, so nothing
reaches another worker except through the database and the storage."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import boto3
import pytest
from tfservice import (
    Client,
    Server,
    create_key,
    make_home,
    payload,
    start_worker,
    stop_process,
    wait_for,
)

from tuneforge.jobs.store import Store
from tuneforge.jobs.worker import pid_alive

pytestmark = pytest.mark.slow


def _row(db: str, job_id: str) -> dict:
    store = Store(db, create=False)
    try:
        return store.get_job(job_id)
    finally:
        store.close()


def _objects(s3_url: str, s3_server: dict) -> list[str]:
    bucket, prefix = s3_url.removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return [o["Key"][len(prefix) + 1 :] for page in pages for o in page.get("Contents", [])]


def test_three_workers_on_postgresql_run_six_jobs_each_exactly_once(tmp_path, tiny_model_dir, pg_database):
    home = make_home(tmp_path, tiny_model_dir)
    key = create_key(home, "alice", db=pg_database)
    server = Server(home, workers=0, db=pg_database).start()
    workers = [start_worker(tmp_path / f"host{i}", pg_database, server.env) for i in range(3)]
    try:
        alice = Client(server.url, key)
        body = payload(home, max_steps=4, eval_steps=2, batch_size=4)
        ids = [alice.post("/v1/finetune/llm", json=body).json()["job_id"] for _ in range(6)]
        jobs = [alice.wait_status(j, ("succeeded", "failed"), 400, server) for j in ids]
        assert [j["status"] for j in jobs] == ["succeeded"] * 6, [j["error"] for j in jobs]
        claims = Counter()
        for j in ids:
            events = alice.events(j)
            picked = [e["message"] for e in events if e["type"] == "status" and e["status"] == "validating"]
            assert len(picked) == 1, picked  # claimed once, by one worker
            claims[picked[0].removeprefix("picked up by worker ")] += 1
            # ... and trained once: every step exactly once, no second process on the same job
            assert [e["step"] for e in events if e["type"] == "train"] == [1, 2, 3, 4]
            assert _row(pg_database, j)["attempts"] == 1
        assert sum(claims.values()) == 6 and len(claims) >= 2, claims  # the queue fed several workers
        assert all(alice.job(j)["node"] and alice.job(j)["devices"] == "cpu" for j in ids)
    finally:
        for w in workers:
            stop_process(w)
        server.stop()


def test_a_sigkilled_workers_job_is_taken_over_on_another_disk_and_resumes_from_its_checkpoint_in_s3(
    tmp_path, tiny_model_dir, pg_database, s3_url, s3_server
):
    home = make_home(tmp_path, tiny_model_dir)
    key = create_key(home, "alice", db=pg_database)
    env_storage = {**s3_server, "TUNEFORGE_STORAGE": s3_url}
    server = Server(home, workers=0, db=pg_database, env=env_storage).start()
    alice = Client(server.url, key)
    uploaded = alice.post(
        "/v1/datasets",
        files={"file": ("qa.jsonl", (home / "datasets" / "qa.jsonl").read_bytes())},
        data={"prompt_template": "Question: {question}\nAnswer: {answer}"},
    )
    assert uploaded.status_code == 201, uploaded.text
    dataset_id = uploaded.json()["id"]
    assert f"datasets/{dataset_id}/qa.jsonl" in _objects(s3_url, s3_server)

    first = start_worker(tmp_path / "host-a", pg_database, server.env)
    second = None
    try:
        body = payload(home, data_path=dataset_id, max_steps=40, save_steps=4, eval_steps=20, batch_size=4)
        r = alice.post("/v1/finetune/llm", json=body)
        assert r.status_code == 201, r.text
        job_id = r.json()["job_id"]

        def committed_checkpoint():
            job = alice.job(job_id)
            assert job["status"] not in ("failed", "cancelled", "succeeded"), job
            done = [k for k in _objects(s3_url, s3_server) if k.startswith(f"checkpoints/{job_id}/")]
            return job["progress"]["step"] >= 10 and any(k.endswith("/_COMMITTED") for k in done)

        wait_for(committed_checkpoint, 180, interval=0.2, what="a checkpoint committed to S3")
        row = _row(pg_database, job_id)
        assert row["node"] and row["devices"] == "cpu"
        os.kill(first.pid, signal.SIGKILL)  # the worker, as a host dying: its training process dies with it
        wait_for(lambda: not pid_alive(row["pid"]), 10, what="the training process to die with its worker")
        killed_at = _row(pg_database, job_id)["step"]

        # A worker on another host (its own empty home) takes the job over and resumes from S3's checkpoint.
        second = start_worker(tmp_path / "host-b", pg_database, server.env)
        t0 = time.time()
        done = alice.wait_status(job_id, ("succeeded", "failed"), 240, server)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 2 and done["progress"]["step"] == 40
        events = alice.events(job_id)
    finally:
        stop_process(first)
        if second is not None:
            stop_process(second)

    try:
        logs = [e["message"] for e in events if e["type"] == "log"]
        pulled = [m for m in logs if m.startswith("pulled checkpoint-") and m.endswith("from the shared storage")]
        assert len(pulled) == 1, logs
        resumed = next(m for m in logs if "resumed from" in m)
        step = int(resumed.split(" at step ")[1].split("/")[0])
        assert step > 0 and step % 4 == 0 and step <= killed_at and pulled[0].split()[1] == f"checkpoint-{step}"
        after = [e["step"] for e in events if e["type"] == "train" and e["time"] > t0]
        assert after[0] == step + 1 and after[-1] == 40  # not from step 0
        # The run was trained on host B: its folder is there, the server and host A never had it ...
        assert (tmp_path / "host-b" / "runs" / job_id / "adapter" / "adapter_config.json").is_file()
        assert (tmp_path / "host-b" / "uploads" / dataset_id / "qa.jsonl").is_file()
        assert not (home / "runs" / job_id).exists() and not (tmp_path / "host-a" / "runs" / job_id).exists()
        keys = _objects(s3_url, s3_server)
        assert f"runs/{job_id}/_COMMITTED" in keys and not any(k.startswith(f"checkpoints/{job_id}/") for k in keys)
        # ... and the server serves its adapter from the storage.
        r = alice.get(f"/v1/finetune/llm/{job_id}/adapter")
        assert r.status_code == 200 and r.content[:2] == b"PK"
        assert (home / "runs" / job_id / "report.json").is_file()
    finally:
        server.stop()
