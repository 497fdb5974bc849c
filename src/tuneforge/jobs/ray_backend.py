"""`tuneforge worker --ray ADDRESS`: a worker that runs the queue's jobs on a Ray cluster, several at once.

It is the queue's ordinary worker (same claims, heartbeats, cancels and stale-job recovery, `worker.Worker`) with
one difference: instead of starting a job's training process beside itself, it starts it inside a Ray task on
whichever node has the job's resources free. The task starts exactly what a local worker starts
(`worker.start_job_process`: `python -m tuneforge.jobs.run_job`), so a job trains, records its events and finishes
the same way wherever it runs; the node reads its inputs from and writes its checkpoints to the shared storage
(TUNEFORGE_STORAGE) and reports through the shared database (TUNEFORGE_DB).

Resources: each job gets a placement group on one node (STRICT_PACK) holding, per process of the job,
`cpus_per_job` CPUs, `gpus_per_job` GPUs and, for CPU training, the memory the estimator says a process peaks at
(`models.memory`), so Ray never puts two jobs on a node that cannot hold both. A multi-process job
(`training_config.distributed`, nproc_per_node N) is `JobResources.processes = N`: its task holds N times that,
and `run_job` launches its N processes there as `tuneforge train --nproc N` does.

Failures: Ray does not retry a task (max_retries=0): the queue does. A task whose node or Ray worker died puts its
job back in the queue (counted as lost, like a SIGKILLed worker), and the next attempt, on any node, resumes from
the last checkpoint in the shared storage. A cancel kills the task's process (`ray.cancel(force=True)`), and the
training process dies with it (parent-death signal), within a poll interval or two. If this worker itself dies,
Ray ends its tasks with it, and the jobs' heartbeats go stale as with any worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TuneforgeError
from ..settings import Settings
from ..spec import JobSpec, parse_spec
from .store import Row, Store
from .worker import Worker, log_tail, recover_stale, start_job_process

RAY_INSTALL = "pip install 'tuneforge[ray]' (the same Ray version on every node of the cluster)"


def connect(address: str) -> Any:
    """`ray` connected to the cluster at `address` (`auto`, `host:6379`, `ray://host:10001`); a TuneforgeError
    naming the flag when Ray is missing or nothing answers there."""
    try:
        import ray
    except ImportError:
        raise TuneforgeError(
            f"worker --ray: Ray is not installed in this Python ({sys.executable}); {RAY_INSTALL}",
            field="ray",
            value=address,
        ) from None
    if ray.is_initialized():
        return ray
    unreachable = _unreachable(address)
    if unreachable:
        raise TuneforgeError(
            f"worker --ray {address}: no Ray cluster answers there ({unreachable}); start one with `ray start "
            "--head` on the head node and give its address (host:6379, ray://host:10001, or auto on a cluster node)",
            field="ray",
            value=address,
        )
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TuneforgeError(
            f"worker --ray {address}: no Ray cluster answers there ({first}); start one with `ray start --head` "
            "on the head node and give its address (host:6379, ray://host:10001, or auto on a cluster node)",
            field="ray",
            value=address,
        ) from None
    return ray


def _unreachable(address: str, timeout: float = 5.0) -> str | None:
    """Why nothing listens at a `host:port` or `ray://host:port` address (None: something does, or `auto`). Ray
    itself retries an unreachable address for minutes before it gives up."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


@dataclass(frozen=True)
class JobResources:
    """What one job asks the cluster for: `processes` bundles of (cpus, gpus, memory bytes) on one node."""

    cpus: float
    gpus: float
    memory: int | None
    processes: int = 1

    def bundle(self) -> dict[str, float]:
        b: dict[str, float] = {"CPU": self.cpus}
        if self.gpus:
            b["GPU"] = self.gpus
        if self.memory:
            b["memory"] = float(self.memory)
        return b

    def total(self) -> dict[str, float]:
        """The whole job as one bundle: its Ray task holds it all, so Ray makes all of its GPUs visible to the task
        (CUDA_VISIBLE_DEVICES), where the launcher's processes take one each; a task can use only one bundle."""
        return {k: v * self.processes for k, v in self.bundle().items()}

    def describe(self) -> str:
        parts = [f"{self.cpus:g} CPU"] + ([f"{self.gpus:g} GPU"] if self.gpus else [])
        if self.memory:
            parts.append(f"{self.memory / 2**30:.2f} GiB memory")
        each = ", ".join(parts)
        return each if self.processes == 1 else f"{self.processes} x ({each})"


