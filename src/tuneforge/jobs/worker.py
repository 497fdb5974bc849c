"""A worker: takes queued jobs one at a time (FIFO) and runs each in its own process (`run_job`).

While a job runs, the worker marks it alive every `heartbeat_seconds`, stops it within a poll interval when it
is cancelled, and records a failure when its process dies without saying why (segfault, out-of-memory kill).
When a worker itself dies (SIGKILL, power loss), its job's heartbeat goes stale and any worker requeues it —
immediately, if it sees the dead worker was on its own machine — and the next attempt resumes from the job's
last checkpoint. A worker that is shut down cleanly (SIGTERM/SIGINT) requeues its job the same way.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..runtime import die_with_parent
from ..settings import Settings
from ..storage import open_storage
from ..train.plan import work_dir_for
from .store import ACTIVE, TERMINAL, Row, Store
from .sync import delete_job_copies, local_run_dir


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (dead, not yet reaped: common in containers without an init) is dead for us
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _worker_host_pid(worker_id: str | None) -> tuple[str, int | None]:
    parts = (worker_id or "").split(":")
    if len(parts) >= 3 and parts[-2].isdigit():
        return ":".join(parts[:-2]), int(parts[-2])
    return "", None


def recover_stale(store: Store, settings: Settings, *, me: str | None = None) -> list[str]:
    """Requeue (or, past `max_lost`, fail) active jobs whose worker is gone. Returns the job ids touched."""
    host = socket.gethostname()
    now = time.time()
    touched = []
    for job in store.active_jobs():
        wid = job["worker_id"]
        if wid == me:
            continue
        w_host, w_pid = _worker_host_pid(wid)
        dead_here = w_host == host and w_pid is not None and not pid_alive(w_pid)
        stale = job["heartbeat_at"] is None or now - job["heartbeat_at"] > settings.stale_after_seconds
        if not (dead_here or stale):
            continue
        if job["lost"] + 1 > settings.max_lost:
            done = store.finish(
                job["id"],
                "failed",
                worker_id=wid,
                message="failed",
                error=f"the job lost its worker {job['lost'] + 1} times (last: {wid}); giving up (TUNEFORGE_MAX_LOST)",
            )
        else:
            done = store.requeue(
                job["id"],
                wid,
                lost=True,
                message=f"worker {wid} stopped while running the job; queued again, it resumes "
                "from its last checkpoint",
            )
        if done:
            touched.append(job["id"])
    return touched


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if -returncode == signal.SIGKILL:
            return (
                "the training process was killed (SIGKILL), most often by the kernel's out-of-memory killer: "
                "try use_quantization, a smaller batch_size or cutoff_len"
            )
        return f"the training process crashed ({name})"
    return f"the training process exited with code {returncode} without recording a result"


def log_tail(path: Path, n: int = 5) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            lines = [x for x in fh.read().decode("utf-8", "replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def _child_env(settings: Settings, device: str | None) -> dict[str, str]:
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    # The job runs in an empty directory: make sure tuneforge (and any relative PYTHONPATH entry) still imports.
    package_root = str(Path(__file__).resolve().parents[2])
    entries = [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([package_root, *entries]))
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    return env


def start_job_process(
    settings: Settings, job_id: str, worker_id: str, *, cwd: str, log_path: Path, device: str | None = None
) -> subprocess.Popen[bytes]:
    """The job's training process (`run_job`), in its own session, dying with the calling process (its parent)."""
    cmd = [
        sys.executable,
        "-m",
        "tuneforge.jobs.run_job",
        job_id,
        "--worker-id",
        worker_id,
        "--parent-pid",
        str(os.getpid()),
    ]
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            env=_child_env(settings, device),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


