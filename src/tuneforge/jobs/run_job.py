"""One job's training process: `python -m tuneforge.jobs.run_job JOB_ID --worker-id W` (started by a worker).

Running each job in its own process is what makes the service robust: a crash, an out-of-memory kill or a
cancel (SIGTERM/SIGKILL from the worker) ends this process only, and the worker records what happened. The
process dies with its worker (Linux parent-death signal), so a SIGKILLed worker never leaves an orphan training
behind that would race the job's next attempt for the same run folder.

It validates the data (status `validating`; the report becomes an event), trains (status `running`; every
metrics record and log line becomes an event), and records the final status itself. A job that already has
checkpoints from an earlier attempt resumes from the newest one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data import DataOptions, DataValidationError, validate_source
from ..data.sources import set_url_guard
from ..errors import TuneforgeError
from ..models.loader import load_tokenizer
from ..runtime import die_with_parent
from ..settings import Settings
from ..spec import JobSpec, parse_spec
from ..storage import Storage, open_storage
from ..train.plan import is_finished_run, work_dir_for
from .limits import size_problems
from .paths import PathPolicy, is_job_id
from .store import ACTIVE, Row, Store
from .sync import RunSync, dataset_key, local_run_dir, pull_run

if TYPE_CHECKING:
    from ..train.recipe import RunResult


class LostClaim(Exception):
    """Another worker owns the job now (ours was declared dead): stop without touching its state."""


class Recorder:
    """`train(on_event=...)`: store each record as an event and keep the job's progress columns current."""

    def __init__(self, store: Store, job_id: str, worker_id: str, sync: RunSync | None = None) -> None:
        self.store, self.job_id, self.worker_id, self.sync = store, job_id, worker_id, sync
        self.first: tuple[float, int] | None = None  # (time, step) of this attempt's first train record
        self.best: float | None = None

    def __call__(self, record: dict[str, Any]) -> None:
        progress: dict[str, Any] = {"updated_at": time.time()}
        kind = record.get("type")
        if kind == "train":
            now, step = float(record.get("time") or time.time()), int(record["step"])
            if self.first is None:
                self.first = (now, step)
            elif now > self.first[0] and step > self.first[1]:
                # Measured within this attempt only: model loading and a resume's gap would distort it.
                progress["steps_per_second"] = (step - self.first[1]) / (now - self.first[0])
            progress.update(
                step=step,
                total_steps=record.get("total_steps"),
                epoch=record.get("epoch"),
                train_loss=record.get("loss"),
            )
        elif kind == "eval":
            loss = record.get("eval_loss")
            progress["eval_loss"] = loss
            if loss is not None and (self.best is None or loss < self.best):
                self.best = loss
                progress.update(best_eval_loss=loss, best_step=record.get("step"))
        elif kind == "log":
            print(record.get("message", ""), flush=True)  # the job's log file, for operators
        if self.store.add_event(self.job_id, record, progress=progress, worker_id=self.worker_id) is None:
            raise LostClaim(self.job_id)
        if self.sync is not None and kind in ("train", "eval"):
            # Called between two steps: a checkpoint saved by the last step is complete and nothing prunes it while
            # it uploads. Committed before training goes on, so a machine that dies loses at most save_steps.
            for name in self.sync.push_checkpoints():
                print(f"{name} committed to the shared storage", flush=True)

    def log(self, message: str) -> None:
        self({"type": "log", "message": message, "time": time.time()})


class MetricsTail:
    """The progress of a multi-process run: the metrics lines rank 0 appends to the run's metrics.jsonl, passed to
    the Recorder as a single-process run passes them through `on_event` (a callback cannot cross into the spawned
    processes). Read from the last byte seen; a resume rewrites the file (truncated to the checkpoint's step, a new
    inode), so it is then read again from the start, and lines of steps before `after_step` are left out: the
    attempt that wrote them recorded them."""

    def __init__(self, path: Path, rec: Recorder, *, after_step: int) -> None:
        self.path, self.rec, self.after_step = path, rec, after_step
        self.inode: int | None = None
        self.offset = 0
        try:
            st = path.stat()
            self.inode, self.offset = st.st_ino, st.st_size  # an earlier attempt's lines: recorded by it
        except FileNotFoundError:
            pass

    def poll(self) -> None:
        """Record the lines completed since the last call. Raises LostClaim (from the Recorder)."""
        try:
            with open(self.path, "rb") as fh:
                inode = os.fstat(fh.fileno()).st_ino
                if inode != self.inode:
                    self.inode, self.offset = inode, 0
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next call
        self.offset += end
        for line in chunk[:end].splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash of an earlier attempt
            if int(record.get("step", 0)) <= self.after_step:
                continue
            try:
                self.rec(record)
            except OSError as exc:
                # Its event is stored; the checkpoint upload after it failed (e.g. pruned by a newer save while it
                # uploaded, as this runs beside the training): the next record pushes what is new, and the storage
                # keeps the last committed checkpoint meanwhile.
                print(f"shared storage: {exc}", flush=True)