def job_resources(spec: JobSpec, *, cpus: float, gpus: float) -> JobResources:
    """The job's request. Memory is asked for CPU training only (Ray's `memory` is host RAM; a GPU job's peak is in
    the GPU's memory, which the submission check already compared with the device)."""
    from ..models.fit import model_shape
    from ..models.loader import _hf_cached_snapshot
    from ..models.memory import TrainingSetup, estimate_training_memory

    memory = None
    if not gpus:
        model = spec.pretrainedmodel_config.model_path
        local = Path(model).expanduser()
        shape = model_shape(model, local if local.is_dir() else _hf_cached_snapshot(model))
        if shape is not None:
            # Per process: each of the job's bundles holds one process of a multi-process job.
            memory = estimate_training_memory(shape, TrainingSetup.from_spec(spec, device="cpu")).per_process
    d = spec.training_config.distributed
    # A multi-process job (ddp/fsdp) asks for one bundle per process. nproc_per_node left to the default (one per
    # visible GPU) counts as one: the cluster's nodes may differ, and the worker's --ray-gpus-per-job sizes a job.
    processes = (d.nproc_per_node or 1) if d.strategy != "none" else 1
    return JobResources(cpus=cpus, gpus=gpus, memory=memory, processes=processes)


def fits_somewhere(need: JobResources, nodes: list[dict[str, float]]) -> bool:
    """Some node's total resources hold all of the job's bundles (STRICT_PACK puts them on one node)."""
    return any(all(node.get(k, 0.0) >= v * need.processes for k, v in need.bundle().items()) for node in nodes if node)


def run_on_node(settings: Settings, job_id: str, worker_id: str) -> tuple[int, str, str]:
    """The body of a job's Ray task, on the node Ray chose: start the training process as a local worker does and
    wait for it. Returns (exit code, last log lines, node). Ray sets CUDA_VISIBLE_DEVICES to the task's GPUs."""
    settings.ensure_dirs()
    node = socket.gethostname()
    log_path = settings.logs_dir / f"{job_id}.log"
    cwd = tempfile.mkdtemp(prefix=f"{job_id}-", dir=settings.tmp_dir)
    store = Store(settings.database_url, create=False)
    try:
        proc = start_job_process(settings, job_id, worker_id, cwd=cwd, log_path=log_path)
        store.set_pid(job_id, worker_id, proc.pid)  # also tells the driver that the task has started
        rc = proc.wait()
    finally:
        store.close()
        shutil.rmtree(cwd, ignore_errors=True)
    return rc, log_tail(log_path), node


@dataclass
class _Task:
    ref: Any  # the task's ObjectRef
    group: Any  # its placement group
    started: bool = False  # its training process runs (the task recorded its pid): no longer waiting for resources
    cancelling: str | None = None  # why it is being stopped: "cancel", "lost", "shutdown"


