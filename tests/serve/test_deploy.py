"""MonsterAPI-compatible deployments on the fine-tuning service, driven by the official `monsterapi` client
(deploy, status, logs, list, terminate) and the `openai` client (a live deployment answers with `model` = its
name, only to its api_auth_token or its owner's key). In-process service app on a real uvicorn port."""

from __future__ import annotations

import shutil
import time

import openai
import pytest
import requests
from serve_helpers import LiveServer

SURVIVOR = "survivor-token-" + "3" * 24  # api_auth_token: at least 32 characters
MESSAGES = [{"role": "user", "content": "what is two plus two?"}]


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_model_dir, adapters):
    from tuneforge.api.app import create_app
    from tuneforge.jobs.store import Store
    from tuneforge.settings import Settings

    home = tmp_path_factory.mktemp("deploy") / "home"
    settings = Settings(home=home)
    settings.ensure_dirs()
    shutil.copytree(tiny_model_dir, home / "models" / "tiny")
    for name in ("alpha", "beta"):
        shutil.copytree(adapters[name], home / "models" / "adapters" / name)
    store = Store(settings.database_url)
    keys = {
        "alice": store.create_key("alice")[1],
        "bob": store.create_key("bob")[1],
        "root": store.create_key("root", admin=True)[1],
    }
    app = create_app(settings, store=store)
    with LiveServer(app) as live:
        yield live, home, keys, store, app
    app.state.deployments.close()


def mclient(live, key):
    from monsterapi.client import MClient

    return MClient(api_key=key, base_url=live.url + "/v1")


def wait_live(client, deployment_id, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        st = client.get_deployment_status(deployment_id)
        if st["status"] in ("live", "failed"):
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.2)


def payload(home, adapter=None, **kw):
    return {
        "basemodel_path": str(home / "models" / "tiny"),
        "loramodel_path": str(home / "models" / "adapters" / adapter) if adapter else "",
        "prompt_template": "{prompt}{completion}",
        "per_gpu_vram": 24,
        "gpu_count": 1,
        **kw,
    }