def _die_of(sig: int) -> None:
    """End this process by `sig`, as it would have ended without the launcher's handler."""
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)


def train_processes(spec: JobSpec, run_dir: Path, rec: Recorder, *, resume: bool) -> RunResult:
    """Train a spec with a distributed strategy on this machine's processes (`train.distributed.launch`, as
    `tuneforge train --nproc` does), recording rank 0's metrics as events while it runs.

    Stopping: a cancel (the worker's SIGTERM to this process group) reaches every rank directly, and the launcher
    turns it into SignalException after stopping them; this process then dies of the same signal, as a one-process
    job does, so the worker records the cancel. A SIGKILL of this process kills the ranks too (parent-death signal)."""
    import threading

    from torch.distributed.elastic.multiprocessing.api import SignalException

    from ..train.checkpoint import latest_checkpoint
    from ..train.distributed import launch, resolve_launch

    checkpoint = latest_checkpoint(work_dir_for(run_dir)) if resume else None
    if checkpoint is not None:
        # The ranks' own "resumed from" line goes to their console, not to the job's events (only rank 0's metrics
        # do): say it here, where a one-process job's recipe says it.
        processes = resolve_launch(spec).training_config.distributed.nproc_per_node  # the default filled in
        rec.log(f"resuming from {checkpoint} at step {checkpoint.name.split('-')[1]} ({processes} processes)")
    tail = MetricsTail(
        work_dir_for(run_dir) / "metrics.jsonl",
        rec,
        after_step=int(checkpoint.name.split("-")[1]) if checkpoint is not None else -1,
    )
    done = threading.Event()
    lost: list[LostClaim] = []

    def follow() -> None:
        while True:
            finished = done.wait(1.0)
            try:
                tail.poll()  # once more after the processes ended: the last lines they wrote
            except LostClaim as exc:
                lost.append(exc)  # the worker stops this process group; the launch ends with it
                return
            if finished:
                return

    follower = threading.Thread(target=follow, name="metrics-tail", daemon=True)
    follower.start()
    try:
        result = launch(spec, run_dir, resume=resume, quiet=True)
    except SignalException as exc:
        _die_of(exc.sigval)
        raise
    except TuneforgeError:
        # The cancel's SIGTERM also reaches the ranks, and the launcher may see them die before its own signal
        # handler runs: then it reports a killed rank. The worker records the cancel, not this failure.
        job = rec.store.get_job(rec.job_id)
        if job is not None and job["cancel_requested"]:
            _die_of(signal.SIGTERM)
        raise
    finally:
        done.set()
        follower.join()
    if lost:
        raise lost[0]
    assert result is not None, "one machine runs rank 0"
    return result


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        return isinstance(exc, torch.OutOfMemoryError)
    except (ImportError, AttributeError):
        return False


def describe_devices() -> str:
    """`cpu`, or the CUDA devices this process trains on as the machine numbers them (CUDA_VISIBLE_DEVICES)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else []
    return "cuda:" + ",".join(ids or [str(i) for i in range(torch.cuda.device_count())])


def pull_inputs(store: Store, storage: Storage, settings: Settings, job: Row, spec: dict[str, Any]) -> str | None:
    """Download what the job reads from the service's own files into this machine's home (unless there already):
    its uploaded datasets and the adapter of a finished job it starts from; point the spec's paths, which name the
    API server's copies, at them. A message when one is in neither place."""
    p = spec["pretrainedmodel_config"]
    start = Path(p.get("resume_checkpoint_path") or "")
    # resolve_spec turned a job id into <server home>/runs/<id>/adapter; any other folder is the operator's to provide
    if start.name == "adapter" and is_job_id(start.parent.name) and not start.is_dir():
        local = settings.runs_dir / start.parent.name
        if not pull_run(storage, start.parent.name, local):
            return (
                f"pretrainedmodel_config.resume_checkpoint_path: the run of job {start.parent.name!r} is neither on "
                f"this machine nor in the shared storage {storage.url}"
            )
        p["resume_checkpoint_path"] = str(local / "adapter")
    d = spec["data_config"]
    for dataset_id in filter(None, job["dataset_ids"].split(",")):
        ds = store.get_dataset(dataset_id)
        if ds is None:
            return f"data_config.data_path: the uploaded dataset {dataset_id!r} has been deleted"
        server_copy = Path(ds["path"])
        local = settings.uploads_dir / dataset_id / server_copy.name
        if not local.is_file() and not storage.get_file(dataset_key(dataset_id, server_copy), local):
            return (
                f"data_config.data_path: the uploaded dataset {dataset_id!r} is neither on this machine nor in "
                f"the shared storage {storage.url} (was it uploaded to a server without TUNEFORGE_STORAGE?)"
            )
        for name in ("data_path", "validation_data_path", "test_data_path"):
            if d.get(name) == ds["path"]:
                d[name] = str(local)
    return None


