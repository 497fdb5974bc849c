"""What a job's machines share through the storage URL (`tuneforge.storage`): its inputs, checkpoints and results.

Layout under the storage URL (each folder committed with its marker, see `Storage.put_dir`):

    datasets/<dataset id>/<file>          an uploaded dataset, pushed by the API server that received it
    checkpoints/<job id>/checkpoint-<N>/  the job's newest checkpoints, pushed by the training process as it saves
    runs/<job id>/                        the finished run folder (adapter/, report.json, metrics.jsonl, loss.png)

Training never reads or writes the storage itself: it works in the machine's local run folder as on one machine.
The training process pushes each new checkpoint between two steps (right after `save_checkpoint` renamed it into
place, so the files are complete and nothing prunes them meanwhile), and the finished run once it is renamed into
place. A machine that starts an attempt pulls what the storage has first: the finished run (an attempt that died
after training but before recording it), else the newest committed checkpoint to resume from.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..settings import Settings
from ..storage import Storage
from ..train.plan import is_finished_run, work_dir_for

_STEP = re.compile(r"checkpoint-(\d+)$")


def _step(name: str) -> int:
    m = _STEP.match(name)
    return int(m.group(1)) if m else -1


def local_run_dir(settings: Settings, job: dict[str, object]) -> Path:
    """Where this machine keeps the job's run folder. With a shared storage every machine uses its own home (the
    job's `run_dir` column is the API server's copy); without one, the one home every process shares."""
    return settings.runs_dir / str(job["id"]) if settings.storage else Path(str(job["run_dir"]))


def run_key(job_id: str) -> str:
    return f"runs/{job_id}"


def checkpoints_key(job_id: str) -> str:
    return f"checkpoints/{job_id}"


def dataset_key(dataset_id: str, path: Path) -> str:
    return f"datasets/{dataset_id}/{path.name}"


class RunSync:
    """One attempt's copies of its job's run folder in the storage."""

    def __init__(self, storage: Storage, job_id: str, run_dir: Path) -> None:
        self.storage, self.job_id, self.run_dir = storage, job_id, run_dir
        self.work = work_dir_for(run_dir)
        self.pushed: set[str] = set()  # checkpoint names committed in the storage

    def pull(self) -> str | None:
        """Bring the storage's copy of this job here before an attempt; says what was pulled (None: nothing)."""
        if is_finished_run(self.run_dir):
            return None
        if self.storage.get_dir(run_key(self.job_id), self.run_dir):
            return "the finished run"
        from ..train.checkpoint import latest_checkpoint  # torch: the training process has it, the server need not

        remote = self.storage.committed_children(checkpoints_key(self.job_id))
        self.pushed = set(remote)
        if not remote:
            return None
        newest = max(remote, key=_step)
        local = latest_checkpoint(self.work)
        if local is not None and _step(local.name) >= _step(newest):
            return None  # this machine ran the job before and has the same or a later checkpoint
        self.storage.get_dir(f"{checkpoints_key(self.job_id)}/{newest}", self.work / newest)
        return newest

    def push_checkpoints(self) -> list[str]:
        """Commit the checkpoints saved here since the last call; drop the storage's copies of those that training
        pruned (save_total_limit), once the newer ones are committed. Returns the names pushed."""
        from ..train.checkpoint import list_checkpoints

        local = [p.name for p in list_checkpoints(self.work)]
        new = [n for n in local if n not in self.pushed]
        for name in new:
            self.storage.put_dir(self.work / name, f"{checkpoints_key(self.job_id)}/{name}")
            self.pushed.add(name)
        if new:
            for name in sorted(self.pushed - set(local), key=_step):
                self.storage.delete(f"{checkpoints_key(self.job_id)}/{name}")
                self.pushed.discard(name)
        return new

    def committed(self) -> bool:
        return self.storage.committed(run_key(self.job_id))

    def push_run(self) -> None:
        """Commit the finished run folder; its checkpoints are no longer needed."""
        self.storage.put_dir(self.run_dir, run_key(self.job_id))
        self.storage.delete(checkpoints_key(self.job_id))


def pull_run(storage: Storage | None, job_id: str, run_dir: Path) -> bool:
    """Make a finished run's folder local (a server or deployment on another machine than the training ran on).
    True when it is here afterwards."""
    if is_finished_run(run_dir):
        return True
    return storage is not None and storage.get_dir(run_key(job_id), run_dir)


def delete_job_copies(storage: Storage | None, job_id: str, *, keep_run: bool = False) -> None:
    """Remove the job's checkpoints (and, unless `keep_run`, its finished run) from the storage."""
    if storage is None:
        return
    storage.delete(checkpoints_key(job_id))
    if not keep_run:
        storage.delete(run_key(job_id))