def test_monsterapi_client_deploys_and_openai_client_calls_it(svc, engine):
    live, home, keys, _, _ = svc
    alice = mclient(live, keys["alice"])
    ret = alice.deploy("llm", payload(home, "alpha", deployment_name="alice-alpha"))
    assert ret["status"] == "building" and ret["deployment_name"] == "alice-alpha"
    deployment_id, token = ret["deployment_id"], ret["api_auth_token"]
    st = wait_live(alice, deployment_id)
    assert st["status"] == "live", st
    assert st["URL"] == live.url + "/v1" and st["model"] == "alice-alpha"
    assert st["api_auth_token"].endswith("…") and token not in str(st)  # the token is shown once
    assert st["task"] == "causal_lm" and st["labels"] is None

    # The deployment answers with its own token, exactly as the adapter does in a plain engine.
    expected = engine.generate("alpha", messages=MESSAGES, temperature=0, max_tokens=10).text
    oc = openai.OpenAI(base_url=st["URL"], api_key=token, max_retries=0)
    assert [m.id for m in oc.models.list().data] == ["alice-alpha"]
    resp = oc.chat.completions.create(model="alice-alpha", messages=MESSAGES, temperature=0, max_tokens=10)
    assert resp.model == "alice-alpha" and resp.choices[0].message.content == expected
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in oc.chat.completions.create(
            model="alice-alpha", messages=MESSAGES, temperature=0, max_tokens=10, stream=True
        )
        if c.choices
    )
    assert streamed == expected
    # ... and with the owner's key.
    owner = openai.OpenAI(base_url=st["URL"], api_key=keys["alice"], max_retries=0)
    assert (
        owner.chat.completions.create(model="alice-alpha", messages=MESSAGES, temperature=0, max_tokens=10)
        .choices[0]
        .message.content
        == expected
    )

    # Not to another tenant, nor to a made-up token.
    bob = openai.OpenAI(base_url=st["URL"], api_key=keys["bob"], max_retries=0)
    with pytest.raises(openai.NotFoundError):
        bob.chat.completions.create(model="alice-alpha", messages=MESSAGES, max_tokens=2)
    assert bob.models.list().data == []
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=st["URL"], api_key="made-up-token", max_retries=0).models.list()

    logs = alice.get_deployment_logs(deployment_id, n_lines=50)
    text = "\n".join(logs["logs"])
    assert "loading base model" in text and "adapter loaded and checked" in text and "live:" in text
    assert "request: chat" in text
    assert len(alice.get_deployment_logs(deployment_id, n_lines=2)["logs"]) == 2

    listed = alice.get_list_of_deployments()["deployments"]
    assert [d["deployment_id"] for d in listed] == [deployment_id]
    assert mclient(live, keys["bob"]).get_list_of_deployments()["deployments"] == []
    assert deployment_id in [
        d["deployment_id"] for d in mclient(live, keys["root"]).get_list_of_deployments()["deployments"]
    ]

    out = alice.terminate_deployment(deployment_id)
    assert out["status"] == "terminated"
    assert alice.get_deployment_status(deployment_id)["status"] == "terminated"
    with pytest.raises(openai.AuthenticationError):  # a terminated deployment's token is dead
        oc.chat.completions.create(model="alice-alpha", messages=MESSAGES, max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        owner.chat.completions.create(model="alice-alpha", messages=MESSAGES, max_tokens=2)
    with pytest.raises(requests.HTTPError, match="409"):
        alice.terminate_deployment(deployment_id)


def test_deploy_a_finished_job_and_the_base_model(svc, adapters, engine):
    live, home, keys, store, app = svc
    from tuneforge.jobs.store import Store  # noqa: F401  (the job store the service uses)

    # A succeeded job of alice's, its run folder holding the adapter (as a worker leaves it).
    job = store.insert_job(
        owner="alice", key_id=None, spec={}, spec_public={}, dataset_ids=[], runs_dir=app.state.settings.runs_dir
    )
    shutil.copytree(adapters["beta"], f"{job['run_dir']}/adapter")
    assert store.finish(job["id"], "succeeded", from_statuses=("queued",))
    alice = mclient(live, keys["alice"])
    ret = alice.deploy(
        "llm",
        payload(home, deployment_name="from-job", api_auth_token="tok-from-job-" + "1" * 24, max_model_len=64)
        | {"loramodel_path": job["id"]},
    )
    base = alice.deploy("llm", payload(home, deployment_name="plain-base", api_auth_token="tok-plain-base-" + "2" * 24))
    assert wait_live(alice, ret["deployment_id"])["status"] == "live"
    assert wait_live(alice, base["deployment_id"])["status"] == "live"
    oc = openai.OpenAI(base_url=live.url + "/v1", api_key=keys["alice"], max_retries=0)
    assert sorted(m.id for m in oc.models.list().data) == ["from-job", "plain-base"]
    for name, ref in (("from-job", "beta"), ("plain-base", "tiny")):
        got = oc.chat.completions.create(model=name, messages=MESSAGES, temperature=0, max_tokens=8)
        assert (
            got.choices[0].message.content == engine.generate(ref, messages=MESSAGES, temperature=0, max_tokens=8).text
        )
    # max_model_len caps prompt + completion
    resp = oc.completions.create(model="from-job", prompt="the quick brown fox " * 4, temperature=0, max_tokens=500)
    assert resp.usage.total_tokens <= 64
    with pytest.raises(openai.BadRequestError, match="context is 64"):
        oc.completions.create(model="from-job", prompt="the quick brown fox " * 40, max_tokens=5)
    # Both share one base model in memory.
    assert len(app.state.deployments._engines) == 1
    for r in (ret, base):
        alice.terminate_deployment(r["deployment_id"])
    assert app.state.deployments._engines == {}  # freed with the last deployment


def test_deploy_errors(svc):
    live, home, keys, _store, _app = svc
    alice = mclient(live, keys["alice"])
    bad = [
        ({"loramodel_path": "/etc"}, "outside the folders this server reads from"),
        ({"loramodel_path": str(home / "models" / "tiny")}, "not a PEFT adapter folder"),
        ({"loramodel_path": "12345678-1234-1234-1234-123456789abc"}, "no fine-tuning job"),
        ({"loramodel_path": "https://example.com/a.zip"}, "URLs are not supported"),
        ({"basemodel_path": str(home / "models" / "nope")}, "does not exist on the server"),
    ]
    for change, words in bad:
        with pytest.raises(requests.HTTPError, match="422") as exc:
            alice.deploy("llm", payload(home, "alpha") | change)
        assert words in str(exc.value), (change, str(exc.value))
    r = requests.post(
        live.url + "/v1/deploy/llm",
        json={**payload(home, "alpha"), "lora_path": "x"},
        headers={"Authorization": f"Bearer {keys['alice']}"},
    )
    assert r.status_code == 422 and "lora_path" in r.text
    assert requests.get(live.url + "/v1/deploy/list").status_code == 401
    with pytest.raises(requests.HTTPError, match="404"):
        alice.get_deployment_status("12345678-1234-1234-1234-123456789abc")

    # a name in use by a live deployment of the same owner (names are per owner: another tenant's are invisible)
    first = alice.deploy("llm", payload(home, "alpha", deployment_name="dup"))
    with pytest.raises(requests.HTTPError, match="409"):
        alice.deploy("llm", payload(home, "beta", deployment_name="dup"))
    wait_live(alice, first["deployment_id"])
    # bob cannot see or stop alice's deployment
    with pytest.raises(requests.HTTPError, match="404"):
        mclient(live, keys["bob"]).terminate_deployment(first["deployment_id"])
    alice.terminate_deployment(first["deployment_id"])
    again = alice.deploy("llm", payload(home, "beta", deployment_name="dup"))  # the name is free again
    assert wait_live(alice, again["deployment_id"])["status"] == "live"
    alice.terminate_deployment(again["deployment_id"])


def test_an_adapter_that_does_not_fit_fails_with_its_reason(svc, tmp_path):
    live, home, keys, _store, _app = svc
    from serve_helpers import craft_adapter
    from transformers import AutoModelForCausalLM

    from tiny import tiny_config

    config = tiny_config("llama", vocab_size=400)
    config.hidden_size = 96
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "wide")
    craft_adapter(tmp_path / "wide", home / "models" / "adapters" / "misfit", seed=0)
    alice = mclient(live, keys["alice"])
    ret = alice.deploy("llm", payload(home, "misfit", deployment_name="misfit"))
    st = wait_live(alice, ret["deployment_id"])
    assert st["status"] == "failed" and "could not be loaded" in st["error"]
    assert "failed:" in "\n".join(alice.get_deployment_logs(ret["deployment_id"])["logs"])
    oc = openai.OpenAI(base_url=live.url + "/v1", api_key=keys["alice"], max_retries=0)
    with pytest.raises(openai.ConflictError, match="failed"):
        oc.chat.completions.create(model="misfit", messages=MESSAGES, max_tokens=2)
    alice.terminate_deployment(ret["deployment_id"])


