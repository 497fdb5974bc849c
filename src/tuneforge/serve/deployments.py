"""Deployments on the fine-tuning service: "deploy this adapter as an API endpoint", MonsterAPI-style.

A deployment is a (base model, LoRA adapter) pair served under a name of its owner's choosing, in the service's
own process: one `InferenceEngine` per base model, each deployment's adapter registered on it by the deployment id
(so many deployments of one base share its weights, and adapters are loaded and evicted least-recently-used).
Deploying therefore takes seconds (load the base once, load and check the adapter) rather than a container start.

Lifecycle: `building` (a background thread loads the base, resolves and test-loads the adapter with a one-token
generation) -> `live` (answers on the OpenAI-compatible endpoints with `model` = the deployment name) or `failed`
(with the reason); `terminate` -> `terminated` (adapter unloaded; the base model is freed when no live deployment
uses it). Deployments are rows in the service database (their own table in `db/schema.py`), and a restarted
server rebuilds those that were building or live. Each has a log file that `GET /v1/deploy/logs/{id}` tails.

Access: a deployment answers only to its own `api_auth_token` (only its hash is stored; the token is shown once,
in the create response) or to its owner's service key (or an admin key).
"""

from __future__ import annotations

import builtins
import json
import secrets
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from ..db.schema import deployments
from ..errors import TuneforgeError
from .engine import InferenceEngine, SamplingParams, check_adapter_folder, check_name

STATUSES = ("building", "live", "failed", "terminated")

class DeployRequest(BaseModel):
    """The payload of `POST /v1/deploy/llm`: MonsterAPI's `LLMServingParams` (what the official client sends)."""

    model_config = ConfigDict(extra="forbid")

    basemodel_path: str = Field(..., min_length=1, description="Base model: a hub id or catalog alias (e.g. "
                                "`smollm2`), or a model folder inside the server's allowed folders.")
    loramodel_path: str | None = Field(None, description="The LoRA adapter: a succeeded fine-tuning job id of yours, "
                                       "an adapter folder inside the server's allowed folders, or a hub id. Empty: "
                                       "serve the base model alone.")
    deployment_name: str | None = Field(None, description="The name clients pass as `model` on the OpenAI-compatible "
                                        "endpoints; unique among live deployments. Default: deploy-<id prefix>.")
    prompt_template: str = Field("{prompt}{completion}", description="Wraps `prompt` on /v1/completions: the text "
                                 "before `{completion}`, with `{prompt}` filled in (use the training template). "
                                 "Chat requests use the model's chat template.")
    api_auth_token: str | None = Field(None, min_length=8, description="Bearer token that may call this deployment "
                                       "(besides your own key). Default: generated, returned once in the response.")
    max_model_len: int | None = Field(None, ge=16, description="Context length cap (prompt + completion tokens). "
                                      "Default: the model's own.")
    per_gpu_vram: int | None = Field(None, description="Accepted for MonsterAPI compatibility; tuneforge serves on "
                                     "the server's own device.")
    gpu_count: int | None = Field(None, description="Accepted for MonsterAPI compatibility (see per_gpu_vram).")
    use_nightly: bool = Field(False, description="Accepted for MonsterAPI compatibility; no effect.")
    multi_lora: bool = Field(False, description="Accepted for MonsterAPI compatibility: every tuneforge engine serves "
                             "many adapters on one base.")


def _hash(token: str) -> str:
    from ..jobs.store import hash_key

    return hash_key(token)


def _now() -> float:
    return time.time()


def render_completion_prompt(template: str, prompt: str) -> str:
    """The part of a training template before `{completion}`, with `{prompt}` filled in."""
    if "{completion}" not in template:
        return template.replace("{prompt}", prompt) if "{prompt}" in template else prompt
    head = template[:template.index("{completion}")]
    return head.replace("{prompt}", prompt) if "{prompt}" in head else prompt


