"""Shared storage for a service spread over several machines: a local folder or any fsspec URL (`s3://bucket/prefix`,
`gs://...`, `file:///mnt/shared/...`), set with `--storage` / `TUNEFORGE_STORAGE`.

Every machine keeps working on its own local disk (training reads and writes its home, as on one machine) and the
storage holds the copies other machines need: uploaded datasets, each job's latest checkpoints and its finished
run folder (adapter, report, metrics). Object stores have no atomic rename of a folder, so a folder is *committed*
by writing a marker object after all of its files (Hadoop's `_SUCCESS` convention): a reader treats a folder
without its marker as absent, whatever part of it an interrupted upload left behind. Downloads go into a temporary
sibling folder renamed into place, so a local copy is complete or missing too.

Credentials and endpoints come from each filesystem's usual configuration (for S3: the AWS_* environment variables,
including AWS_ENDPOINT_URL for MinIO, Ceph or moto), never from tuneforge's settings.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from .errors import TuneforgeError

COMMIT_MARKER = "_COMMITTED"

# The PyPI package that provides a filesystem, for the error message (fsspec's own registry knows more; these
# are the ones a tuneforge user is likely to write).
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


class Storage:
    """A folder of committed sub-folders and plain files under `url`. Keys are '/'-separated relative paths."""

    def __init__(self, url: str) -> None:
        import fsspec

        self.url = url.rstrip("/")
        protocol = _protocol(url)
        try:
            cls = fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError) as exc:
            package = _PACKAGES.get(protocol)
            hint = (
                f"install {package} on every machine of the service (pip install 'tuneforge[storage]')"
                if package
                else "use a local folder, s3://, gs:// or another scheme fsspec supports, with its package installed"
            )
            raise TuneforgeError(
                f"storage: no filesystem for {protocol}:// URLs is installed ({exc}); {hint} (setting "
                "TUNEFORGE_STORAGE / --storage)",
                field="storage",
                value=url,
            ) from None
        self.fs: Any = cls()
        if protocol == "file":
            root = self.url.split("://", 1)[1] if "://" in self.url else self.url
            self.root = os.path.abspath(os.path.expanduser(root))
        else:
            self.root = cls._strip_protocol(self.url).rstrip("/")

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def path(self, key: str) -> str:
        return f"{self.root}/{key.strip('/')}" if key else self.root

    # --- files ---------------------------------------------------------------------------------------------------
    def put_file(self, local: Path, key: str) -> None:
        """Upload one file. Object stores replace an object atomically; a local storage gets a temp file renamed."""
        target = self.path(key)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.{secrets.token_hex(4)}.tmp"
            shutil.copyfile(local, tmp)
            os.replace(tmp, target)
        else:
            self.fs.put_file(str(local), target)

    def get_file(self, key: str, local: Path) -> bool:
        """Download one file to `local` (atomically); False when the storage has no such file."""
        source = self.path(key)
        if not self.fs.isfile(source):
            return False
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{secrets.token_hex(4)}.tmp")
        try:
            self.fs.get_file(source, str(tmp))
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    @property
    def is_local(self) -> bool:
        return _protocol(self.url) == "file"

    # --- committed folders ---------------------------------------------------------------------------------------
    def put_dir(self, local: Path, key: str) -> None:
        """Upload the files of `local` under `key`, then commit the folder with its marker (written last). Files of
        an earlier, uncommitted or replaced upload under `key` that `local` does not have are removed first."""
        self.delete(key)
        for f in sorted(local.rglob("*")):
            if f.is_file():
                self.put_file(f, f"{key}/{f.relative_to(local).as_posix()}")
        with self.fs.open(self.path(f"{key}/{COMMIT_MARKER}"), "wb") as fh:
            fh.write(b"")

    def committed(self, key: str) -> bool:
        self.fs.invalidate_cache()  # another machine may have committed it since this process last listed
        return bool(self.fs.isfile(self.path(f"{key}/{COMMIT_MARKER}")))

    def get_dir(self, key: str, local: Path) -> bool:
        """Download the committed folder `key` to `local` (replacing it); False when `key` is not committed."""
        if not self.committed(key):
            return False
        base = self.path(key)
        tmp = local.with_name(f".{local.name}.{secrets.token_hex(4)}.tmp")
        try:
            for source in sorted(self.fs.find(base)):
                rel = source[len(base) :].lstrip("/")
                if rel == COMMIT_MARKER:
                    continue
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(source, str(dest))
            tmp.mkdir(parents=True, exist_ok=True)  # an empty committed folder is still a folder
            if local.exists():
                shutil.rmtree(local)
            os.replace(tmp, local)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return True

    def committed_children(self, key: str) -> list[str]:
        """Names of the committed folders directly under `key`."""
        base = self.path(key)
        self.fs.invalidate_cache()
        if not self.fs.isdir(base):
            return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False)]
        return sorted(n for n in names if self.committed(f"{key}/{n}"))

    def delete(self, key: str) -> None:
        """Remove `key` (a file or folder) if present; its marker goes first, so a half-deleted folder is absent."""
        target = self.path(key)
        marker = f"{target}/{COMMIT_MARKER}"
        if self.fs.isfile(marker):
            self.fs.rm(marker)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)
        self.fs.invalidate_cache()


def open_storage(url: str | None) -> Storage | None:
    """The storage at `url`, or None when none is set (one machine: the home folder is the only copy)."""
    return Storage(url) if url else None
