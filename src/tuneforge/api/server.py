"""`tuneforge server`: the API (uvicorn) in this process, its workers in child processes.

Workers are separate processes so that the API keeps answering while jobs train; they die with the server
(parent-death signal), so a SIGKILLed server leaves no orphan behind, and on restart the interrupted jobs are
requeued and resume from their last checkpoints.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from ..jobs.store import Store
from ..settings import Settings, redact_url


def worker_command(parent_pid: int, device: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "tuneforge.cli", "worker", "--parent-pid", str(parent_pid)]
    return cmd + (["--device", device] if device is not None else [])


def start_workers(settings: Settings) -> list[subprocess.Popen]:
    devices: list[str | None]
    if settings.worker_devices.strip():
        devices = [d.strip() for d in settings.worker_devices.split(",") if d.strip()]
    else:
        devices = [None] * settings.workers
    env = {**os.environ, **settings.to_env()}
    # Started from the main thread, which lives as long as the server: the parent-death signal is tied to the
    # thread that forked, not to the process.
    return [subprocess.Popen(worker_command(os.getpid(), d), env=env, stdin=subprocess.DEVNULL) for d in devices]


def stop_workers(procs: list[subprocess.Popen], timeout: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # each requeues its running job
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_server(settings: Settings) -> int:
    import uvicorn

    from .app import create_app

    settings.ensure_dirs()
    store = Store(settings.database_url)
    app = create_app(settings, store=store)
    has_keys = bool(store.list_keys())
    workers = start_workers(settings)
    print(f"tuneforge server: http://{settings.host}:{settings.port} (API docs at /docs); home {settings.home}; "
          f"database {redact_url(settings.database_url)}; {len(workers)} worker(s)", file=sys.stderr, flush=True)
    if not has_keys:
        print(f"tuneforge server: no API keys yet: create one with `tuneforge keys create NAME --home {settings.home}`",
              file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=5)
    finally:
        stop_workers(workers, timeout=settings.cancel_grace_seconds + 15)
    return 0