class Worker:
    def __init__(self, settings: Settings, *, device: str | None = None, store: Store | None = None):
        settings.ensure_dirs()
        self.settings = settings
        self.device = device
        self.store = store or Store(settings.database_url)
        self.storage = open_storage(settings.storage)  # checked here: a bad URL stops the worker before any claim
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.stopping = threading.Event()

    def say(self, message: str) -> None:
        print(f"tuneforge worker {self.worker_id}: {message}", file=sys.stderr, flush=True)

    def stop(self, *_args: object) -> None:  # also a signal handler
        self.stopping.set()

    def run(self, *, max_jobs: int | None = None) -> int:
        done = 0
        self.say(f"started (device {self.device if self.device is not None else 'default'})")
        while not self.stopping.is_set():
            for job_id in recover_stale(self.store, self.settings, me=self.worker_id):
                self.say(f"job {job_id} lost its worker; requeued or failed")
            job = self.store.claim_next(self.worker_id)
            if job is None:
                self.stopping.wait(self.settings.poll_seconds)
                continue
            self.run_one(job)
            done += 1
            if max_jobs is not None and done >= max_jobs:
                break
        self.say("stopped")
        return 0

    def run_one(self, job: Row) -> str:
        s, job_id, wid = self.settings, job["id"], self.worker_id
        log_path = s.logs_dir / f"{job_id}.log"
        cwd = tempfile.mkdtemp(prefix=f"{job_id}-", dir=s.tmp_dir)
        self.say(f"job {job_id}: starting (attempt {job['attempts']})")
        try:
            proc = start_job_process(s, job_id, wid, cwd=cwd, log_path=log_path, device=self.device)
            self.store.set_pid(job_id, wid, proc.pid)
            outcome = self._watch(job_id, proc, log_path)
        finally:
            shutil.rmtree(cwd, ignore_errors=True)
        self.say(f"job {job_id}: {outcome}")
        return outcome

    def _watch(self, job_id: str, proc: subprocess.Popen[bytes], log_path: Path) -> str:
        s, wid = self.settings, self.worker_id
        last_beat = time.monotonic()
        while True:
            try:
                rc = proc.wait(timeout=s.poll_seconds)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.stopping.is_set():
                self._terminate(proc)
                self.store.requeue(
                    job_id,
                    wid,
                    lost=False,
                    message="the worker was shut down; queued again, it resumes from its last checkpoint",
                )
                return "requeued (worker shutting down)"
            beat = time.monotonic() - last_beat >= s.heartbeat_seconds
            if beat:
                last_beat = time.monotonic()
            state, job = self.poll_job(job_id, beat=beat)
            if state == "finished":
                try:  # the process recorded its result and is exiting: let it
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self._terminate(proc)
                return str(job["status"]) if job else "gone"
            if state == "lost":
                self._terminate(proc)  # declared dead and taken over by another worker
                return "no longer ours; stopped"
            if state == "cancel":
                self._terminate(proc)
                return self.cancelled(job_id)
        return self.failed_exit(job_id, rc, log_tail(log_path))

    def poll_job(self, job_id: str, *, beat: bool) -> tuple[str, Row | None]:
        """What a job this worker runs needs now: `finished` (its process recorded the result), `lost` (another
        worker owns it now), `cancel` (requested) or `running`. `beat`: mark it alive too."""
        wid = self.worker_id
        job = self.store.heartbeat(job_id, wid) if beat else None
        if job is None:  # not beating, or the beat found it no longer active and ours: see what it is now
            job = self.store.get_job(job_id)
        if job is not None and job["worker_id"] == wid and job["status"] in TERMINAL:
            return "finished", job
        if job is None or job["worker_id"] != wid or job["status"] not in ACTIVE:
            return "lost", job
        if job["cancel_requested"]:
            return "cancel", job
        return "running", job

    def cancelled(self, job_id: str) -> str:
        """Record the cancel of a job whose process has been stopped, and drop its checkpoints everywhere."""
        job = self.store.get_job(job_id)
        if job is not None:
            shutil.rmtree(work_dir_for(local_run_dir(self.settings, job)), ignore_errors=True)
        delete_job_copies(self.storage, job_id)
        self.store.finish(job_id, "cancelled", worker_id=self.worker_id, message="cancelled")
        return "cancelled"

    def failed_exit(self, job_id: str, returncode: int, tail: str) -> str:
        """Record a job whose process ended without recording a result (crash, kill); what happened, in words."""
        job = self.store.get_job(job_id)
        if job is not None and job["status"] in ACTIVE and job["worker_id"] == self.worker_id:
            self.store.finish(
                job_id,
                "failed",
                worker_id=self.worker_id,
                message="failed",
                error=describe_exit(returncode) + (f"; last log lines: {tail}" if tail else ""),
            )
            return f"failed (exit {returncode})"
        return str(job["status"]) if job else "gone"

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        for sig, wait in ((signal.SIGTERM, self.settings.cancel_grace_seconds), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def run_worker(
    settings: Settings, *, device: str | None = None, parent_pid: int | None = None, max_jobs: int | None = None
) -> int:
    if parent_pid is not None:
        die_with_parent(parent_pid)  # started by `tuneforge server`: never outlive it
    worker = Worker(settings, device=device)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    return worker.run(max_jobs=max_jobs)
