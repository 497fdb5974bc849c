"""The shared storage (tuneforge.storage) and what a job keeps there (jobs/sync.py), on a local folder and on a real
S3-compatible server (moto's server mode, started by the fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.jobs.sync import RunSync, checkpoints_key, pull_run, run_key
from tuneforge.settings import Settings
from tuneforge.storage import COMMIT_MARKER, Storage, open_storage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> Storage:
    if request.param == "local":
        return Storage(str(tmp_path / "shared"))
    return Storage(request.getfixturevalue("s3_url"))


def _folder(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _checkpoint(work: Path, step: int) -> Path:
    # What train/checkpoint.py lists: checkpoint-N holding trainer_state.json.
    return _folder(work / f"checkpoint-{step}", {"trainer_state.json": json.dumps({"global_step": step}), "x.pt": "w"})


def test_a_folder_exists_once_committed_and_round_trips(storage, tmp_path):
    src = _folder(tmp_path / "src", {"a.txt": "A", "sub/b.json": "{}"})
    assert not storage.committed("runs/j1") and not storage.get_dir("runs/j1", tmp_path / "nothing")
    storage.put_dir(src, "runs/j1")
    assert storage.committed("runs/j1")
    dest = tmp_path / "dest" / "j1"
    assert storage.get_dir("runs/j1", dest)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == ["a.txt", "sub/b.json"]
    assert (dest / "sub" / "b.json").read_text() == "{}"
    assert not any(p.name.endswith(".tmp") for p in dest.parent.iterdir())


def test_an_upload_cut_short_is_invisible_and_the_next_one_replaces_it(storage, tmp_path):
    # An upload that died before its marker: files there, folder absent.
    storage.put_file(_folder(tmp_path / "f", {"stale.bin": "old"}) / "stale.bin", "runs/j2/stale.bin")
    assert not storage.committed("runs/j2") and storage.committed_children("runs") == []
    assert not storage.get_dir("runs/j2", tmp_path / "out")
    storage.put_dir(_folder(tmp_path / "good", {"adapter.bin": "new"}), "runs/j2")
    out = tmp_path / "out2"
    assert storage.get_dir("runs/j2", out)
    assert sorted(p.name for p in out.iterdir()) == ["adapter.bin"]  # the dead upload's file is gone
    assert storage.committed_children("runs") == ["j2"]
    storage.delete("runs/j2")
    assert not storage.committed("runs/j2") and storage.committed_children("runs") == []


def test_a_checkpoint_is_pushed_as_it_appears_and_resumed_on_another_machine(storage, tmp_path):
    first = RunSync(storage, "job", tmp_path / "machine-a" / "runs" / "job")
    assert first.pull() is None and first.push_checkpoints() == []
    _checkpoint(first.work, 4)
    assert first.push_checkpoints() == ["checkpoint-4"]
    assert first.push_checkpoints() == []  # already committed
    _checkpoint(first.work, 8)
    # save_total_limit pruned checkpoint-4 here: the storage drops it once checkpoint-8 is committed.
    import shutil

    shutil.rmtree(first.work / "checkpoint-4")
    assert first.push_checkpoints() == ["checkpoint-8"]
    assert storage.committed_children(checkpoints_key("job")) == ["checkpoint-8"]

    second = RunSync(storage, "job", tmp_path / "machine-b" / "runs" / "job")
    assert second.pull() == "checkpoint-8"
    assert json.loads((second.work / "checkpoint-8" / "trainer_state.json").read_text()) == {"global_step": 8}
    assert second.pull() is None  # it has that checkpoint now

    # The finished run replaces the checkpoints; any machine can then fetch it (a server, a deployment).
    run = _folder(second.run_dir, {"report.json": "{}", "adapter/adapter_config.json": "{}"})
    second.push_run()
    assert second.committed() and storage.committed_children(checkpoints_key("job")) == []
    elsewhere = tmp_path / "server" / "runs" / "job"
    assert pull_run(storage, "job", elsewhere) and (elsewhere / "adapter" / "adapter_config.json").is_file()
    assert pull_run(None, "job", run)  # already here: nothing to fetch
    assert not pull_run(None, "other", tmp_path / "none")
    assert RunSync(storage, "job", tmp_path / "machine-c" / "runs" / "job").pull() == "the finished run"
    assert storage.committed(run_key("job"))


def test_a_local_storage_is_written_atomically_and_has_no_temp_files_left(tmp_path):
    storage = Storage(f"file://{tmp_path / 'shared'}")
    storage.put_dir(_folder(tmp_path / "src", {"a": "1"}), "x")
    assert sorted(p.name for p in (tmp_path / "shared" / "x").iterdir()) == [COMMIT_MARKER, "a"]


def test_a_scheme_without_its_filesystem_is_one_clear_error_naming_the_setting_and_the_package():
    with pytest.raises(TuneforgeError) as exc:
        Storage("gs://bucket/prefix")
    msg = str(exc.value)
    assert exc.value.field == "storage" and "TUNEFORGE_STORAGE" in msg and "gcsfs" in msg
    with pytest.raises(TuneforgeError, match=r"no filesystem for nosuch:// URLs.*fsspec supports"):
        Storage("nosuch://x")
    assert open_storage(None) is None
    assert Settings(storage="  ").storage is None


def test_the_worker_and_the_server_refuse_to_start_with_such_a_storage(tmp_path):
    import subprocess
    import sys

    for command in (["worker"], ["server", "--port", "0"]):
        out = subprocess.run(
            [sys.executable, "-m", "tuneforge.cli", *command, "--home", str(tmp_path), "--storage", "gs://b/p"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tuneforge: error: storage: no filesystem for gs://")


def test_a_job_on_another_machine_gets_its_uploads_and_starting_adapter_from_the_storage(tmp_path):
    import uuid

    from tuneforge.jobs.run_job import pull_inputs
    from tuneforge.jobs.store import Store
    from tuneforge.jobs.sync import dataset_key

    storage = Storage(str(tmp_path / "shared"))
    server, node = Settings(home=tmp_path / "server"), Settings(home=tmp_path / "node", storage=storage.url)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upload = _folder(server.uploads_dir / "ds_1", {"train.jsonl": '{"text": "hi"}\n'}) / "train.jsonl"
    store.insert_dataset(
        dataset_id="ds_1",
        owner="a",
        filename="train.jsonl",
        path=str(upload),
        size_bytes=1,
        sha256="0" * 64,
        report={"ok": True},
    )
    storage.put_file(upload, dataset_key("ds_1", upload))
    earlier = str(uuid.uuid4())
    _folder(tmp_path / "run", {"report.json": "{}", "adapter/adapter_config.json": "{}"})
    storage.put_dir(tmp_path / "run", run_key(earlier))
    spec = {
        "pretrainedmodel_config": {"resume_checkpoint_path": str(server.runs_dir / earlier / "adapter")},
        "data_config": {"data_path": str(upload), "validation_data_path": None},
    }
    job = {"dataset_ids": "ds_1"}
    assert pull_inputs(store, storage, node, job, spec) is None
    assert spec["data_config"]["data_path"] == str(node.uploads_dir / "ds_1" / "train.jsonl")
    assert (node.uploads_dir / "ds_1" / "train.jsonl").read_text() == '{"text": "hi"}\n'
    assert spec["pretrainedmodel_config"]["resume_checkpoint_path"] == str(node.runs_dir / earlier / "adapter")
    assert (node.runs_dir / earlier / "adapter" / "adapter_config.json").is_file()

    storage.delete(dataset_key("ds_1", upload))
    other = Settings(home=tmp_path / "third", storage=storage.url)
    spec["data_config"]["data_path"] = str(upload)
    problem = pull_inputs(store, storage, other, job, spec)
    assert problem.startswith("data_config.data_path: the uploaded dataset 'ds_1' is neither on this machine nor in")
    spec["pretrainedmodel_config"]["resume_checkpoint_path"] = str(server.runs_dir / str(uuid.uuid4()) / "adapter")
    problem = pull_inputs(store, storage, other, job, spec)
    assert problem.startswith("pretrainedmodel_config.resume_checkpoint_path: the run of job")
    store.close()
