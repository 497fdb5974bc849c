"""What a tenant's job may read: the path policy applied to every path-like field of a submitted spec.

A job spec names data and models by strings that the training process would happily open as local paths. On a
shared server that would let any key holder train on (and so read back, through the loss and generations)
`/etc/passwd` or another tenant's upload. So before a job is stored:

- `data_path` / `validation_data_path` / `test_data_path`: an uploaded dataset id (`ds_...`, the caller's own) is
  replaced by the upload's file; an http(s) URL is allowed unless it points at a loopback/private/link-local address; a hub id
  stays a hub id; anything else is a local path and must lie inside an allowed folder.
- `model_path`: a catalog alias or hub id stays; a local path must lie inside an allowed folder.
- `resume_checkpoint_path`: the caller's own finished job id (its adapter), or a local path inside an allowed
  folder.

Allowed folders are `<home>/models`, `<home>/datasets` and TUNEFORGE_ALLOWED_PATHS; the service's own folders
(uploads, runs, logs) are never allowed, whatever the operator lists. Paths are compared after resolving symlinks
and `..`, so neither can step outside; for a folder (a model, a datasets folder) every file and folder in it is
resolved and checked too, since that is what the loaders open: a symlink inside an allowed folder pointing
outside it is refused, naming the link. Jobs also run with an empty working directory, so a relative string that
is not accepted here as a path cannot reach a file through the process's current directory either.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import TuneforgeError
from ..settings import Settings

DATASET_ID = re.compile(r"^ds_[0-9a-f]{16}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # owner/name, or a legacy name without owner
_DATA_SUFFIXES = {".json", ".jsonl", ".ndjson", ".jsonlines", ".csv", ".tsv", ".parquet", ".pq", ".txt", ".arrow"}
MAX_PATH_CHARS = 4096  # Linux PATH_MAX: longer cannot name a file, and os calls raise instead of answering
MAX_FOLDER_ENTRIES = 100_000  # files checked in a model or datasets folder before giving up on it
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class PathRejected(TuneforgeError):
    pass


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives
        return False


class PathPolicy:
    def __init__(
        self, allowed: list[Path], private: list[Path], *, allow_private_urls: bool = False, home: Path | None = None
    ):
        self.allowed = [os.path.realpath(p) for p in allowed]
        self.private = [os.path.realpath(p) for p in private]
        self.allow_private_urls = allow_private_urls
        self.home = os.path.realpath(home) if home is not None else None

    @classmethod
    def from_settings(cls, settings: Settings) -> PathPolicy:
        return cls(
            settings.allowed_dirs,
            settings.private_dirs,
            allow_private_urls=settings.allow_private_urls,
            home=settings.home,
        )

    def shown(self, path: str) -> str:
        """A server path as API users see it: relative to the home (`<home>/models`), not where the home is."""
        if self.home and (path == self.home or path.startswith(self.home + os.sep)):
            return "<home>" + path[len(self.home) :]
        return path

    def _permitted(self, real: str) -> bool:
        return not any(_inside(real, p) for p in self.private) and any(_inside(real, a) for a in self.allowed)

    def local(self, raw: str, field: str, *, must_exist: bool = True) -> str:
        """The resolved path when `raw` may be read by a job; raises PathRejected naming the field otherwise."""
        check_path_text(raw, field)
        expanded = os.path.expanduser(raw)
        if not os.path.isabs(expanded):
            raise PathRejected(
                f"{field}: {raw!r} is a relative path; local paths on the server must be absolute and inside "
                f"{self._allowed_text()} (or upload the file with POST /v1/datasets and pass its id)",
                field=field,
                value=raw,
            )
        try:
            real = os.path.realpath(expanded)
            exists = os.path.exists(real)
        except (OSError, ValueError) as exc:  # ELOOP, ENAMETOOLONG in a component
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise PathRejected(f"{field}: {raw!r} cannot be used as a path: {reason}", field=field, value=raw) from None
        if not self._permitted(real):
            raise PathRejected(
                f"{field}: {raw!r} is outside the folders this server reads from ({self._allowed_text()}); upload "
                "the file with POST /v1/datasets and pass its id, or ask the operator to add its folder to "
                "TUNEFORGE_ALLOWED_PATHS",
                field=field,
                value=raw,
            )
        if must_exist and not exists:
            raise PathRejected(f"{field}: {raw!r} does not exist on the server", field=field, value=raw)
        if exists and os.path.isdir(real):
            self._check_tree(real, raw, field)
        return real

    def _check_tree(self, root: str, raw: str, field: str) -> None:
        """Every entry under the folder `root` resolves inside the allowed folders (symlinks followed once each)."""
        seen: set[str] = set()
        stack = [root]
        count = 0
        while stack:
            folder = stack.pop()
            if folder in seen:
                continue
            seen.add(folder)
            try:
                entries = list(os.scandir(folder))
            except OSError as exc:
                raise PathRejected(
                    f"{field}: {raw!r}: cannot read {self.shown(folder)!r}: {exc.strerror}", field=field, value=raw
                ) from None
            for entry in entries:
                count += 1
                if count > MAX_FOLDER_ENTRIES:
                    raise PathRejected(
                        f"{field}: {raw!r} holds more than {MAX_FOLDER_ENTRIES:,} files; point at a smaller folder",
                        field=field,
                        value=raw,
                    )
                real = os.path.realpath(entry.path)
                if not self._permitted(real):
                    raise PathRejected(
                        f"{field}: {raw!r} contains {self.shown(entry.path)!r}, a link to a file outside the folders "
                        f"this server reads from ({self._allowed_text()}); jobs read only files inside them",
                        field=field,
                        value=raw,
                    )
                if os.path.isdir(real):
                    stack.append(real)

    def url(self, raw: str, field: str) -> str:
        parts = urlsplit(raw)
        if not parts.hostname:
            raise PathRejected(f"{field}: {raw!r} is not a valid URL (no host)", field=field, value=raw)
        if self.allow_private_urls:
            return raw
        try:
            infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError):
            raise PathRejected(
                f"{field}: cannot resolve the host of {parts.hostname!r}", field=field, value=raw
            ) from None
        for info in infos:
            addr = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if (
                addr.is_loopback
                or addr.is_private
                or addr.is_link_local
                or addr.is_reserved
                or addr.is_multicast
                or addr.is_unspecified
            ):
                raise PathRejected(
                    f"{field}: {parts.hostname!r} is a loopback/private address ({addr}); jobs download only from "
                    "public addresses (the operator can allow private ones with TUNEFORGE_ALLOW_PRIVATE_URLS=true)",
                    field=field,
                    value=raw,
                )
        return raw

    def _allowed_text(self) -> str:
        return ", ".join(self.shown(a) for a in self.allowed)


def check_path_text(raw: str, field: str) -> None:
    """A string that cannot name a file is refused before any os call raises on it (NUL byte, over PATH_MAX)."""
    if "\x00" in raw:
        raise PathRejected(
            f"{field}: contains a NUL byte (\\x00), which no path or id may contain", field=field, value=raw
        )
    if len(raw) > MAX_PATH_CHARS:
        raise PathRejected(
            f"{field}: {len(raw):,} characters is longer than any path or id may be ({MAX_PATH_CHARS})",
            field=field,
            value=raw[:64] + "...",
        )


def looks_like_url(value: str) -> bool:
    return value.lower().startswith(("http://", "https://"))


def classify_data_path(value: str) -> str:
    """'url', 'dataset', 'hub' or 'local' (the way the data layer would read it, decided without touching disk)."""
    v = value.strip()
    if looks_like_url(v):
        return "url"
    if "://" in v:
        return "scheme"
    if DATASET_ID.match(v):
        return "dataset"
    if _HUB_ID.match(v) and Path(v).suffix.lower() not in _DATA_SUFFIXES and not v.startswith("."):
        return "hub"
    return "local"


def classify_model_path(value: str) -> str:
    """'hub' (hub id or catalog alias) or 'local'."""
    v = value.strip()
    if v.startswith(("/", "~", ".", "\\")) or "://" in v or not _HUB_ID.match(v):
        return "local"
    return "hub"


def is_job_id(value: str) -> bool:
    return bool(_UUID.match(value.strip()))
