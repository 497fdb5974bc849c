"""Issue 12, item 7: after a restart, deployments are rebuilt one at a time, and a rebuild that fails (as one did
with `ImportError: cannot import name 'AutoModelForCausalLM'` when several raced in transformers' lazy imports) is
retried instead of leaving the deployment `failed`."""

from __future__ import annotations

import threading

from tuneforge.jobs.store import Store
from tuneforge.serve import deployments as dep
from tuneforge.serve.deployments import DeploymentManager, DeployRequest


class FlakyEngine:
    """Fails its first load with the ImportError seen in the race; records how many loads overlapped."""

    calls = 0
    active = 0
    max_active = 0
    lock = threading.Lock()

    def __init__(self, model_load, **_kw):
        with FlakyEngine.lock:
            FlakyEngine.calls += 1
            FlakyEngine.active += 1
            FlakyEngine.max_active = max(FlakyEngine.max_active, FlakyEngine.active)
            first = FlakyEngine.calls == 1
        try:
            if first:
                raise ImportError("cannot import name 'AutoModelForCausalLM' from 'transformers'")
            self.base_name, self.model_id, self._aliases, self.device = model_load, model_load, {model_load}, "cpu"
        finally:
            with FlakyEngine.lock:
                FlakyEngine.active -= 1

    def encode(self, text):
        return [1]

    def generate(self, *args, **kwargs):
        return None

    def adapters(self):
        return []

    def close(self):
        pass


def test_restart_rebuilds_one_at_a_time_and_retries_a_failed_rebuild(tmp_path, monkeypatch):
    store = Store(f"sqlite:///{tmp_path / 'service.db'}")
    monkeypatch.setattr(dep, "InferenceEngine", FlakyEngine)
    first = DeploymentManager(store.engine, tmp_path / "logs")
    ids = []
    for i, base in enumerate(("/models/a", "/models/b", "/models/c")):
        # rows as a live server left them: inserted, then marked live (no build runs here)
        monkeypatch.setattr(first, "_start_build", lambda _id: None)
        row, _ = first.create(
            DeployRequest(basemodel_path=base, deployment_name=f"d{i}"),
            owner="alice",
            key_id=None,
            model_load=base,
            adapter_source=None,
        )
        first._set(row["id"], status="live")
        ids.append(row["id"])

    restarted = DeploymentManager(store.engine, tmp_path / "logs")
    restarted.restore(attempts=3, retry_seconds=0)
    restarted.wait_idle(60)
    assert [restarted.get(i)["status"] for i in ids] == ["live", "live", "live"]
    assert FlakyEngine.max_active == 1  # never two first loads at once
    retried = [i for i in ids if any("retrying" in line for line in restarted.tail(i, 20))]
    assert len(retried) == 1 and any("ImportError" in line for line in restarted.tail(retried[0], 20))
    store.close()