class DeploymentManager:
    """Deployments of one service process. Implements the engine protocol of `serve.openai_routes`
    (`model_names`, `created`, `submit`) over the live deployments, by name."""

    def __init__(self, db_engine, logs_dir: Path, *, max_loaded_adapters: int = 8, device: str | None = None):
        self.db = db_engine  # the service database, already migrated (its job store opened it first)
        self.logs_dir = Path(logs_dir)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.max_loaded_adapters = max_loaded_adapters
        self.device = device
        self.created = int(time.time())
        self._lock = threading.RLock()
        self._engines: dict[str, InferenceEngine] = {}  # by model_load
        self._engine_locks: dict[str, threading.Lock] = {}
        self._live: dict[str, dict] = {}  # name -> row of a live deployment
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ rows
    def get(self, deployment_id: str) -> dict | None:
        with self.db.connect() as conn:
            r = conn.execute(select(deployments).where(deployments.c.id == deployment_id)).first()
        return dict(r._mapping) if r else None

    def by_name(self, name: str) -> dict | None:
        """The non-terminated deployment called `name`."""
        with self.db.connect() as conn:
            r = conn.execute(select(deployments).where(deployments.c.name == name,
                                                       deployments.c.status != "terminated")).first()
        return dict(r._mapping) if r else None

    def by_token(self, token: str) -> dict | None:
        with self.db.connect() as conn:
            r = conn.execute(select(deployments).where(deployments.c.token_hash == _hash(token),
                                                       deployments.c.status != "terminated")).first()
        return dict(r._mapping) if r else None

    def list(self, owner: str | None) -> list[dict]:
        q = select(deployments).order_by(deployments.c.created_at.desc())
        if owner is not None:
            q = q.where(deployments.c.owner == owner)
        with self.db.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def _set(self, deployment_id: str, *, only_if: str | None = None, **values) -> None:
        cond = [deployments.c.id == deployment_id]
        if only_if is not None:
            cond.append(deployments.c.status == only_if)
        with self.db.begin() as conn:
            conn.execute(update(deployments).where(*cond).values(updated_at=_now(), **values))

    # ------------------------------------------------------------------ logs
    def log(self, deployment_id: str, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._lock, open(self.logs_dir / f"{deployment_id}.log", "a") as fh:
            fh.write(f"{stamp} {message}\n")

    def tail(self, deployment_id: str, n_lines: int) -> builtins.list[str]:
        path = self.logs_dir / f"{deployment_id}.log"
        if not path.is_file():
            return []
        lines = path.read_text().splitlines()
        return lines[-n_lines:] if n_lines > 0 else []

    # ------------------------------------------------------------------ create / build / terminate
    def create(self, req: DeployRequest, *, owner: str, key_id: int | None, model_load: str,
               adapter_source: str | None) -> tuple[dict, str]:
        """Insert the deployment (status building) and start building it; returns (row, api_auth_token).
        `model_load` and `adapter_source` are already checked against the server's path policy."""
        deployment_id = str(uuid.uuid4())
        name = check_name(req.deployment_name or f"deploy-{deployment_id[:8]}", field="deployment_name")
        token = req.api_auth_token or secrets.token_urlsafe(24)
        params = req.model_dump(exclude={"api_auth_token", "basemodel_path", "loramodel_path", "deployment_name",
                                         "prompt_template", "max_model_len"})
        now = _now()
        try:
            with self.db.begin() as conn:
                conn.execute(insert(deployments).values(
                    id=deployment_id, name=name, owner=owner, key_id=key_id, status="building",
                    token_hash=_hash(token), token_prefix=token[:6], basemodel_path=req.basemodel_path,
                    loramodel_path=req.loramodel_path or None, model_load=model_load, adapter_source=adapter_source,
                    prompt_template=req.prompt_template, max_model_len=req.max_model_len,
                    params=json.dumps(params), created_at=now, updated_at=now))
        except IntegrityError:
            from ..jobs.service import Conflict

            raise Conflict(f"deployment_name: {name!r} is taken by a live deployment; choose another name or "
                           "terminate that one first", field="deployment_name", value=name) from None
        self.log(deployment_id, f"created deployment {name!r}: base {req.basemodel_path!r}, adapter "
                                f"{req.loramodel_path or '(none)'!r}")
        self._start_build(deployment_id)
        row = self.get(deployment_id)
        assert row is not None  # inserted above; deployments are never deleted
        return row, token

    def _start_build(self, deployment_id: str) -> None:
        t = threading.Thread(target=self._build, args=(deployment_id,), name=f"deploy-{deployment_id[:8]}",
                             daemon=True)
        self._threads.append(t)
        t.start()

    def _engine_for(self, model_load: str, deployment_id: str) -> InferenceEngine:
        with self._lock:
            lock = self._engine_locks.setdefault(model_load, threading.Lock())
        with lock:  # one load per base model, however many deployments of it build at once
            engine = self._engines.get(model_load)
            if engine is None:
                self.log(deployment_id, f"loading base model {model_load!r}")
                t = time.monotonic()
                engine = InferenceEngine(model_load, max_loaded_adapters=self.max_loaded_adapters, device=self.device)
                self.log(deployment_id, f"base model loaded in {time.monotonic() - t:.1f}s on {engine.device}")
                with self._lock:
                    self._engines[model_load] = engine
            else:
                self.log(deployment_id, f"base model {model_load!r} already loaded (shared)")
        return engine

    def _build(self, deployment_id: str) -> None:
        row = self.get(deployment_id)
        if row is None or row["status"] == "terminated":
            return
        try:
            engine = self._engine_for(row["model_load"], deployment_id)
            model = engine.base_name
            source = row["adapter_source"]
            if source:
                folder = self._adapter_folder(source, deployment_id)
                config = check_adapter_folder(folder, field="loramodel_path")
                recorded = config.get("base_model_name_or_path")
                if recorded and recorded not in engine._aliases:
                    self.log(deployment_id, f"warning: the adapter was trained on {recorded!r}, served here on "
                                            f"{engine.model_id!r}")
                engine.add_adapter(deployment_id, folder)
                model = deployment_id
            # Test-load: one greedy token proves the adapter fits this base before the deployment goes live.
            probe = engine.encode("Hello")
            engine.generate(model, probe, temperature=0, max_tokens=1)
            self.log(deployment_id, "adapter loaded and checked" if source else "base model checked")
        except Exception as exc:  # noqa: BLE001 -- any failure is the deployment's status, shown to its owner
            message = str(exc) if isinstance(exc, TuneforgeError) else f"{type(exc).__name__}: {exc}"
            self.log(deployment_id, f"failed: {message}")
            self._set(deployment_id, status="failed", error=message, only_if="building")  # not over a terminate
            self._release(deployment_id, row["model_load"])
            return
        with self._lock:
            current = self.get(deployment_id)
            if current is None or current["status"] != "building":  # terminated while building
                self._release(deployment_id, row["model_load"])
                return
            self._set(deployment_id, status="live", live_at=_now(), error=None)
            self._live[row["name"]] = {**current, "status": "live", "engine": engine, "model": model}
        self.log(deployment_id, f"live: answering as model {row['name']!r} on /v1/chat/completions and "
                                "/v1/completions")

    def _adapter_folder(self, source: str, deployment_id: str) -> str:
        if Path(source).is_absolute():
            return source
        from ..models.loader import _hf_cached_snapshot, hub_reachable

        cached = _hf_cached_snapshot(source)
        if cached:
            return cached
        if not hub_reachable():
            raise TuneforgeError(f"loramodel_path: {source!r} is not in the server's Hugging Face cache and the hub "
                                 "cannot be reached", field="loramodel_path", value=source)
        from huggingface_hub import snapshot_download

        self.log(deployment_id, f"downloading adapter {source!r} from the hub")
        return snapshot_download(source)

    def _release(self, deployment_id: str, model_load: str) -> None:
        """Unregister the deployment's adapter; free the base model when no other deployment uses it."""
        with self._lock:
            engine = self._engines.get(model_load)
            if engine is None:
                return
            if deployment_id in engine.adapters():
                engine.remove_adapter(deployment_id)
            others = [d for d in self._live.values() if d["model_load"] == model_load and d["id"] != deployment_id]
            building = [r for r in self.list(None) if r["status"] == "building" and r["model_load"] == model_load
                        and r["id"] != deployment_id]
            if not others and not building:
                self._engines.pop(model_load, None)
                engine.close()
                self.log(deployment_id, f"base model {model_load!r} unloaded (no deployment uses it)")

    def terminate(self, deployment_id: str) -> dict | None:
        with self._lock:
            row = self.get(deployment_id)
            if row is None or row["status"] == "terminated":
                return row
            self._set(deployment_id, status="terminated", terminated_at=_now())
            self._live.pop(row["name"], None)
        self.log(deployment_id, "terminated")
        self._release(deployment_id, row["model_load"])
        return self.get(deployment_id)

    def restore(self) -> None:
        """After a restart: rebuild the deployments that were building or live."""
        for row in self.list(None):
            if row["status"] in ("building", "live"):
                self._set(row["id"], status="building")
                self.log(row["id"], "server restarted: rebuilding")
                self._start_build(row["id"])

    def close(self) -> None:
        with self._lock:
            engines = list(self._engines.values())
            self._engines.clear()
            self._live.clear()
        for e in engines:
            e.close()

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait for running builds (tests and shutdown)."""
        for t in list(self._threads):
            t.join(timeout)

    # ------------------------------------------------------------------ the engine protocol of openai_routes
    def model_names(self) -> builtins.list[str]:
        with self._lock:
            return sorted(self._live)

    def live(self, name: str) -> dict | None:
        with self._lock:
            return self._live.get(name)

    def submit(self, model: str, prompt: Any = None, params: SamplingParams | None = None, *,
               messages: builtins.list[dict] | None = None, loop=None):
        d = self.live(model)
        if d is None:
            from .engine import UnknownModelError

            raise UnknownModelError(f"model {model!r} is not a live deployment here", field="model", value=model)
        if isinstance(prompt, str):
            prompt = render_completion_prompt(d["prompt_template"], prompt)
        gen = d["engine"].submit(d["model"], prompt, params, messages=messages, loop=loop,
                                 context_length=d["max_model_len"])
        self.log(d["id"], f"request: {'chat' if messages is not None else 'completion'}, {gen.prompt_tokens} prompt "
                          f"tokens, max {gen.max_tokens} new")
        return gen