def run(job_id: str, worker_id: str) -> int:
    settings = Settings()
    store = Store(settings.database_url, create=False)
    job = store.get_job(job_id)
    if job is None or job["worker_id"] != worker_id or job["status"] not in ACTIVE:
        print(f"job {job_id} is not claimed by worker {worker_id}; nothing to do", file=sys.stderr)
        return 3
    rec = Recorder(store, job_id, worker_id)
    run_dir = local_run_dir(settings, job)
    # Best losses survive a resume: continue the minimum the earlier attempt recorded.
    rec.best = job["best_eval_loss"]

    def fail(message: str) -> int:
        store.finish(job_id, "failed", worker_id=worker_id, error=message, message="failed")
        return 1

    try:
        # torch comes with the training code; the worker imports this module (die_with_parent) and stays without.
        from ..train.checkpoint import latest_checkpoint

        store.set_placement(job_id, worker_id, node=socket.gethostname(), devices=describe_devices())
        spec_data = json.loads(job["spec"])
        storage = open_storage(settings.storage)
        if storage is not None:
            # This machine may never have seen the job: its uploaded datasets and its last attempt's checkpoint
            # (from another machine) come from the shared storage.
            missing = pull_inputs(store, storage, settings, job, spec_data)
            if missing:
                return fail(missing)
            rec.sync = RunSync(storage, job_id, run_dir)
            pulled = rec.sync.pull()
            if pulled:
                rec.log(f"pulled {pulled} from the shared storage")
        spec = parse_spec(spec_data)
        if is_finished_run(run_dir):  # an earlier attempt finished but died before recording it
            if rec.sync is not None and not rec.sync.committed():
                rec.sync.push_run()
            report = json.loads((run_dir / "report.json").read_text())
            store.finish(job_id, "succeeded", worker_id=worker_id, result=report, message="succeeded")
            return 0
        resume = latest_checkpoint(work_dir_for(run_dir)) is not None
        rec.log(
            f"attempt {job['attempts']} on worker {worker_id} (pid {os.getpid()})"
            + ("; continuing from the last checkpoint" if resume else "")
        )

        # Every URL this job downloads, redirect targets included, obeys the private-address rule that its
        # data_path passed at submission (a public URL could otherwise redirect to an internal service).
        policy = PathPolicy.from_settings(settings)

        def guard(url: str) -> None:  # raises PathRejected for a private address; the checked URL is not needed
            policy.url(url, "data_config.data_path")

        set_url_guard(guard)
        d = spec.data_config
        # Images are checked by decoding them; they have no tokens to count.
        tokenizer = (
            None
            if d.task == "image_classification"
            else load_tokenizer(spec.pretrainedmodel_config.model_path, hf_token=spec.hf_config.hf_token)
        )
        report = validate_source(
            d.data_path, DataOptions.from_config(d, hf_token=spec.hf_config.hf_token), tokenizer=tokenizer
        )
        report.source = policy.shown(report.source)  # the tenant sees <home>/..., not where the server keeps it
        rec({"type": "validation", "report": report.to_dict(), "time": time.time()})
        if not report.ok:
            return fail(f"data_config.data_path: the dataset is not trainable: {report.summary()}")
        # Known only now for data read from a URL or the hub: the job's steps and tokens against the server's limits.
        too_big = size_problems(spec, settings, report.n_rows)
        if too_big:
            return fail("; ".join(too_big))
        if not store.set_running(job_id, worker_id):
            raise LostClaim(job_id)

        if spec.training_config.distributed.strategy == "none":
            from ..train.recipe import train

            result = train(spec, run_dir, resume=resume, quiet=True, on_event=rec)
        else:
            result = train_processes(spec, run_dir, rec, resume=resume)
        if rec.sync is not None:  # committed before the job says succeeded: then any machine can serve it
            rec.sync.push_run()
        store.finish(job_id, "succeeded", worker_id=worker_id, result=result.report, message="succeeded")
        return 0
    except LostClaim:
        print(f"job {job_id}: another worker owns it now; stopping", file=sys.stderr)
        return 4
    except DataValidationError as exc:
        exc.report.source = PathPolicy.from_settings(settings).shown(exc.report.source)
        rec({"type": "validation", "report": exc.report.to_dict(), "time": time.time()})
        return fail(f"data_config.data_path: the dataset is not trainable: {exc.report.summary()}")
    except TuneforgeError as exc:
        return fail(str(exc))
    except BaseException as exc:
        traceback.print_exc()
        if _is_oom(exc):
            return fail(
                f"out of memory: {exc}. Try use_quantization, a smaller batch_size with more "
                "gradient_accumulation_steps, a smaller cutoff_len, or use_gradient_checkpointing"
            )
        if isinstance(exc, KeyboardInterrupt):
            return fail("interrupted")
        return fail(f"internal error: {type(exc).__name__}: {exc} (the traceback is in the job's log on the server)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneforge.jobs.run_job")
    parser.add_argument("job_id")
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    die_with_parent(args.parent_pid)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    return run(args.job_id, args.worker_id)


if __name__ == "__main__":
    sys.exit(main())
