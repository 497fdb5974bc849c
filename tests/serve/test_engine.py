"""The inference engine on the tiny model: per-adapter outputs equal plain PEFT's, no cross-talk between
interleaved requests, LRU eviction and reload, stop strings, sampling controls, and clear errors."""

from __future__ import annotations

import threading

import pytest
import torch
from serve_helpers import craft_adapter

from tuneforge.errors import TuneforgeError
from tuneforge.serve.engine import GenerationError, InferenceEngine, SamplingParams, UnknownModelError

MESSAGES = [{"role": "user", "content": "what is two plus two?"}]
GREEDY = dict(temperature=0, max_tokens=12, ignore_eos=True)


def hf_greedy(model_dir, adapter_dir, prompt_ids, n):
    """Reference: transformers' own generate() on base (+ PEFT adapter), no tuneforge serving code."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    ids = torch.tensor([prompt_ids])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(prompt_ids) :].tolist()


def token_ids(engine, text):
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_each_adapter_gives_plain_peft_output(engine, tiny_model_dir, adapters):
    prompt_ids = engine.encode(engine.chat_prompt(MESSAGES), chat=True)
    outputs = {}
    for name in ["tiny", "alpha", "beta"]:
        gen = engine.submit(name, prompt_ids, SamplingParams(**GREEDY))
        res = gen.result()
        assert res.finish_reason == "length" and res.completion_tokens == 12
        assert res.prompt_tokens == len(prompt_ids)
        expected = hf_greedy(tiny_model_dir, adapters.get(name), prompt_ids, 12)
        assert res.text == engine.tokenizer.decode(expected, skip_special_tokens=True), name
        outputs[name] = res.text
    assert len(set(outputs.values())) == 3, outputs  # the adapters really change the output


def test_interleaved_concurrent_requests_get_their_own_adapter(engine):
    names = ["alpha", "beta", "tiny", "alpha", "beta", "tiny", "beta", "alpha"]
    reference = {n: engine.generate(n, messages=MESSAGES, **GREEDY).text for n in set(names)}
    assert len(set(reference.values())) == 3
    steps_before, tokens_before = engine.stats.decode_steps, engine.stats.completion_tokens
    results: dict[int, str] = {}
    start = threading.Barrier(len(names))

    def worker(i, name):
        start.wait()
        results[i] = "".join(engine.submit(name, messages=MESSAGES, params=SamplingParams(**GREEDY)))

    threads = [threading.Thread(target=worker, args=(i, n)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {i: results[i] for i in range(len(names))} == {i: reference[n] for i, n in enumerate(names)}
    # They really shared decode steps (three adapters and the base in one batch): far fewer steps than tokens.
    steps = engine.stats.decode_steps - steps_before
    assert engine.stats.max_batch >= 4 and steps < (engine.stats.completion_tokens - tokens_before) / 2


def test_lru_eviction_and_reload(tiny_model_dir, adapters):
    engine = InferenceEngine(
        str(tiny_model_dir), adapters={k: str(v) for k, v in adapters.items()}, max_loaded_adapters=2
    )
    try:
        first = engine.generate("alpha", messages=MESSAGES, **GREEDY).text
        engine.generate("beta", messages=MESSAGES, **GREEDY)
        assert engine.loaded_adapters() == ["alpha", "beta"]
        engine.generate("alpha", messages=MESSAGES, **GREEDY)  # alpha becomes the most recently used
        engine.generate("gamma", messages=MESSAGES, **GREEDY)  # evicts beta, not alpha
        assert engine.loaded_adapters() == ["alpha", "gamma"]
        assert (engine.stats.adapter_loads, engine.stats.adapter_evictions) == (3, 1)
        engine.generate("beta", messages=MESSAGES, **GREEDY)  # reloaded from disk, evicts alpha
        assert engine.loaded_adapters() == ["gamma", "beta"]
        again = engine.generate("alpha", messages=MESSAGES, **GREEDY).text  # reloaded: same output as before
        assert again == first
        assert (engine.stats.adapter_loads, engine.stats.adapter_evictions) == (5, 3)
        # Removing adapters unloads them; with none left the plain base model serves on.
        base = engine.generate(engine.base_name, messages=MESSAGES, **GREEDY).text
        for name in list(engine.adapters()):
            engine.remove_adapter(name)
        assert engine.generate(engine.base_name, messages=MESSAGES, **GREEDY).text == base
        assert engine.loaded_adapters() == [] and engine.model_names() == [engine.base_name]
    finally:
        engine.close()


def test_repointed_adapter_is_reloaded(tiny_model_dir, adapters, tmp_path):
    engine = InferenceEngine(str(tiny_model_dir), adapters={"x": str(adapters["alpha"])})
    try:
        a = engine.generate("x", messages=MESSAGES, **GREEDY).text
        engine.add_adapter("x", adapters["beta"])
        b = engine.generate("x", messages=MESSAGES, **GREEDY).text
        assert a != b and b == engine.generate("x", messages=MESSAGES, **GREEDY).text
        engine.add_adapter("y", adapters["beta"])
        assert engine.generate("y", messages=MESSAGES, **GREEDY).text == b
    finally:
        engine.close()


def test_stop_strings_cut_the_output_and_stream_the_same(engine):
    full = engine.generate("alpha", messages=MESSAGES, temperature=0, max_tokens=24, ignore_eos=True).text
    printable = [i for i in range(4, len(full) - 2) if full[i : i + 2].isprintable() and full[i] != "\ufffd"]
    assert printable, full
    i = printable[len(printable) // 2]
    stop = full[i : i + 2]
    expected = full[: full.find(stop)]
    gen = engine.submit(
        "alpha",
        messages=MESSAGES,
        params=SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=["\x00never", stop]),
    )
    deltas = list(gen)
    assert "".join(deltas) == expected and gen.finish_reason == "stop"
    assert gen.completion_tokens < 24
    assert all(d for d in deltas)


def test_streaming_is_token_by_token(engine):
    gen = engine.submit("beta", messages=MESSAGES, params=SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    deltas = list(gen)
    assert len(deltas) >= 5  # not one block at the end
    assert (
        "".join(deltas)
        == engine.generate("beta", messages=MESSAGES, temperature=0, max_tokens=10, ignore_eos=True).text
    )


def test_seeded_sampling_is_reproducible(engine):
    def run(seed, **kw):
        return engine.generate(
            "alpha", messages=MESSAGES, temperature=1.0, max_tokens=16, seed=seed, ignore_eos=True, **kw
        ).text

    assert run(7) == run(7)
    assert len({run(s) for s in range(4)}) > 1
    assert (
        run(7, top_p=0.01)
        == engine.generate("alpha", messages=MESSAGES, temperature=0, max_tokens=16, ignore_eos=True).text
    )  # top_p tiny: always the top token


def test_end_of_sequence_stops(engine):
    prompt_ids = engine.encode(engine.chat_prompt(MESSAGES), chat=True)
    res = engine.generate("tiny", prompt_ids, temperature=0, max_tokens=64)
    greedy = hf_greedy(engine.model_id, None, prompt_ids, 64)
    if engine.tokenizer.eos_token_id in greedy:
        assert res.finish_reason == "stop" and res.completion_tokens == greedy.index(engine.tokenizer.eos_token_id) + 1
    else:
        assert res.finish_reason == "length"


def test_bad_input_gets_clear_errors(engine, tmp_path, tiny_model_dir):
    with pytest.raises(
        UnknownModelError,
        match="'alpah' is not served here; available: tiny, alpha, beta, gamma"
        r".*did you mean 'alpha'",
    ):
        engine.submit("alpah", messages=MESSAGES)
    with pytest.raises(TuneforgeError, match="temperature must be between 0 and 2"):
        engine.submit("alpha", messages=MESSAGES, params=SamplingParams(temperature=3))
    with pytest.raises(TuneforgeError, match="messages must not be empty"):
        engine.submit("alpha", messages=[])
    with pytest.raises(TuneforgeError, match="context is 1024"):
        engine.submit("alpha", prompt=[5] * 1024)
    with pytest.raises(TuneforgeError, match="does not exist"):
        engine.add_adapter("nope", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TuneforgeError, match="not a PEFT adapter folder"):
        engine.add_adapter("nope", tmp_path / "empty")
    with pytest.raises(TuneforgeError, match="base model's name"):
        engine.add_adapter("tiny", tmp_path / "empty")
    with pytest.raises(TuneforgeError, match="invalid model name"):
        engine.add_adapter("bad name", tmp_path / "empty")
    with pytest.raises(TuneforgeError, match="does not exist"):  # checked before the model is loaded
        InferenceEngine(str(tiny_model_dir), adapters={"a": str(tmp_path / "missing")})


def test_adapter_that_does_not_fit_the_base_fails_that_request_only(engine, tmp_path):
    # An adapter for a different (wider) model: loading fails with a clear message; the engine keeps serving.
    from transformers import AutoModelForCausalLM

    from tiny import tiny_config

    config = tiny_config("llama", vocab_size=len(engine.tokenizer))
    config.hidden_size = 96
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "wide")
    craft_adapter(tmp_path / "wide", tmp_path / "misfit", seed=0)
    engine.add_adapter("misfit", tmp_path / "misfit")
    try:
        with pytest.raises(GenerationError, match=r"adapter 'misfit' .* could not be loaded"):
            engine.generate("misfit", messages=MESSAGES, **GREEDY)
        assert engine.generate("alpha", messages=MESSAGES, **GREEDY).text  # still serving
        assert "misfit" not in engine.loaded_adapters()
    finally:
        engine.remove_adapter("misfit")


def test_merged_model_gives_the_same_output_as_unmerged(engine, adapters, tmp_path):
    from tuneforge.inference import merge_adapter

    merged = merge_adapter(adapters["gamma"], tmp_path / "merged", model_path=engine.model_id)
    merged_engine = InferenceEngine(str(merged))
    try:
        prompt_ids = engine.encode(engine.chat_prompt(MESSAGES), chat=True)
        unmerged = engine.generate("gamma", prompt_ids, temperature=0, max_tokens=20, ignore_eos=True).text
        assert (
            merged_engine.generate(
                merged_engine.base_name, prompt_ids, temperature=0, max_tokens=20, ignore_eos=True
            ).text
            == unmerged
        )
    finally:
        merged_engine.close()