def test_a_restarted_service_rebuilds_live_deployments(svc):
    live, home, keys, store, app = svc
    from tuneforge.api.app import create_app

    alice = mclient(live, keys["alice"])
    ret = alice.deploy("llm", payload(home, "alpha", deployment_name="survivor", api_auth_token=SURVIVOR))
    assert wait_live(alice, ret["deployment_id"])["status"] == "live"
    app2 = create_app(app.state.settings, store=store)  # a new server process on the same database
    try:
        app2.state.deployments.wait_idle()
        with LiveServer(app2) as live2:
            oc = openai.OpenAI(base_url=live2.url + "/v1", api_key=SURVIVOR, max_retries=0)
            assert oc.chat.completions.create(model="survivor", messages=MESSAGES, max_tokens=3).choices
    finally:
        app2.state.deployments.close()
    alice.terminate_deployment(ret["deployment_id"])


def test_generate_endpoint_with_the_official_client(svc, engine):
    """MonsterAPI's own deployment endpoint, POST <deployment URL>/generate, through `MClient.generate("deploy-llm")`
    (which validates with the client's DeployLLM model and decodes the JSON-string answer)."""
    from monsterapi.client import MClient

    live, home, keys, _, _ = svc
    alice = mclient(live, keys["alice"])
    ret = alice.deploy(
        "llm",
        payload(home, "alpha", deployment_name="gen-alpha", prompt_template="### Q: {question}\n### A: {completion}"),
    )
    st = wait_live(alice, ret["deployment_id"])
    assert st["generate_base_url"] == live.url + "/v1/deploy/gen-alpha"
    client = MClient(api_key=ret["api_auth_token"], base_url=st["generate_base_url"])

    def ref(prompt, n=8):
        return engine.generate("alpha", prompt, temperature=0, max_tokens=n).text

    out = client.generate(
        "deploy-llm",
        {"prompt": "", "input_variables": {"question": "two plus two?"}, "temperature": 0, "max_tokens": 8},
    )
    assert out == {"text": [ref("### Q: two plus two?\n### A: ")]}
    out = client.generate("deploy-llm", {"prompt": "the quick brown", "temperature": 0, "max_tokens": 6, "n": 2})
    assert out == {"text": [ref("the quick brown", 6)] * 2}  # a prompt is used as is, n outputs
    chunks = list(
        client.generate("deploy-llm", {"prompt": "the quick brown", "temperature": 0, "max_tokens": 6, "stream": True})
    )
    assert len(chunks) > 1 and chunks[-1] == {"text": [ref("the quick brown", 6)]}
    # The deployment's id works in the URL too, and the owner's key as well as the deployment's token.
    by_id = MClient(api_key=keys["alice"], base_url=f"{live.url}/v1/deploy/{ret['deployment_id']}")
    assert by_id.generate("deploy-llm", {"prompt": "the quick brown", "temperature": 0, "max_tokens": 6}) == {
        "text": out["text"][:1]
    }

    url = st["generate_base_url"] + "/generate"
    auth = {"Authorization": f"Bearer {ret['api_auth_token']}"}
    r = requests.post(url, json={"input_variables": {"topic": "x"}}, headers=auth)
    assert r.status_code == 422 and "input_variables: missing 'question'" in r.text
    r = requests.post(url, json={"prompt": "a", "input_variables": {"question": "b"}}, headers=auth)
    assert r.status_code == 422 and "not both" in r.text
    r = requests.post(url, json={"prompt": "a", "n": 0}, headers=auth)
    assert r.status_code == 422
    assert (
        requests.post(url, json={"prompt": "a"}, headers={"Authorization": f"Bearer {keys['bob']}"}).status_code == 404
    )
    alice.terminate_deployment(ret["deployment_id"])


