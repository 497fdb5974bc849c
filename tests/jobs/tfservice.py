"""Helpers for the service tests: a real `tuneforge server` on a free port, keys, tiny job payloads, and a
throwaway PostgreSQL server (installed with apt when this machine has none)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests

# Fast heartbeats and polls keep the tests short; the defaults are for real machines.
FAST_ENV = {
    "TUNEFORGE_HEARTBEAT_SECONDS": "0.5",
    "TUNEFORGE_STALE_AFTER_SECONDS": "4",
    "TUNEFORGE_POLL_SECONDS": "0.2",
    "TUNEFORGE_CANCEL_GRACE_SECONDS": "3",
    "TUNEFORGE_MAX_UPLOAD_BYTES": "65536",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def write_qa(path: Path, n: int = 80) -> Path:
    """A learnable task: the completion is a fixed function of the question."""
    rng = random.Random(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for _ in range(n):
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            fh.write(json.dumps({"question": f"what is {a} plus {b}?", "answer": f"{a + b}"}) + "\n")
    return path


def make_home(root: Path, tiny_model_dir: Path) -> Path:
    """A service home whose allowed `models/` and `datasets/` folders hold the tiny model and a small dataset."""
    home = root / "home"
    (home / "datasets").mkdir(parents=True, exist_ok=True)
    shutil.copytree(tiny_model_dir, home / "models" / "tiny")
    write_qa(home / "datasets" / "qa.jsonl")
    return home


def payload(home: Path, *, data_path: str | None = None, **training) -> dict:
    """A MonsterAPI fine-tune payload (every section the official client requires) for a seconds-long run."""
    t = {
        "max_steps": 12,
        "batch_size": 8,
        "learning_rate": 3e-3,
        "eval_steps": 4,
        "precision": "fp32",
        "num_train_epochs": 1,
        "gradient_accumulation_steps": 1,
        "warmup_steps": 1,
        "lr_scheduler_type": "cosine",
        "early_stopping_patience": 5,
        "group_by_length": True,
        **training,
    }
    return {
        "pretrainedmodel_config": {"model_path": str(home / "models" / "tiny"), "lora_r": 4, "lora_alpha": 8},
        "data_config": {
            "data_path": data_path or str(home / "datasets" / "qa.jsonl"),
            "prompt_template": "Question: {question}\nAnswer: {answer}",
            "cutoff_len": 64,
            "data_split_config": {"train": 0.8, "validation": 0.2},
        },
        "training_config": t,
        "logging_config": {"use_wandb": False},
    }


def create_key(home: Path, name: str, *, admin: bool = False, db: str | None = None) -> str:
    cmd = [sys.executable, "-m", "tuneforge.cli", "keys", "create", name, "--home", str(home)]
    cmd += ["--admin"] if admin else []
    cmd += ["--db", db] if db else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


class Server:
    """`tuneforge server` in a subprocess (its own process group, so a test can SIGKILL the lot)."""

    def __init__(
        self, home: Path, *, workers: int = 1, db: str | None = None, env: dict | None = None, cwd: Path | None = None
    ):
        self.home, self.workers, self.db, self.cwd = home, workers, db, cwd
        self.env = {**os.environ, **FAST_ENV, "TUNEFORGE_CACHE": str(home / "hf-cache"), **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = home / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "tuneforge.cli",
            "server",
            "--home",
            str(self.home),
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        cmd += ["--db", self.db] if self.db else []
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return requests.get(self.url + "/v1/health", timeout=1).ok
            except requests.ConnectionError:
                return False

        wait_for(up, 60, what="the server to answer")
        return self

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill_server_only(self) -> None:
        """SIGKILL the server process alone: its workers and their jobs must die with it (parent-death signal)."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):  # then killed with its group below
                self.proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in its group
        self.proc = None


