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
import contextvars
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import anyio
from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from ..db.schema import deployments
from ..errors import Conflict, NotFound, TuneforgeError
from ..keys import Principal, hash_key
from ..models.adapters import check_adapter_folder
from ..models.loader import _hf_cached_snapshot, hub_reachable
from ..runtime import default_device
from .classify import LoadedClassifier, is_classifier
from .engine import InferenceEngine, SamplingParams, UnknownModelError, check_name
from .openai_routes import Auth
from .seq2seq import LoadedSeq2Seq, is_seq2seq

STATUSES = ("building", "live", "failed", "terminated")
# The deployment chosen for the current request by `deployment_auth` (set in the request's own context, read by
# `DeploymentManager.submit` in the same request): deployment names are unique per owner, not across owners.
_CHOSEN: contextvars.ContextVar[str | None] = contextvars.ContextVar("tuneforge_deployment", default=None)
# A client-chosen api_auth_token must be at least this long: with failed attempts throttled per address, 32
# characters of even a small alphabet are out of reach of guessing (the generated ones have 192 random bits).
MIN_TOKEN_CHARS = 32


class DeployRequest(BaseModel):
    """The payload of `POST /v1/deploy/llm`: MonsterAPI's `LLMServingParams` (what the official client sends)."""

    model_config = ConfigDict(extra="forbid")

    basemodel_path: str = Field(
        ...,
        min_length=1,
        description="Base model: a hub id or catalog alias (e.g. "
        "`smollm2`), or a model folder inside the server's allowed folders.",
    )
    loramodel_path: str | None = Field(
        None,
        description="The LoRA adapter: a succeeded fine-tuning job id of yours, "
        "an adapter folder inside the server's allowed folders, or a hub id. Empty: "
        "serve the base model alone.",
    )
    deployment_name: str | None = Field(
        None,
        description="The name clients pass as `model` on the OpenAI-compatible "
        "endpoints; unique among your live deployments (other owners may use the same "
        "name). Default: deploy-<id prefix>.",
    )
    prompt_template: str | None = Field(
        None,
        description="Wraps `prompt` on /v1/completions and `/generate`: the "
        "text before `{completion}`, its placeholders filled from `input_variables` "
        "(or `{prompt}`, or a single placeholder, from `prompt`). Default: the "
        "adapter's training template (its tuneforge_adapter.json), else "
        "'{prompt}{completion}'.",
    )
    chat_template: Literal["training", "model"] = Field(
        "training",
        description="(tuneforge) How /v1/chat/completions renders messages: training = as the adapter "
        "was trained (its prompt template, or the model's chat template for chat data); model = the base model's "
        "chat template.",
    )
    api_auth_token: str | None = Field(
        None,
        min_length=MIN_TOKEN_CHARS,
        max_length=256,
        description=f"Bearer token that may call this deployment (besides your own key): at least {MIN_TOKEN_CHARS} "
        "characters, not used by another deployment. Default (recommended): generated, 192 random bits, returned "
        "once in the response.",
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Context length cap (prompt + completion tokens). Default: the model's own."
    )
    per_gpu_vram: int | None = Field(
        None, description="Accepted for MonsterAPI compatibility; tuneforge serves on the server's own device."
    )
    gpu_count: int | None = Field(None, description="Accepted for MonsterAPI compatibility (see per_gpu_vram).")
    use_nightly: bool = Field(False, description="Accepted for MonsterAPI compatibility; no effect.")
    multi_lora: bool = Field(
        False,
        description="Accepted for MonsterAPI compatibility: every tuneforge engine serves many adapters on one base.",
    )


def _now() -> float:
    return time.time()


def template_variables(template: str) -> list[str]:
    """The placeholders of a deployment's prompt_template before `{completion}`, in order."""
    import string

    head = template.split("{completion}", 1)[0]
    try:
        return list(dict.fromkeys(name for _, name, _, _ in string.Formatter().parse(head) if name))
    except ValueError:  # not a format string (a stray brace): treated as literal text with no placeholders
        return []