def test_a_template_trained_adapter_is_deployed_with_its_training_prompt(svc, engine, adapters):
    from tuneforge.adapter_card import build_card
    from tuneforge.data.formats import Template, TemplateFormat

    live, home, keys, _, _ = svc
    folder = home / "models" / "adapters" / "alpha-qa"
    shutil.copytree(adapters["alpha"], folder)
    build_card(TemplateFormat(Template.parse("Question: {question}\nAnswer: {answer}")), adds_bos=False, rows=[]).write(
        folder
    )
    alice = mclient(live, keys["alice"])
    body = payload(home, "alpha-qa", deployment_name="qa")
    del body["prompt_template"]  # not given: the adapter's training template
    ret = alice.deploy("llm", body)
    st = wait_live(alice, ret["deployment_id"])
    assert st["prompt_template"] == "Question: {question}\nAnswer: {completion}"
    expected = engine.generate("alpha", "Question: two plus two?\nAnswer: ", temperature=0, max_tokens=8).text
    oc = openai.OpenAI(base_url=st["URL"], api_key=ret["api_auth_token"], max_retries=0)
    chat = oc.chat.completions.create(
        model="qa", messages=[{"role": "user", "content": "two plus two?"}], temperature=0, max_tokens=8
    )
    assert chat.choices[0].message.content == expected
    completion = oc.completions.create(model="qa", prompt="two plus two?", temperature=0, max_tokens=8)
    assert completion.choices[0].text == expected  # the one placeholder takes the prompt
    alice.terminate_deployment(ret["deployment_id"])


