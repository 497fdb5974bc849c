"""The path policy: what a tenant's job may make the server read."""

from __future__ import annotations

import os

import pytest

from tuneforge.jobs.paths import PathPolicy, PathRejected, classify_data_path, classify_model_path


@pytest.fixture
def policy(tmp_path):
    home = tmp_path / "home"
    for d in ("models", "datasets", "uploads/ds_1", "runs"):
        (home / d).mkdir(parents=True)
    (home / "datasets" / "ok.jsonl").write_text("{}\n")
    (home / "uploads" / "ds_1" / "bob.jsonl").write_text("{}\n")
    (tmp_path / "outside.jsonl").write_text("{}\n")
    # The operator allows the whole home (a mistake): the service's private folders must stay closed anyway.
    return PathPolicy([home / "models", home / "datasets", home], [home / "uploads", home / "runs"]), home


def test_files_inside_allowed_folders_pass(policy):
    pol, home = policy
    assert pol.local(str(home / "datasets" / "ok.jsonl"), "data_config.data_path") == os.path.realpath(
        home / "datasets" / "ok.jsonl"
    )


@pytest.mark.parametrize(
    "raw",
    [
        "/etc/passwd",
        "{home}/datasets/../../outside.jsonl",
        "{home}/uploads/ds_1/bob.jsonl",
        "{home}/runs",
        "datasets/ok.jsonl",
        "./ok.jsonl",
        "~/../../etc/shadow",
    ],
)
def test_outside_private_and_relative_paths_are_refused_naming_the_field(policy, raw):
    pol, home = policy
    with pytest.raises(PathRejected) as err:
        pol.local(raw.format(home=home), "data_config.data_path")
    assert str(err.value).startswith("data_config.data_path: ")
    assert err.value.field == "data_config.data_path"


def test_symlinks_cannot_step_outside(policy, tmp_path):
    pol, home = policy
    os.symlink("/etc/passwd", home / "datasets" / "innocent.jsonl")
    os.symlink(tmp_path, home / "datasets" / "escape")
    for raw in (home / "datasets" / "innocent.jsonl", home / "datasets" / "escape" / "outside.jsonl"):
        with pytest.raises(PathRejected, match="outside the folders"):
            pol.local(str(raw), "data_config.data_path")


def test_missing_files_are_reported_only_inside_allowed_folders(policy):
    pol, home = policy
    with pytest.raises(PathRejected, match="does not exist"):
        pol.local(str(home / "datasets" / "nope.jsonl"), "f")
    with pytest.raises(PathRejected, match="outside the folders"):  # no probing for files elsewhere
        pol.local("/nonexistent/secret.jsonl", "f")


def test_urls_to_loopback_and_private_addresses_are_refused(policy):
    pol, _ = policy
    for url in (
        "http://127.0.0.1:8000/x.jsonl",
        "http://localhost/x.csv",
        "http://169.254.169.254/latest/",
        "http://10.1.2.3/data.json",
    ):
        with pytest.raises(PathRejected, match="loopback/private"):
            pol.url(url, "data_config.data_path")
    assert PathPolicy([], [], allow_private_urls=True).url("http://127.0.0.1/x", "f") == "http://127.0.0.1/x"


def test_classification():
    assert classify_data_path("https://example.com/a.jsonl") == "url"
    assert classify_data_path("s3://bucket/a.jsonl") == "scheme"
    assert classify_data_path("ds_0123456789abcdef") == "dataset"
    assert classify_data_path("tatsu-lab/alpaca") == "hub"
    assert classify_data_path("train.jsonl") == "local"  # a file name, not a hub id
    assert classify_data_path("../x") == "local"
    assert classify_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "hub"
    assert classify_model_path("smollm2-135m") == "hub"
    assert classify_model_path("/models/x") == "local"
    assert classify_model_path("~/x") == "local"