def render_completion_prompt(template: str, prompt: str | None = None, variables: dict[str, Any] | None = None) -> str:
    """The part of `template` before `{completion}`, its placeholders filled from `variables`, or from `prompt`
    (into `{prompt}`, or into the only placeholder there is). Without placeholders, `prompt` is used as is."""
    names = template_variables(template)
    if variables is None:
        if not names:
            return prompt or ""
        target = "prompt" if "prompt" in names else names[0] if len(names) == 1 else None
        if target is None:
            raise TuneforgeError(
                f"prompt: this deployment's prompt_template has several placeholders "
                f"({', '.join(names)}); send them as input_variables",
                field="prompt",
            )
        variables = {target: prompt or ""}
    missing = [n for n in names if n not in variables]
    if missing:
        raise TuneforgeError(
            f"input_variables: missing {', '.join(map(repr, missing))}; this deployment's "
            f"prompt_template needs {', '.join(names)}",
            field="input_variables",
        )
    head = template.split("{completion}", 1)[0]
    return head.format_map({k: str(v) for k, v in variables.items()})


def engine_options_for(options: dict[str, Any], device: str | None) -> dict[str, Any]:
    """The service's engine options (`serve_*` settings) for a base loaded on `device`. `weights="int8"` is a CPU
    format over float32 activations (`check_weights`): a CPU deployment gets float32 with it (also on CPUs whose
    `auto` dtype would be bf16: the int8 step is faster than bf16 matmuls there), any other keeps dense weights."""
    options = dict(options)
    if options.get("weights") == "int8":
        if default_device(device).partition(":")[0] == "cpu":
            options["dtype"] = "float32"
        else:
            options["weights"] = "dense"
    return options