class Client:
    """requests with a key and the server's base URL."""

    def __init__(self, base: str, key: str | None):
        self.base = base
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def request(self, method, path, **kw):
        headers = {**self.headers, **kw.pop("headers", {})}
        return requests.request(method, self.base + path, headers=headers, timeout=kw.pop("timeout", 60), **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def job(self, job_id: str) -> dict:
        r = self.get(f"/v1/finetune/llm/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def events(self, job_id: str, after: int = 0) -> list[dict]:
        out = []
        while True:
            r = self.get(f"/v1/finetune/llm/{job_id}/events", params={"after": after, "limit": 5000})
            assert r.status_code == 200, r.text
            batch = r.json()["events"]
            if not batch:
                return out
            out += batch
            after = batch[-1]["seq"]

    def wait_status(self, job_id: str, statuses: tuple[str, ...], timeout: float, server: Server | None = None) -> dict:
        def done():
            job = self.job(job_id)
            return job if job["status"] in statuses else None

        try:
            return wait_for(done, timeout, what=f"job {job_id} to reach {statuses}")
        except AssertionError:
            raise AssertionError(f"job {job_id}: {self.job(job_id)}\n{server.log_tail() if server else ''}") from None


# --- PostgreSQL ----------------------------------------------------------------------------------------------------


def _pg_bindir() -> str | None:
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin"):
        for d in sorted(glob.glob(pattern), reverse=True):
            if os.path.exists(os.path.join(d, "initdb")) and os.path.exists(os.path.join(d, "pg_ctl")):
                return d
    initdb = shutil.which("initdb")
    return os.path.dirname(os.path.realpath(initdb)) if initdb else None


def _install_postgres() -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail(
            "PostgreSQL is not installed and cannot be installed here (needs root and apt-get): "
            "apt-get install postgresql"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"], check=True, env=env)


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster on a free port (trust auth, fsync off); installs PostgreSQL if missing."""
    bindir = _pg_bindir()
    if bindir is None:
        _install_postgres()
        bindir = _pg_bindir()
        assert bindir, "PostgreSQL installed but initdb/pg_ctl not found"
    base = Path(tempfile.mkdtemp(prefix="tuneforge-pg-"))
    data = base / "data"
    as_root = os.geteuid() == 0
    prefix: list[str] = []
    if as_root:  # initdb refuses to run as root: run the cluster as the `postgres` user the package created
        shutil.chown(base, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        prefix + [f"{bindir}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
    subprocess.run(
        prefix + [f"{bindir}/pg_ctl", "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "-t", "60", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(prefix + [f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_database(postgres_url):
    """A fresh, empty database in the throwaway cluster; its URL."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = postgres_url.rsplit("/", 1)[0] + "/" + name
    yield url
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- S3 ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server (moto's server mode) in its own process; the environment that points boto3,
    s3fs and the service's processes at it (AWS_ENDPOINT_URL, dummy credentials)."""
    pytest.importorskip("moto.server", reason="pip install 'moto[server]' (in the dev extra)")
    pytest.importorskip("s3fs", reason="pip install s3fs (in the dev extra)")
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="tuneforge-moto-")) / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"moto server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            return requests.get(env["AWS_ENDPOINT_URL"], timeout=5).status_code < 500
        except requests.RequestException:  # not listening yet, or still starting on a busy machine
            return False

    try:
        wait_for(up, 60, what="the S3 server to answer")
        yield env
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(log.parent, ignore_errors=True)


@pytest.fixture
def s3_url(s3_server, monkeypatch):
    """A fresh bucket on the S3 server; its URL (with a prefix), with this process's environment pointed at it."""
    import boto3

    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    bucket = "t-" + uuid.uuid4().hex[:12]
    boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/tuneforge"


def start_worker(home: Path, db: str, env: dict, *extra: str, log: Path | None = None) -> subprocess.Popen:
    """`tuneforge worker` on its own, as on another machine sharing the database (its own home: its own disk)."""
    home.mkdir(parents=True, exist_ok=True)
    with open(log or home / "worker.log", "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tuneforge.cli", "worker", "--home", str(home), "--db", db, *extra],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM (a worker requeues its job and exits), then SIGKILL of its whole group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
