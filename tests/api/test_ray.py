"""`tuneforge worker --ray`: the service's jobs on a local Ray cluster of two 1-CPU nodes (ray.cluster_utils), two at
once through the REST API; cancel; the errors for a missing cluster."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zipfile

import pytest
from tfservice import FAST_ENV, Client, Server, create_key, make_home, payload, start_worker, stop_process, wait_for

from tuneforge.jobs.store import Store
from tuneforge.jobs.worker import pid_alive

ray_cluster_utils = pytest.importorskip("ray.cluster_utils", reason="pip install 'tuneforge[ray]' (in the dev extra)")


def _start_cluster(monkeypatch, *node_cpus: int):
    """A local Ray cluster: a head node with node_cpus[0] CPUs, then one node per further entry."""
    # The nodes' processes inherit this environment (the training processes run offline, quickly polled).
    for k, v in FAST_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # Ray gives a starting node 30 s to register, fixed in its code: on a loaded machine that can fall short, and a
    # second try usually makes it (the failure is the machine's, not what these tests check).
    for attempt in range(3):
        cluster = ray_cluster_utils.Cluster()
        try:
            cluster.add_node(num_cpus=node_cpus[0], include_dashboard=False)  # the first node is the head
            for cpus in node_cpus[1:]:
                cluster.add_node(num_cpus=cpus)
            cluster.wait_for_nodes()
            return cluster
        except Exception:
            cluster.shutdown()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def two_node_cluster(monkeypatch):
    cluster = _start_cluster(monkeypatch, 1, 1)
    yield cluster
    cluster.shutdown()


@pytest.fixture
def head_and_two_2cpu_nodes(monkeypatch):
    """A head that runs no jobs (0 CPUs: removing a node never takes the cluster's head) and two 2-CPU nodes, each
    able to hold a 2-process job."""
    cluster = _start_cluster(monkeypatch, 0, 2, 2)
    yield cluster
    cluster.shutdown()


def _pid(db: str, job_id: str) -> int | None:
    store = Store(db, create=False)
    try:
        return store.get_job(job_id)["pid"]
    finally:
        store.close()


@pytest.mark.slow
def test_two_jobs_run_at_once_on_two_ray_nodes_and_a_cancel_stops_one_within_seconds(
    tmp_path, tiny_model_dir, two_node_cluster
):
    home = make_home(tmp_path, tiny_model_dir)
    db = f"sqlite:///{home / 'tuneforge.db'}"
    key = create_key(home, "alice")
    server = Server(home, workers=0).start()
    worker = start_worker(home, db, server.env, "--ray", two_node_cluster.address, log=tmp_path / "ray-worker.log")
    try:
        alice = Client(server.url, key)
        long_job = payload(home, max_steps=2000, save_steps=1000, eval_steps=1000, batch_size=2)
        short_job = payload(home, max_steps=8, eval_steps=4, batch_size=4)
        doomed = alice.post("/v1/finetune/llm", json=long_job).json()["job_id"]
        done = alice.post("/v1/finetune/llm", json=short_job).json()["job_id"]

        def both_training():
            jobs = [alice.job(j) for j in (doomed, done)]
            assert all(j["status"] not in ("failed", "cancelled") for j in jobs), jobs
            return all(j["status"] == "running" and j["progress"]["step"] >= 1 for j in jobs)

        try:
            wait_for(both_training, 300, interval=0.2, what="both jobs training at once")
        except AssertionError:
            raise AssertionError((tmp_path / "ray-worker.log").read_text()[-3000:]) from None
        for j in (doomed, done):
            events = alice.events(j)
            assert any("placed on the Ray cluster" in e.get("message", "") for e in events)
            assert alice.job(j)["devices"] == "cpu" and alice.job(j)["node"]

        pid = _pid(db, doomed)
        assert pid and pid_alive(pid)
        t0 = time.time()
        assert alice.post(f"/v1/finetune/llm/{doomed}/cancel").status_code == 200
        assert alice.wait_status(doomed, ("cancelled",), 30, server)["status"] == "cancelled"
        assert time.time() - t0 < 20, "cancel took too long"
        wait_for(lambda: not pid_alive(pid), 15, what="the cancelled job's training process to exit")

        finished = alice.wait_status(done, ("succeeded", "failed"), 300, server)
        assert finished["status"] == "succeeded", finished
        assert [e["step"] for e in alice.events(done) if e["type"] == "train"] == list(range(1, 9))
        assert alice.get(f"/v1/finetune/llm/{done}/adapter").status_code == 200
    finally:
        stop_process(worker)
        server.stop()
    assert "stopped" in (tmp_path / "ray-worker.log").read_text()


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


@pytest.mark.slow
def test_a_dead_ray_worker_puts_its_job_back_and_the_next_attempt_resumes_from_the_checkpoint(
    tmp_path, tiny_model_dir, two_node_cluster
):
    home = make_home(tmp_path, tiny_model_dir)
    db = f"sqlite:///{home / 'tuneforge.db'}"
    key = create_key(home, "alice")
    server = Server(home, workers=0).start()
    worker = start_worker(home, db, server.env, "--ray", two_node_cluster.address, log=tmp_path / "ray-worker.log")
    try:
        alice = Client(server.url, key)
        job_id = alice.post(
            "/v1/finetune/llm", json=payload(home, max_steps=30, save_steps=4, eval_steps=15, batch_size=4)
        ).json()["job_id"]

        def past_a_checkpoint():
            job = alice.job(job_id)
            assert job["status"] not in ("failed", "cancelled", "succeeded"), job
            return job["status"] == "running" and job["progress"]["step"] >= 6

        wait_for(past_a_checkpoint, 300, interval=0.2, what="the job past its first checkpoint")
        pid = _pid(db, job_id)
        ray_process = _parent(pid)  # the Ray worker process running the job's task, on its node
        os.kill(ray_process, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 15, what="the training process to die with its Ray worker")
        done = alice.wait_status(job_id, ("succeeded", "failed"), 300, server)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 2 and done["progress"]["step"] == 30
        events = alice.events(job_id)
    finally:
        stop_process(worker)
        server.stop()
    requeued = [e for e in events if e["type"] == "status" and e["status"] == "queued"][1:]
    assert len(requeued) == 1 and "its Ray task ended without a result" in requeued[0]["message"]
    resumed = next(e["message"] for e in events if e["type"] == "log" and "resumed from" in e["message"])
    step = int(resumed.split(" at step ")[1].split("/")[0])
    assert step >= 4 and step % 4 == 0
    later = [e["step"] for e in events[events.index(requeued[0]) :] if e["type"] == "train"]
    assert later[0] == step + 1 and later[-1] == 30


def _ray_node_of(cluster, pid: int):
    """The cluster node whose raylet started the Ray worker process that is `pid`'s parent (a job's run_job)."""
    from ray._private import ray_constants

    raylet = _parent(_parent(pid))
    for node in cluster.worker_nodes:
        if any(p.process.pid == raylet for p in node.all_processes[ray_constants.PROCESS_TYPE_RAYLET]):
            return node
    raise AssertionError(f"no worker node of the cluster runs raylet {raylet} (the job's pid {pid})")


@pytest.mark.slow
def test_a_two_process_ddp_job_runs_on_ray_and_a_removed_node_hands_it_to_another_that_resumes_it(
    tmp_path, tiny_model_dir, head_and_two_2cpu_nodes
):
    """A multi-process job (DDP, 2 processes, gloo) through the service on `worker --ray`: its task holds 2 CPUs on
    one node; that node is removed from the cluster mid-run (its raylet and Ray workers killed, as a machine lost),
    the job goes back to the queue, and the other node resumes it from its last checkpoint to an adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cluster = head_and_two_2cpu_nodes
    home = make_home(tmp_path, tiny_model_dir)
    db = f"sqlite:///{home / 'tuneforge.db'}"
    key = create_key(home, "alice")
    server = Server(home, workers=0).start()
    worker = start_worker(home, db, server.env, "--ray", cluster.address, log=tmp_path / "ray-worker.log")
    try:
        alice = Client(server.url, key)
        ddp = {"strategy": "ddp", "nproc_per_node": 2}
        body = payload(home, max_steps=20, save_steps=4, eval_steps=10, batch_size=2, distributed=ddp)
        job_id = alice.post("/v1/finetune/llm", json=body).json()["job_id"]

        def past_a_checkpoint():
            job = alice.job(job_id)
            assert job["status"] not in ("failed", "cancelled", "succeeded"), job
            return job["status"] == "running" and job["progress"]["step"] >= 5

        try:
            wait_for(past_a_checkpoint, 400, interval=0.2, what="the 2-process job past its first checkpoint")
        except AssertionError:
            raise AssertionError((tmp_path / "ray-worker.log").read_text()[-3000:]) from None
        placed = [e["message"] for e in alice.events(job_id) if "placed on the Ray cluster" in e.get("message", "")]
        assert len(placed) == 1 and ": 2 x (1 CPU" in placed[0], placed  # one bundle per process
        pid = _pid(db, job_id)
        assert pid and pid_alive(pid)
        cluster.remove_node(_ray_node_of(cluster, pid))
        wait_for(lambda: not pid_alive(pid), 30, what="the job's processes to die with their node")

        done = alice.wait_status(job_id, ("succeeded", "failed"), 400, server)
        assert done["status"] == "succeeded", (done, (tmp_path / "ray-worker.log").read_text()[-3000:])
        assert done["attempts"] == 2 and done["progress"]["step"] == 20
        events = alice.events(job_id)
        r = alice.get(f"/v1/finetune/llm/{job_id}/adapter", timeout=60)
    finally:
        stop_process(worker)
        server.stop()
    requeued = [e for e in events if e["type"] == "status" and e["status"] == "queued"][1:]
    assert len(requeued) == 1 and "its Ray task ended without a result" in requeued[0]["message"]
    resumed = next(e["message"] for e in events if e["type"] == "log" and "resuming from" in e["message"])
    step = int(resumed.split(" at step ")[1].split(" ")[0])
    assert step >= 4 and step % 4 == 0 and resumed.endswith("(2 processes)")
    later = [e["step"] for e in events[events.index(requeued[0]) :] if e["type"] == "train"]
    assert later[0] == step + 1 and later[-1] == 20

    assert r.status_code == 200
    adapter = tmp_path / "downloaded-adapter"
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(adapter)
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)


def test_worker_ray_without_a_cluster_there_is_one_clear_error(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "worker", "--home", str(tmp_path), "--ray", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "tuneforge: error: worker --ray 127.0.0.1:1: no Ray cluster answers there (Connection refused); start one "
        "with `ray start --head` on the head node and give its address (host:6379, ray://host:10001, or auto on a "
        "cluster node)"
    ]
    assert not (tmp_path / "tuneforge.db").exists()  # nothing was opened, nothing queued or claimed