class DeploymentManager:
    """Deployments of one service process. Implements the engine protocol of `serve.openai_routes`
    (`model_names`, `created`, `submit`) over the live deployments, by name."""

    def __init__(
        self,
        db_engine,
        logs_dir: Path,
        *,
        max_loaded_adapters: int = 8,
        device: str | None = None,
        engine_options: dict | None = None,
    ):
        self.db = db_engine  # the service database, already migrated (its job store opened it first)
        self.logs_dir = Path(logs_dir)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.max_loaded_adapters = max_loaded_adapters
        self.device = device
        self.engine_options = dict(engine_options or {})  # batching settings passed to every InferenceEngine
        self.created = int(time.time())
        self._lock = threading.RLock()
        self._engines: dict[str, InferenceEngine] = {}  # by model_load
        self._engine_locks: dict[str, threading.Lock] = {}
        self._live: dict[str, dict] = {}  # deployment id -> row of a live deployment
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ rows
    def get(self, deployment_id: str) -> dict | None:
        with self.db.connect() as conn:
            r = conn.execute(select(deployments).where(deployments.c.id == deployment_id)).first()
        return dict(r._mapping) if r else None

    def by_name(self, name: str, owner: str | None = None) -> dict | None:
        """The non-terminated deployment called `name` of `owner` (names are unique per owner); without `owner`,
        the newest of any owner's (for admin keys)."""
        q = select(deployments).where(deployments.c.name == name, deployments.c.status != "terminated")
        if owner is not None:
            q = q.where(deployments.c.owner == owner)
        with self.db.connect() as conn:
            r = conn.execute(q.order_by(deployments.c.created_at.desc())).first()
        return dict(r._mapping) if r else None

    def by_token(self, token: str) -> dict | None:
        with self.db.connect() as conn:
            r = conn.execute(
                select(deployments).where(
                    deployments.c.token_hash == hash_key(token), deployments.c.status != "terminated"
                )
            ).first()
        return dict(r._mapping) if r else None

    def token_in_use(self, token: str) -> bool:
        """Any deployment, terminated ones included, was given this token (a token is never reused)."""
        with self.db.connect() as conn:
            return (
                conn.execute(select(deployments.c.id).where(deployments.c.token_hash == hash_key(token))).first()
                is not None
            )

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
    def create(
        self, req: DeployRequest, *, owner: str, key_id: int | None, model_load: str, adapter_source: str | None
    ) -> tuple[dict, str]:
        """Insert the deployment (status building) and start building it; returns (row, api_auth_token).
        `model_load` and `adapter_source` are already checked against the server's path policy."""
        deployment_id = str(uuid.uuid4())
        name = check_name(req.deployment_name or f"deploy-{deployment_id[:8]}", field="deployment_name")
        token = req.api_auth_token or secrets.token_urlsafe(24)
        if req.api_auth_token and self.token_in_use(token):
            # Tokens are unique: one token must never open two deployments (of possibly different owners).
            raise Conflict(
                "api_auth_token: this token is already used by another deployment; choose another one, "
                "or leave it empty to get a generated one",
                field="api_auth_token",
                value="***",
            )
        params = req.model_dump(
            exclude={
                "api_auth_token",
                "basemodel_path",
                "loramodel_path",
                "deployment_name",
                "prompt_template",
                "max_model_len",
            }
        )
        now = _now()
        try:
            with self.db.begin() as conn:
                conn.execute(
                    insert(deployments).values(
                        id=deployment_id,
                        name=name,
                        owner=owner,
                        key_id=key_id,
                        status="building",
                        token_hash=hash_key(token),
                        token_prefix=token[:6],
                        basemodel_path=req.basemodel_path,
                        loramodel_path=req.loramodel_path or None,
                        model_load=model_load,
                        adapter_source=adapter_source,
                        prompt_template=req.prompt_template or "",
                        max_model_len=req.max_model_len,
                        params=json.dumps(params),
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            raise Conflict(
                f"deployment_name: you already have a deployment called {name!r}; choose another name or "
                "terminate that one first",
                field="deployment_name",
                value=name,
            ) from None
        self.log(
            deployment_id,
            f"created deployment {name!r}: base {req.basemodel_path!r}, adapter {req.loramodel_path or '(none)'!r}",
        )
        self._start_build(deployment_id)
        row = self.get(deployment_id)
        assert row is not None  # inserted above; deployments are never deleted
        return row, token

    def _start_build(self, deployment_id: str) -> None:
        t = threading.Thread(target=self._build, args=(deployment_id,), name=f"deploy-{deployment_id[:8]}", daemon=True)
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
                # model_load is a policy-checked absolute folder or a hub id: never a path under the working directory
                engine = InferenceEngine(
                    model_load,
                    max_loaded_adapters=self.max_loaded_adapters,
                    device=self.device,
                    relative_is_local=False,
                    **engine_options_for(self.engine_options, self.device),
                )
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
            source = row["adapter_source"]
            folder = self._adapter_folder(source, deployment_id) if source else None
            if folder is not None and is_classifier(folder):
                classifier = self._load_classifier(row, folder, deployment_id)
                self._go_live(deployment_id, row, engine=None, model=deployment_id, classifier=classifier)
                return
            if folder is not None and is_seq2seq(folder):
                seq2seq = self._load_seq2seq(row, folder, deployment_id)
                self._go_live(deployment_id, row, engine=None, model=deployment_id, seq2seq=seq2seq)
                return
            engine = self._engine_for(row["model_load"], deployment_id)
            model = engine.base_name
            mode = json.loads(row["params"] or "{}").get("chat_template", "training")
            if source:
                assert folder is not None
                config = check_adapter_folder(folder, field="loramodel_path")
                recorded = config.get("base_model_name_or_path")
                if recorded and recorded not in engine._aliases:
                    self.log(
                        deployment_id,
                        f"warning: the adapter was trained on {recorded!r}, served here on {engine.model_id!r}",
                    )
                engine.add_adapter(deployment_id, folder, chat_template=mode)
                model = deployment_id
            if not row["prompt_template"]:  # not given: the adapter's training template, if it has one
                card = engine.card(deployment_id) if source else None
                trained = card.deploy_template if card is not None and mode == "training" else None
                self._set(deployment_id, prompt_template=trained or "{prompt}{completion}")
                self.log(
                    deployment_id,
                    f"prompt_template: {trained or '{prompt}{completion}'!r}"
                    + (" (the adapter's training template)" if trained else ""),
                )
            # Test-load: one greedy token proves the adapter fits this base before the deployment goes live.
            probe = engine.encode("Hello")
            engine.generate(model, probe, temperature=0, max_tokens=1)
            self.log(deployment_id, "adapter loaded and checked" if source else "base model checked")
        except Exception as exc:
            message = str(exc) if isinstance(exc, TuneforgeError) else f"{type(exc).__name__}: {exc}"
            self.log(deployment_id, f"failed: {message}")
            self._set(deployment_id, status="failed", error=message, only_if="building")  # not over a terminate
            self._release(deployment_id, row["model_load"])
            return
        self._go_live(deployment_id, row, engine=engine, model=model)

    def _go_live(
        self, deployment_id: str, row: dict, *, engine, model: str, classifier: Any = None, seq2seq: Any = None
    ) -> None:
        with self._lock:
            current = self.get(deployment_id)
            if current is None or current["status"] != "building":  # terminated while building
                self._release(deployment_id, row["model_load"])
                return
            self._set(deployment_id, status="live", live_at=_now(), error=None)
            self._live[deployment_id] = {
                **current,
                "status": "live",
                "engine": engine,
                "model": model,
                "classifier": classifier,
                "seq2seq": seq2seq,
            }
        routes = (
            "POST /v1/classify"
            if classifier is not None
            else "POST /v1/completions"
            if seq2seq is not None
            else "/v1/chat/completions and /v1/completions"
        )
        self.log(deployment_id, f"live: answering as model {row['name']!r} on {routes}")

    def _load_classifier(self, row: dict, folder: str, deployment_id: str) -> LoadedClassifier:
        """A classifier adapter (serve/classify.py): its own merged copy of the base, checked on one text (or image)."""
        check_adapter_folder(folder, field="loramodel_path")
        self.log(deployment_id, f"loading classifier: base {row['model_load']!r} with its adapter merged in")
        t = time.monotonic()
        classifier = LoadedClassifier(folder, model_path=row["model_load"], device=self.device)
        classifier.probe()  # the head and the adapter fit this base
        self.log(
            deployment_id,
            f"classifier loaded and checked in {time.monotonic() - t:.1f}s: {len(classifier.labels)} labels "
            f"({', '.join(classifier.labels)})",
        )
        return classifier

    def _load_seq2seq(self, row: dict, folder: str, deployment_id: str) -> LoadedSeq2Seq:
        """A seq2seq adapter (serve/seq2seq.py): its own merged encoder-decoder, checked on one greedy token."""
        check_adapter_folder(folder, field="loramodel_path")
        self.log(deployment_id, f"loading seq2seq model: base {row['model_load']!r} with its adapter merged in")
        t = time.monotonic()
        model = LoadedSeq2Seq(folder, model_path=row["model_load"], device=self.device)
        model.generate(["Hello"], max_tokens=1, temperature=0.0)  # the probe: the adapter fits this base
        self.log(deployment_id, f"seq2seq model loaded and checked in {time.monotonic() - t:.1f}s")
        return model

    def seq2seq(self, name: str) -> LoadedSeq2Seq | None:
        """The live seq2seq deployment `name` this request may use (see `live`), or None when `name` is not one."""
        d = self.live(name)
        model: LoadedSeq2Seq | None = d.get("seq2seq") if d is not None else None
        return model

    def classifier(self, name: str) -> LoadedClassifier:
        """The live classifier deployment `name` this request may use (see `live`); `POST /v1/classify`'s pool."""
        d = self.live(name)
        if d is None or d.get("classifier") is None:
            raise UnknownModelError(
                f"model {name!r} is not a live classifier deployment here", field="model", value=name
            )
        classifier: LoadedClassifier = d["classifier"]
        return classifier

    def _adapter_folder(self, source: str, deployment_id: str) -> str:
        if Path(source).is_absolute():
            return source

        cached = _hf_cached_snapshot(source)
        if cached:
            return cached
        if not hub_reachable():
            raise TuneforgeError(
                f"loramodel_path: {source!r} is not in the server's Hugging Face cache and the hub cannot be reached",
                field="loramodel_path",
                value=source,
            )
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
            building = [
                r
                for r in self.list(None)
                if r["status"] == "building" and r["model_load"] == model_load and r["id"] != deployment_id
            ]
            if not others and not building:
                self._engines.pop(model_load, None)
                engine.close()
                self.log(deployment_id, f"base model {model_load!r} unloaded (no deployment uses it)")

    def visible(self, deployment_id: str, principal: Principal) -> dict:
        """The deployment, if `principal` owns it (or is an admin); otherwise NotFound, as if it did not exist."""
        row = self.get(deployment_id.strip())
        if row is None or (not principal.is_admin and row["owner"] != principal.owner):
            raise NotFound(f"deployment {deployment_id!r} not found", field="deployment_id", value=deployment_id)
        return row

    def terminate_for(self, deployment_id: str, principal: Principal, *, actor: str | None = None) -> dict:
        """`terminate` on behalf of `principal`: NotFound if not theirs, Conflict if already terminated."""
        row = self.visible(deployment_id, principal)
        if row["status"] == "terminated":
            raise Conflict(f"deployment {row['id']!r} is already terminated", field="deployment_id", value=row["id"])
        self.log(row["id"], f"terminate requested by {principal.owner!r} ({actor or 'api'})")
        terminated = self.terminate(row["id"])
        if terminated is None:  # deployment rows are never deleted: not reached
            raise NotFound(f"deployment {deployment_id!r} not found", field="deployment_id", value=deployment_id)
        return terminated

    def terminate(self, deployment_id: str) -> dict | None:
        """Stop the deployment; its row after that (as it was, if already terminated), None if there is none."""
        with self._lock:
            row = self.get(deployment_id)
            if row is None or row["status"] == "terminated":
                return row
            self._set(deployment_id, status="terminated", terminated_at=_now())
            self._live.pop(deployment_id, None)
        self.log(deployment_id, "terminated")
        self._release(deployment_id, row["model_load"])
        return self.get(deployment_id)

    def restore(self, *, attempts: int = 3, retry_seconds: float = 5.0) -> None:
        """After a restart: rebuild the deployments that were building or live, one at a time in one background
        thread (they share base models, and parallel first loads raced in transformers' lazy imports), retrying a
        failed rebuild `attempts` times: a deployment that was live should come back unless it really cannot."""
        rows = [r for r in self.list(None) if r["status"] in ("building", "live")]
        if not rows:
            return
        for row in rows:
            self._set(row["id"], status="building")
            self.log(row["id"], "server restarted: rebuilding")

        def rebuild_all() -> None:
            pending = [r["id"] for r in rows]
            for attempt in range(1, attempts + 1):
                for deployment_id in pending:
                    self._build(deployment_id)
                failed = [d for d in pending if (self.get(d) or {}).get("status") == "failed"]
                if not failed or attempt == attempts:
                    return
                time.sleep(retry_seconds)
                for d in failed:
                    self.log(d, f"rebuild failed; retrying (attempt {attempt + 1} of {attempts})")
                    self._set(d, status="building", error=None, only_if="failed")
                pending = failed

        t = threading.Thread(target=rebuild_all, name="deploy-restore", daemon=True)
        self._threads.append(t)
        t.start()

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
            return sorted({d["name"] for d in self._live.values()})

    def serving(self, deployment_id: str) -> tuple[InferenceEngine, str] | None:
        """The engine a live text-generation deployment runs on and the model name its requests are counted under
        (its metrics' `model` label); None for a classifier or a deployment that is not live."""
        with self._lock:
            d = self._live.get(deployment_id)
        if d is None or d.get("engine") is None:
            return None
        return d["engine"], d["model"]

    def classifier_labels(self, deployment_id: str) -> tuple[str, ...] | None:
        """A live classifier deployment's labels, in the order of `POST /v1/classify`'s `probs`; else None."""
        with self._lock:
            d = self._live.get(deployment_id)
        classifier = d.get("classifier") if d is not None else None
        return tuple(classifier.labels) if classifier is not None else None

    def task(self, deployment_id: str) -> str | None:
        """What a live deployment answers, as data_config.task names it: "classification" or "image_classification"
        (POST /v1/classify), "seq2seq" (POST /v1/completions through the encoder-decoder) or "causal_lm"; None when
        it is not live."""
        with self._lock:
            d = self._live.get(deployment_id)
        if d is None:
            return None
        classifier = d.get("classifier")
        if classifier is not None:
            return "image_classification" if classifier.vision else "classification"
        return "seq2seq" if d.get("seq2seq") is not None else "causal_lm"

    def live(self, name: str) -> dict | None:
        """The live deployment called `name` that this request's `deployment_auth` chose (names are per owner, so
        two tenants may both serve an `orders`); without that choice, the only live one of that name."""
        with self._lock:
            chosen = self._live.get(_CHOSEN.get() or "")
            if chosen is not None and chosen["name"] == name:
                return chosen
            matches = [d for d in self._live.values() if d["name"] == name]
            return matches[0] if len(matches) == 1 else None

    def submit(
        self,
        model: str,
        prompt: Any = None,
        params: SamplingParams | None = None,
        *,
        messages: builtins.list[dict] | None = None,
        loop=None,
        input_variables: dict[str, Any] | None = None,
        raw: bool = False,
        tools: builtins.list[dict] | None = None,
        require_tools: bool = True,
    ):
        """A request to live deployment `model`. A text `prompt` is wrapped in the deployment's prompt_template
        (unless `raw`); `input_variables` fill the template's placeholders instead (MonsterAPI's /generate)."""
        d = self.live(model)
        if d is None:
            raise UnknownModelError(f"model {model!r} is not a live deployment here", field="model", value=model)
        if d.get("classifier") is not None:
            raise TuneforgeError(
                f"model {model!r} is a classifier: send its texts to POST /v1/classify", field="model", value=model
            )
        if d.get("seq2seq") is not None:
            raise TuneforgeError(
                f"model {model!r} is a seq2seq (encoder-decoder) model: send its source text as `prompt` to "
                "POST /v1/completions",
                field="model",
                value=model,
            )
        if input_variables is not None:
            prompt = render_completion_prompt(d["prompt_template"], variables=input_variables)
        elif isinstance(prompt, str) and not raw:
            prompt = render_completion_prompt(d["prompt_template"], prompt)
        gen = d["engine"].submit(
            d["model"],
            prompt,
            params,
            messages=messages,
            loop=loop,
            context_length=d["max_model_len"],
            tools=tools,
            require_tools=require_tools,
        )
        self.log(
            d["id"],
            f"request: {'chat' if messages is not None else 'completion'}, {gen.prompt_tokens} prompt "
            f"tokens, max {gen.max_tokens} new",
        )
        return gen


def deployment_auth(
    manager: DeploymentManager, authenticate: Callable[[str], Principal | None], *, key_active: Callable[[int], bool]
) -> Auth:
    """The `auth` of the OpenAI routes over deployments (see openai_routes): a deployment answers to its own
    api_auth_token while `key_active` says the key that created it is not revoked, or to its owner's (or an
    admin's) service key, which `authenticate` looks up. Others get 404,
    as if it did not exist; a deployment still building answers 503, a failed or terminated one 409."""
    challenge = {"WWW-Authenticate": "Bearer"}

    def lookup(token: str, model: str | None):
        own = manager.by_token(token)
        if own is not None and own["key_id"] is not None and not key_active(own["key_id"]):
            own = None  # a deployment's api_auth_token stops working when the key that created it is revoked
        principal = authenticate(token)
        d = None
        if model is not None:
            # Names are per owner: the token's own deployment, else the key owner's deployment of that name (an
            # admin key: anyone's). Another tenant's deployment of the same name is never found.
            if own is not None and own["name"] == model:
                d = own
            elif principal is not None:
                d = manager.by_name(model, principal.owner)
                if d is None and principal.is_admin:
                    d = manager.by_name(model)
        return principal, own, d

    async def auth(request: Request, model: str | None) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(
                401, "missing key: send 'Authorization: Bearer <api_auth_token or API key>'", headers=challenge
            )
        principal, own, d = await anyio.to_thread.run_sync(lookup, token, model)
        if principal is None and own is None:
            raise HTTPException(401, "invalid API key or api_auth_token", headers=challenge)
        if model is None:
            return
        allowed = d is not None and (
            (own is not None and own["id"] == d["id"])
            or (principal is not None and (principal.is_admin or principal.owner == d["owner"]))
        )
        if not allowed:
            raise HTTPException(
                404,
                f"model {model!r} not found: no live deployment of that name that this key may "
                "use (a deployment answers to its api_auth_token and its owner's key)",
            )
        _CHOSEN.set(d["id"])  # the deployment `submit` serves for this request
        if d["status"] == "building":
            raise HTTPException(503, f"deployment {model!r} is still building; poll GET /v1/deploy/status/{d['id']}")
        if d["status"] != "live":
            raise HTTPException(
                409, f"deployment {model!r} is {d['status']}" + (f": {d['error']}" if d["error"] else "")
            )

    return auth
