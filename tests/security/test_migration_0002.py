"""Migration 0002 on a database that already has rows: duplicate deployment tokens are resolved (the newest
deployment keeps its token) before the index becomes unique, and finished jobs lose their stored tokens while
unfinished ones keep them."""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy import text
from test_migrations import make_first_release_db

from tuneforge.db.migrate import current_revision, head_revision
from tuneforge.jobs.store import Store, hash_key


def test_0002_makes_tokens_unique_and_drops_finished_jobs_secrets(tmp_path):
    url = f"sqlite:///{tmp_path / 'service.db'}"
    engine = make_first_release_db(url)
    secret = {
        "data_config": {"data_path": "x"},
        "hf_config": {"hf_token": "hf_OLDSECRET"},
        "logging_config": {"wandb_login_key": "WB_OLDSECRET"},
    }
    with engine.begin() as conn:
        for job_id, status in (("done", "succeeded"), ("waiting", "queued")):
            conn.execute(
                text(
                    "INSERT INTO jobs (id, owner, key_id, status, spec, spec_public, dataset_ids, run_dir, created_at, "
                    "updated_at, attempts, lost, cancel_requested, last_seq) VALUES (:id, 'alice', NULL, :status, :spec, "
                    "'{}', '', '/runs/x', 1.0, 1.0, 0, 0, false, 0)"
                ),
                {"id": job_id, "status": status, "spec": json.dumps(secret)},
            )
        for dep_id, created in (("old", 1.0), ("new", 2.0)):
            conn.execute(
                text(
                    "INSERT INTO deployments (id, name, owner, key_id, status, token_hash, token_prefix, basemodel_path, "
                    "model_load, prompt_template, params, created_at, updated_at) VALUES (:id, :id, 'alice', NULL, "
                    "'live', :h, 'passwo', 'm', 'm', '{prompt}{completion}', '{}', :t, :t)"
                ),
                {"id": dep_id, "h": hash_key("password"), "t": created},
            )
    engine.dispose()
    store = Store(url)  # opening the store upgrades to head
    try:
        with store.engine.connect() as conn:
            assert current_revision(conn) == head_revision()
            hashes = dict(conn.execute(text("SELECT id, token_hash FROM deployments")).all())
            specs = dict(conn.execute(text("SELECT id, spec FROM jobs")).all())
            unique = [
                ix["unique"]
                for ix in sa.inspect(conn).get_indexes("deployments")
                if ix["name"] == "ix_deployments_token_hash"
            ]
            names = [
                ix for ix in sa.inspect(conn).get_indexes("deployments") if ix["name"] == "uq_deployments_active_name"
            ]
        assert names and names[0]["column_names"] == ["owner", "name"]
        assert hashes["new"] == hash_key("password") and hashes["old"] != hash_key("password")
        assert unique == [1] or unique == [True]
        assert "OLDSECRET" not in specs["done"] and json.loads(specs["done"])["data_config"] == {"data_path": "x"}
        assert "hf_OLDSECRET" in specs["waiting"]  # it may still run: it needs its token
    finally:
        store.close()
