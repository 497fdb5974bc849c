"""The service's commands: `tuneforge server`, `tuneforge worker`, `tuneforge keys create|list|revoke`.

Each takes `--home` / `--db` (or TUNEFORGE_HOME / TUNEFORGE_DB), so they all act on the same service state.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ..errors import TuneforgeError
from ..settings import load_settings
from ..storage import open_storage

if TYPE_CHECKING:
    from ..jobs.store import Store
    from ..settings import Settings


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", default=None, help="service state folder (default: $TUNEFORGE_HOME, else ~/.tuneforge)")
    p.add_argument(
        "--db",
        default=None,
        help="database URL, e.g. postgresql://user:pass@host/db (default: $TUNEFORGE_DB, else SQLite in "
        "the home folder)",
    )


def _storage_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        default=None,
        help="shared storage for datasets, checkpoints and runs: a folder or an fsspec URL such as "
        "s3://bucket/prefix (default: $TUNEFORGE_STORAGE, else none: one machine)",
    )


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    try:
        settings = load_settings(home=args.home, db=args.db, storage=getattr(args, "storage", None), **extra)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise TuneforgeError(f"invalid service setting: {problems}") from None
    open_storage(settings.storage)  # a storage URL nothing can open stops the command before it touches anything
    return settings


def _cmd_server(args: argparse.Namespace) -> int:
    # The API and the worker are imported by the command that runs them: they pull in FastAPI, SQLAlchemy and
    # torch, which `tuneforge keys` and `--help` do not need.
    from ..api.server import run_server

    return run_server(_settings(args, host=args.host, port=args.port, workers=args.workers))


def _cmd_worker(args: argparse.Namespace) -> int:
    if args.ray:
        if args.device is not None:
            raise TuneforgeError(
                "worker: --device pins a local worker's jobs to a GPU; with --ray, Ray assigns each job its GPUs "
                "(--ray-gpus-per-job)",
                field="device",
                value=args.device,
            )
        from ..jobs.ray_backend import run_ray_worker

        return run_ray_worker(
            _settings(args),
            args.ray,
            cpus_per_job=args.ray_cpus_per_job,
            gpus_per_job=args.ray_gpus_per_job,
            max_jobs=args.max_jobs,
        )
    from ..jobs.worker import run_worker

    return run_worker(_settings(args), device=args.device, parent_pid=args.parent_pid, max_jobs=args.max_jobs)


def _store(args: argparse.Namespace) -> Store:
    from ..jobs.store import Store

    settings = _settings(args)
    settings.ensure_dirs()
    return Store(settings.database_url)


def _cmd_keys_create(args: argparse.Namespace) -> int:
    name = args.name.strip()
    if not name or len(name) > 200:
        raise TuneforgeError("keys create: NAME must be 1 to 200 characters", field="name", value=args.name)
    key_id, key = _store(args).create_key(name, admin=args.admin)
    print(
        f"created key {key_id} for {name!r}{' (admin: sees every job)' if args.admin else ''}. It is shown only "
        "this once; the server keeps only its hash."
    )
    print(key)  # alone on the last line, so scripts can take it with `| tail -n 1`
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    from ..jobs.service import iso

    rows = _store(args).list_keys()
    if not rows:
        print("no keys yet: tuneforge keys create NAME [--admin]")
    for r in rows:
        state = f"revoked {iso(r['revoked_at'])}" if r["revoked_at"] else "active"
        print(
            f"{r['id']:>4}  {r['owner']:<24} {r['prefix']}…  {'admin' if r['is_admin'] else 'user ':<5}  "
            f"created {iso(r['created_at'])}  {state}"
        )
    return 0


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    if not _store(args).revoke_key(args.key_id):
        raise TuneforgeError(
            f"keys revoke: no active key with id {args.key_id} (see `tuneforge keys list`)",
            field="key_id",
            value=args.key_id,
        )
    print(f"revoked key {args.key_id}")
    return 0


def add_service_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `server`, `worker` and `keys` on the main parser's subcommands."""
    p = sub.add_parser("server", help="run the fine-tuning service: REST API (MonsterAPI-compatible) + workers")
    _common(p)
    p.add_argument("--host", default=None, help="listen address (default 127.0.0.1; 0.0.0.0 for all interfaces)")
    p.add_argument("--port", type=int, default=None, help="listen port (default 8000)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="workers to start beside the API, one job each at a time (default 1; 0: use `tuneforge worker` processes)",
    )
    _storage_flag(p)
    p.set_defaults(func=_cmd_server)

    p = sub.add_parser("worker", help="run queued fine-tuning jobs (add workers to a running server)")
    _common(p)
    p.add_argument(
        "--device",
        default=None,
        help="CUDA device index this worker's jobs use (sets CUDA_VISIBLE_DEVICES); default: all visible",
    )
    p.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    _storage_flag(p)
    p.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="run the jobs on the Ray cluster at ADDRESS (host:6379, ray://host:10001, or auto), several at once, "
        "each where its resources are free (pip install 'tuneforge[ray]')",
    )
    p.add_argument("--ray-cpus-per-job", type=float, default=1.0, help="CPUs each job asks Ray for (default 1)")
    p.add_argument(
        "--ray-gpus-per-job",
        type=float,
        default=None,
        help="GPUs each job asks Ray for (default: 1 on a cluster with GPUs, else 0: CPU training)",
    )
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)  # set by `tuneforge server`
    p.set_defaults(func=_cmd_worker)

    keys = sub.add_parser("keys", help="API keys of the service").add_subparsers(
        dest="keys_command", required=True, metavar="COMMAND"
    )
    p = keys.add_parser("create", help="create a key for NAME and print it (once)")
    p.add_argument("name", help="owner name: keys with the same name share their jobs and datasets")
    p.add_argument("--admin", action="store_true", help="the key sees and manages every owner's jobs")
    _common(p)
    p.set_defaults(func=_cmd_keys_create)
    p = keys.add_parser("list", help="list keys (never the keys themselves)")
    _common(p)
    p.set_defaults(func=_cmd_keys_list)
    p = keys.add_parser("revoke", help="revoke a key by its id")
    p.add_argument("key_id", type=int)
    _common(p)
    p.set_defaults(func=_cmd_keys_revoke)