def test_metrics_need_an_administrator_key(svc):
    live, _, keys, _, _ = svc
    assert requests.get(live.url + "/metrics", timeout=30).status_code == 401
    r = requests.get(live.url + "/metrics", headers={"Authorization": f"Bearer {keys['alice']}"}, timeout=30)
    assert r.status_code == 403 and "administrator key" in r.json()["detail"]
    r = requests.get(live.url + "/metrics", headers={"Authorization": f"Bearer {keys['root']}"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "# TYPE tuneforge_time_to_first_token_seconds histogram" in r.text
    assert "# TYPE tuneforge_queue_depth gauge" in r.text


def test_a_deployment_s_serving_metrics_for_its_owner(svc, engine):
    """GET /v1/deploy/metrics/{id}: the Prometheus figures of one deployment, readable by its owner (not only by an
    administrator's scraper), counting its own requests and tokens."""
    live, home, keys, _, _ = svc
    alice = mclient(live, keys["alice"])
    ret = alice.deploy("llm", payload(home, "alpha", deployment_name="alice-metrics"))
    deployment_id = ret["deployment_id"]
    url = f"{live.url}/v1/deploy/metrics/{deployment_id}"
    owner = {"Authorization": f"Bearer {keys['alice']}"}
    assert wait_live(alice, deployment_id)["status"] == "live"
    before = requests.get(url, headers=owner, timeout=30).json()
    assert before["deployment_name"] == "alice-metrics" and before["queue_depth"] == 0, before
    assert before["loaded_adapters"] >= 1 and before["registered_adapters"] >= 1, before

    client = openai.OpenAI(api_key=ret["api_auth_token"], base_url=live.url + "/v1")
    for _ in range(2):
        client.completions.create(model="alice-metrics", prompt="what is 2 plus 2?", max_tokens=5, temperature=0)
    after = requests.get(url, headers=owner, timeout=30).json()
    assert after["requests"] == before["requests"] + 2, (before, after)
    assert after["generated_tokens"] - before["generated_tokens"] == 10  # max_tokens 5, no stop on a random model
    assert after["requests_by_finish_reason"]["length"] >= 2 and after["time"] > before["time"]
    ttft = after["ttft_seconds"]
    assert ttft["count"] == after["requests"] and 0 < ttft["p50"] <= ttft["p90"] <= ttft["p99"], ttft
    assert after["tpot_seconds"]["count"] >= 2 and after["tpot_seconds"]["mean"] > 0

    assert requests.get(url, headers={"Authorization": f"Bearer {keys['bob']}"}, timeout=30).status_code == 404
    alice.terminate_deployment(deployment_id)
    gone = requests.get(url, headers=owner, timeout=30)
    assert gone.status_code == 409 and "is terminated" in gone.json()["detail"], gone.text


def test_histogram_quantiles_interpolate_as_prometheus_does():
    from tuneforge.serve.metrics import quantile

    inf = float("inf")
    buckets = [(0.1, 2.0), (0.5, 6.0), (1.0, 10.0), (inf, 10.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (5 - 2) / 4)  # the 5th of 10 is in (0.1, 0.5]
    assert quantile(0.1, buckets) == pytest.approx(0.1 * 1 / 2)
    assert quantile(0.99, buckets) == pytest.approx(0.5 + 0.5 * (9.9 - 6) / 4)
    assert quantile(0.5, [(0.1, 0.0), (inf, 0.0)]) is None  # nothing observed yet
    assert quantile(0.9, [(0.1, 1.0), (inf, 10.0)]) == 0.1  # beyond the last finite bound: that bound


def test_a_classifier_adapter_deploys_and_answers_classify(svc):
    """A classifier adapter (a Llama classification head on the tiny base) deployed like any other: it answers
    POST /v1/classify with its labels, to its token only, and refuses generation requests."""
    from tuneforge.adapter_card import classification_card
    from tuneforge.models.loader import resolve_model
    from tuneforge.models.lora import LoraSettings, apply_lora, load_base_model
    from tuneforge.runtime import pick_runtime

    live, home, keys, _, _ = svc
    labels = ["ham", "spam"]
    resolved = resolve_model(str(home / "models" / "tiny"))
    base = load_base_model(resolved, pick_runtime("fp32"), labels=labels, pad_token_id=0)
    model, _, _ = apply_lora(
        base, LoraSettings(r=4, alpha=8), model_id=resolved.model_id, quantized=False,
        gradient_checkpointing=False, seed=0, classification=True,
    )  # fmt: skip
    folder = home / "models" / "adapters" / "clf"
    model.save_pretrained(folder)
    classification_card(labels, text_column="text", max_length=64, base_model={}).write(folder)

    alice = mclient(live, keys["alice"])
    ret = alice.deploy("llm", payload(home, "clf", deployment_name="alice-clf"))
    st = wait_live(alice, ret["deployment_id"])
    assert st["status"] == "live", st
    assert st["task"] == "classification" and st["labels"] == labels, st  # the order of /v1/classify's probs
    owner = {"Authorization": f"Bearer {keys['alice']}"}
    r = requests.get(f"{live.url}/v1/deploy/metrics/{ret['deployment_id']}", headers=owner, timeout=30)
    assert r.status_code == 409 and "a classifier" in r.json()["detail"], r.text
    headers = {"Authorization": f"Bearer {ret['api_auth_token']}"}
    r = requests.post(live.url + "/v1/classify", json={"model": "alice-clf", "input": ["a", "b c"]}, headers=headers)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == [0, 1] and all(d["label"] in labels and d["num_classes"] == 2 for d in data)
    assert all(abs(sum(d["probs"]) - 1) < 1e-5 for d in data)
    assert data[0]["probs"] != data[1]["probs"]
    other = {"Authorization": f"Bearer {keys['bob']}"}
    r = requests.post(live.url + "/v1/classify", json={"model": "alice-clf", "input": "a"}, headers=other)
    assert r.status_code == 404
    r = requests.post(
        live.url + "/v1/completions", json={"model": "alice-clf", "prompt": "a", "max_tokens": 2}, headers=headers
    )
    assert r.status_code == 400 and "POST /v1/classify" in r.json()["error"]["message"]


def test_an_image_classifier_adapter_deploys_as_one(svc):
    """An image classifier (a tiny ViT) deployed like the text one: its status says image_classification with its
    labels (the UI shows no text playground for it), and /v1/classify takes image data URLs."""
    import base64

    from tiny_images import png_bytes, save_tiny_vision_base
    from tuneforge.adapter_card import classification_card
    from tuneforge.models.loader import load_image_processor, resolve_model
    from tuneforge.models.lora import LoraSettings, apply_lora, load_base_model
    from tuneforge.runtime import pick_runtime

    live, home, keys, _, _ = svc
    labels = ["blue", "red"]
    base_dir = save_tiny_vision_base(home / "models" / "vit", "vit")
    resolved = resolve_model(str(base_dir))
    base = load_base_model(resolved, pick_runtime("fp32"), labels=labels, vision=True)
    model, _, _ = apply_lora(
        base, LoraSettings(r=4, alpha=8), model_id=resolved.model_id, quantized=False,
        gradient_checkpointing=False, seed=0, vision=True,
    )  # fmt: skip
    folder = home / "models" / "adapters" / "colours"
    model.save_pretrained(folder)
    load_image_processor(str(base_dir)).save_pretrained(folder)
    classification_card(labels, task="image_classification", image_column="image", base_model={}).write(folder)

    alice = mclient(live, keys["alice"])
    ret = alice.deploy("llm", payload(home, "colours", deployment_name="alice-colours", basemodel_path=str(base_dir)))
    st = wait_live(alice, ret["deployment_id"])
    assert st["status"] == "live", st
    assert st["task"] == "image_classification" and st["labels"] == labels, st
    headers = {"Authorization": f"Bearer {ret['api_auth_token']}"}
    url = "data:image/png;base64," + base64.b64encode(png_bytes("red", 0)).decode()
    r = requests.post(live.url + "/v1/classify", json={"model": "alice-colours", "input": [url]}, headers=headers)
    assert r.status_code == 200, r.text
    (item,) = r.json()["data"]
    assert item["label"] in labels and item["num_classes"] == 2
    alice.terminate_deployment(ret["deployment_id"])


def test_a_seq2seq_adapter_deploys_and_answers_completions(svc):
    """A seq2seq adapter on a tiny T5 deployed like any other: it answers POST /v1/completions to its token only,
    is listed with the other deployments, and refuses chat requests naming the route to use."""
    from tiny import save_tiny_seq2seq
    from tuneforge.adapter_card import seq2seq_card
    from tuneforge.models.loader import resolve_model
    from tuneforge.models.lora import LoraSettings, apply_lora, load_base_model
    from tuneforge.runtime import pick_runtime

    live, home, keys, _, _ = svc
    base_dir = save_tiny_seq2seq(home / "models" / "t5", "t5")
    resolved = resolve_model(str(base_dir))
    base = load_base_model(resolved, pick_runtime("fp32"), seq2seq=True)
    model, _, _ = apply_lora(
        base, LoraSettings(r=4, alpha=8), model_id=resolved.model_id, quantized=False,
        gradient_checkpointing=False, seed=0, seq2seq=True,
    )  # fmt: skip
    folder = home / "models" / "adapters" / "s2s"
    model.save_pretrained(folder)
    seq2seq_card(text_column="source", target_column="target", max_length=32).write(folder)

    alice = mclient(live, keys["alice"])
    ret = alice.deploy("llm", payload(home, "s2s", deployment_name="alice-s2s", basemodel_path=str(base_dir)))
    st = wait_live(alice, ret["deployment_id"])
    assert st["status"] == "live", st
    assert st["task"] == "seq2seq" and st["labels"] is None, st
    owner = {"Authorization": f"Bearer {keys['alice']}"}
    r = requests.get(f"{live.url}/v1/deploy/metrics/{ret['deployment_id']}", headers=owner, timeout=30)
    assert r.status_code == 409 and "a seq2seq model" in r.json()["detail"], r.text
    headers = {"Authorization": f"Bearer {ret['api_auth_token']}"}
    body = {"model": "alice-s2s", "prompt": ["reverse: fox dog", "over"], "max_tokens": 4, "temperature": 0}
    r = requests.post(live.url + "/v1/completions", json=body, headers=headers)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model"] == "alice-s2s" and [c["index"] for c in answer["choices"]] == [0, 1]
    assert answer["usage"]["completion_tokens"] > 0
    models = requests.get(live.url + "/v1/models", headers=headers).json()["data"]
    assert [m["id"] for m in models].count("alice-s2s") == 1
    other = {"Authorization": f"Bearer {keys['bob']}"}
    assert requests.post(live.url + "/v1/completions", json=body, headers=other).status_code == 404
    chat = {"model": "alice-s2s", "messages": [{"role": "user", "content": "a"}], "max_tokens": 2}
    r = requests.post(live.url + "/v1/chat/completions", json=chat, headers=headers)
    assert r.status_code == 400 and "POST /v1/completions" in r.json()["error"]["message"]
    alice.terminate_deployment(ret["deployment_id"])


def test_int8_weights_for_cpu_deployments(tmp_path):
    """`TUNEFORGE_SERVE_WEIGHTS=int8`: deployments on a CPU decode with the q8_0 step (over float32 activations, the
    format's requirement, even where `auto` would pick bf16); a GPU deployment keeps its dense weights."""
    import pydantic

    from tuneforge.api.app import create_app
    from tuneforge.jobs.store import Store
    from tuneforge.serve.deployments import engine_options_for
    from tuneforge.settings import Settings

    assert engine_options_for({"weights": "int8", "max_batch_size": 4}, "cpu") == {
        "weights": "int8",
        "dtype": "float32",
        "max_batch_size": 4,
    }
    assert engine_options_for({"weights": "int8"}, "cuda:0") == {"weights": "dense"}
    assert engine_options_for({"weights": "dense"}, "cpu") == {"weights": "dense"}
    with pytest.raises(pydantic.ValidationError, match="serve_weights"):
        Settings(home=tmp_path, serve_weights="int4")
    settings = Settings(home=tmp_path, serve_weights="int8")
    settings.ensure_dirs()
    store = Store(settings.database_url)
    app = create_app(settings, store=store)
    try:
        assert app.state.deployments.engine_options["weights"] == "int8"
    finally:
        app.state.deployments.close()
        store.close()
