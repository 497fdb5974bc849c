"""`tuneforge server`: the API (uvicorn) in this process, its workers in child processes.

Workers are separate processes so that the API keeps answering while jobs train. They die with the server
(parent-death signal), so a SIGKILLed server leaves no orphan behind, and on restart the interrupted jobs are
requeued and resume from their last checkpoints. A worker that dies while the server runs is started again, and
the new one requeues the dead one's job the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ..jobs.store import Store
from ..settings import Settings, redact_url
from .app import create_app

if TYPE_CHECKING:
    from fastapi import FastAPI

RESTART_BACKOFF_SECONDS = 5.0


def worker_command(parent_pid: int, device: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "tuneforge.cli", "worker", "--parent-pid", str(parent_pid)]
    return cmd + (["--device", device] if device is not None else [])


class WorkerPool:
    """The server's workers: one slot per device (or `workers` unpinned slots), each kept running."""

    def __init__(self, settings: Settings):
        if settings.worker_devices.strip():
            self.devices: list[str | None] = [d.strip() for d in settings.worker_devices.split(",") if d.strip()]
        else:
            self.devices = [None] * settings.workers
        self.env = {**os.environ, **settings.to_env()}
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * len(self.devices)
        self.started_at = [0.0] * len(self.devices)
        self.stopping = False

    def _spawn(self, slot: int) -> None:
        # Must run on the main thread: the parent-death signal fires when the *thread* that forked exits, and
        # the main thread (which also runs the event loop) lives as long as the server.
        self.procs[slot] = subprocess.Popen(
            worker_command(os.getpid(), self.devices[slot]), env=self.env, stdin=subprocess.DEVNULL
        )
        self.started_at[slot] = time.monotonic()

    def start(self) -> None:
        for slot in range(len(self.devices)):
            self._spawn(slot)

    def check(self) -> None:
        """Restart workers that died (SIGKILL, crash), at most once per RESTART_BACKOFF_SECONDS each."""
        for slot, proc in enumerate(self.procs):
            if self.stopping or proc is None or proc.poll() is None:
                continue
            if time.monotonic() - self.started_at[slot] < RESTART_BACKOFF_SECONDS:
                continue
            print(
                f"tuneforge server: worker {proc.pid} exited ({proc.returncode}); starting another",
                file=sys.stderr,
                flush=True,
            )
            self._spawn(slot)

    async def watch(self) -> None:
        while not self.stopping:
            self.check()
            await asyncio.sleep(1.0)

    def stop(self, timeout: float) -> None:
        self.stopping = True
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)  # each requeues its running job
        for p in live:
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run_server(settings: Settings) -> int:
    import uvicorn

    settings.ensure_dirs()
    store = Store(settings.database_url)
    pool = WorkerPool(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        pool.start()
        watcher = asyncio.create_task(pool.watch())
        try:
            yield
        finally:
            watcher.cancel()
            pool.stop(timeout=settings.cancel_grace_seconds + 15)

    app = create_app(settings, store=store, lifespan=lifespan)
    print(
        f"tuneforge server: http://{settings.host}:{settings.port} (API docs at /docs); home {settings.home}; "
        f"database {redact_url(settings.database_url)}; {len(pool.devices)} worker(s)",
        file=sys.stderr,
        flush=True,
    )
    if not store.list_keys():
        print(
            f"tuneforge server: no API keys yet: create one with `tuneforge keys create NAME --home {settings.home}`",
            file=sys.stderr,
            flush=True,
        )
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=5)
    finally:
        pool.stop(timeout=5)  # if uvicorn failed before the lifespan ended (e.g. the port is taken)
    return 0