class RayWorker(Worker):
    """Claims jobs while the cluster has room and runs each in a Ray task (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        address: str,
        *,
        cpus_per_job: float = 1.0,
        gpus_per_job: float | None = None,
        store: Store | None = None,
    ) -> None:
        self.ray = connect(address)  # first: a wrong address or a missing Ray stops it before it claims anything
        super().__init__(settings, store=store)
        self.address = address
        self.cpus_per_job = cpus_per_job
        # Default: one GPU per job on a cluster that has GPUs, CPU training otherwise.
        self.gpus_per_job = (
            gpus_per_job if gpus_per_job is not None else (1.0 if self.ray.cluster_resources().get("GPU") else 0.0)
        )
        self.tasks: dict[str, _Task] = {}
        self.remote = self.ray.remote(run_on_node)

    # --- the loop ------------------------------------------------------------------------------------------------
    def run(self, *, max_jobs: int | None = None) -> int:
        started = 0
        nodes = len([n for n in self.ray.nodes() if n.get("Alive")])
        self.say(
            f"started on the Ray cluster at {self.address} ({nodes} node(s), {self.ray.cluster_resources()}); "
            f"{self.cpus_per_job:g} CPU and {self.gpus_per_job:g} GPU per job"
        )
        last_beat = time.monotonic()
        while not self.stopping.is_set():
            for job_id in self._finished():
                self._reap(job_id)
            beat = time.monotonic() - last_beat >= self.settings.heartbeat_seconds
            if beat:
                last_beat = time.monotonic()
            self._watch_tasks(beat=beat)
            for job_id in recover_stale(self.store, self.settings, me=self.worker_id):
                self.say(f"job {job_id} lost its worker; requeued or failed")
            more = max_jobs is None or started < max_jobs
            if not more and not self.tasks:
                break
            if more and self._room():
                job = self.store.claim_next(self.worker_id)
                if job is not None:
                    self._submit(job)
                    started += 1
                    continue
            self.stopping.wait(self.settings.poll_seconds)
        self._shutdown()
        self.say("stopped")
        return 0

    def _room(self) -> bool:
        """Claim another job only when none of ours waits for its resources and a default job would fit now."""
        if any(not t.started for t in self.tasks.values()):
            return False
        free = self.ray.available_resources()
        need = JobResources(cpus=self.cpus_per_job, gpus=self.gpus_per_job, memory=None)
        return all(free.get(k, 0.0) >= v for k, v in need.bundle().items())

    def _submit(self, job: Row) -> None:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        job_id = job["id"]
        try:
            spec = parse_spec(json.loads(job["spec"]))
            need = job_resources(spec, cpus=self.cpus_per_job, gpus=self.gpus_per_job)
        except TuneforgeError as exc:
            self.store.finish(job_id, "failed", worker_id=self.worker_id, error=str(exc), message="failed")
            return
        totals = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        if not fits_somewhere(need, totals):
            self.store.finish(
                job_id,
                "failed",
                worker_id=self.worker_id,
                message="failed",
                error=f"the job needs {need.describe()} on one node and no node of the Ray cluster at {self.address} "
                "has that much (try use_quantization, a smaller batch_size or cutoff_len, or add a larger node)",
            )
            return
        total = need.total()
        group = placement_group([total], strategy="STRICT_PACK")
        ref = self.remote.options(
            num_cpus=total["CPU"],
            num_gpus=total.get("GPU", 0.0),
            memory=total.get("memory"),
            max_retries=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_capture_child_tasks=True
            ),
        ).remote(self.settings, job_id, self.worker_id)
        self.tasks[job_id] = _Task(ref=ref, group=group)
        self.store.add_event(
            job_id,
            {"type": "log", "message": f"placed on the Ray cluster at {self.address}: {need.describe()}"},
            worker_id=self.worker_id,
        )
        self.say(f"job {job_id}: submitted to Ray (attempt {job['attempts']}, {need.describe()})")

    def _finished(self) -> list[str]:
        if not self.tasks:
            return []
        refs = {t.ref: job_id for job_id, t in self.tasks.items()}
        done, _ = self.ray.wait(list(refs), num_returns=len(refs), timeout=0)
        return [refs[r] for r in done]

    def _reap(self, job_id: str) -> None:
        task = self.tasks.pop(job_id)
        self.ray.util.remove_placement_group(task.group)
        try:
            rc, tail, node = self.ray.get(task.ref)
        except self.ray.exceptions.RayError as exc:
            if task.cancelling:  # stopped on purpose (TaskCancelledError, or the killed worker's error)
                outcome = self.cancelled(job_id) if task.cancelling == "cancel" else f"stopped ({task.cancelling})"
                self.say(f"job {job_id}: {outcome}")
                return
            # The node, or the Ray worker process holding the training process, died: like a worker lost on one
            # machine, the job goes back to the queue and resumes from its last checkpoint elsewhere.
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            requeued = self.store.requeue(
                job_id,
                self.worker_id,
                lost=True,
                message=f"its Ray task ended without a result ({type(exc).__name__}: {reason[:300]}); queued "
                "again, it resumes from its last checkpoint",
            )
            self.say(f"job {job_id}: Ray task failed ({type(exc).__name__}); {'requeued' if requeued else 'gone'}")
            return
        # The job's status as its process recorded it; failed with the exit and log lines when it recorded none.
        self.say(f"job {job_id}: {self.failed_exit(job_id, rc, tail)} (on {node})")

    def _watch_tasks(self, *, beat: bool) -> None:
        for job_id, task in list(self.tasks.items()):
            if task.cancelling:
                continue
            state, job = self.poll_job(job_id, beat=beat)
            if job is not None and job["pid"]:
                task.started = True
            if state in ("cancel", "lost"):
                task.cancelling = state
                # force: kill the Ray worker process; the training process dies with it (parent-death signal)
                self.ray.cancel(task.ref, force=True)

    def _shutdown(self) -> None:
        """Stop our tasks and put their jobs back in the queue: another worker resumes them."""
        for job_id, task in self.tasks.items():
            task.cancelling = "shutdown"
            self.ray.cancel(task.ref, force=True)
            self.store.requeue(
                job_id,
                self.worker_id,
                lost=False,
                message="the Ray worker was shut down; queued again, it resumes from its last checkpoint",
            )
        deadline = time.monotonic() + max(10.0, self.settings.cancel_grace_seconds)
        for task in self.tasks.values():
            with contextlib.suppress(self.ray.exceptions.RayError):  # shutting down: it is cancelled either way
                self.ray.wait([task.ref], timeout=max(0.0, deadline - time.monotonic()))
            self.ray.util.remove_placement_group(task.group)
        self.tasks.clear()


def run_ray_worker(
    settings: Settings,
    address: str,
    *,
    cpus_per_job: float = 1.0,
    gpus_per_job: float | None = None,
    max_jobs: int | None = None,
) -> int:
    if cpus_per_job <= 0 or not math.isfinite(cpus_per_job):
        raise TuneforgeError(
            f"worker --ray-cpus-per-job: {cpus_per_job!r} is not allowed; give a positive number of CPUs",
            field="ray_cpus_per_job",
            value=cpus_per_job,
        )
    if gpus_per_job is not None and (gpus_per_job < 0 or not math.isfinite(gpus_per_job)):
        raise TuneforgeError(
            f"worker --ray-gpus-per-job: {gpus_per_job!r} is not allowed; give 0 (CPU training) or more",
            field="ray_gpus_per_job",
            value=gpus_per_job,
        )
    worker = RayWorker(settings, address, cpus_per_job=cpus_per_job, gpus_per_job=gpus_per_job)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    return worker.run(max_jobs=max_jobs)
