"""TokenSampler's logit processing on crafted logits: logit bias, presence/frequency penalties, log probabilities
and a JSON-schema constraint (llguidance) on the tiny tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from serve_helpers import PET

from tuneforge.errors import TuneforgeError
from tuneforge.serve.sampling import SamplingParams, TokenSampler


def greedy(**kw) -> TokenSampler:
    return TokenSampler(SamplingParams(temperature=0, **kw), "cpu")


def test_logit_bias_moves_the_choice():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert greedy().choose(logits) == 0
    assert greedy(logit_bias={2: 5.0}).choose(logits) == 2
    assert greedy(logit_bias={0: -100.0}).choose(logits) == 1
    sampled = TokenSampler(SamplingParams(temperature=1.0, seed=0, logit_bias={3: 100.0}), "cpu")
    assert {sampled.choose(logits) for _ in range(20)} == {3}


def test_frequency_penalty_grows_with_each_occurrence_presence_does_not():
    logits = torch.tensor([2.0, 0.0, -5.0])  # token 0 leads token 1 by 2
    freq = greedy(frequency_penalty=0.9)
    assert [freq.choose(logits) for _ in range(4)] == [0, 0, 0, 1]  # 2 - 0.9k < 0 from the third repeat on
    presence = greedy(presence_penalty=1.5)
    assert [presence.choose(logits) for _ in range(4)] == [0, 0, 0, 0]  # a flat 1.5, once
    both = greedy(presence_penalty=1.5, frequency_penalty=0.6)
    assert [both.choose(logits) for _ in range(2)] == [0, 1]  # 2 - 1.5 - 0.6 < 0
    assert greedy(frequency_penalty=-1.0).choose(torch.tensor([0.0, 0.5])) == 1  # negative: repetition favoured


def test_logprobs_are_the_models_own_distribution():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.0])
    sampler = greedy(logprobs=2, logit_bias={3: 50.0})
    token = sampler.choose(logits)
    expected = torch.log_softmax(logits, -1)
    record = sampler.last_logprob
    assert token == 3 and record.token == 3
    # raw: before the bias that made token 3 win
    assert record.logprob == pytest.approx(float(expected[3]))
    assert [t for t, _ in record.top] == [1, 2]
    assert [lp for _, lp in record.top] == pytest.approx([float(expected[1]), float(expected[2])])
    zero = greedy(logprobs=0)
    zero.choose(logits)
    assert zero.last_logprob.top == [] and greedy().last_logprob is None


def test_params_are_checked_with_the_field_named():
    with pytest.raises(TuneforgeError, match=r"logit_bias: token id 9 is not in this model's vocabulary \[0, 4\)"):
        SamplingParams(logit_bias={9: 1.0}).check(vocab_size=4)
    with pytest.raises(TuneforgeError, match="between -100 and 100, got 101"):
        SamplingParams(logit_bias={1: 101.0}).check()
    with pytest.raises(TuneforgeError, match="presence_penalty must be between -2 and 2, got 3"):
        SamplingParams(presence_penalty=3).check()
    with pytest.raises(TuneforgeError, match="top_logprobs must be between 0 and 20, got 21"):
        SamplingParams(logprobs=21).check()


@pytest.fixture(scope="module")
def grammars(tiny_tokenizer):
    from tuneforge.serve.grammar import GrammarCompiler

    return GrammarCompiler(tiny_tokenizer, len(tiny_tokenizer) + 8, {tiny_tokenizer.eos_token_id})


def test_constrained_sampling_from_noise_gives_valid_json(grammars, tiny_tokenizer):
    """Random logits (what an untrained model gives) still produce documents that parse and match the schema."""
    grammar = grammars.json_schema(PET, field="response_format")
    eos = tiny_tokenizer.eos_token_id
    for seed in range(5):
        sampler = TokenSampler(SamplingParams(seed=seed), "cpu", grammars.constraint(grammar))
        noise = torch.Generator().manual_seed(seed)
        ids: list[int] = []
        while not sampler.finished and len(ids) < 200:
            token = sampler.choose(torch.randn(len(tiny_tokenizer) + 8, generator=noise) * 3)
            if token == eos:
                break
            ids.append(token)
            assert token < len(tiny_tokenizer)  # the embedding's padding rows are never chosen
        doc = json.loads(tiny_tokenizer.decode(ids))
        assert list(doc) == ["kind", "age", "name"] and doc["kind"] in ("cat", "dog")
        assert 0 <= doc["age"] <= 30 and len(doc["name"]) <= 6


def test_a_bad_schema_names_the_field(grammars):
    with pytest.raises(TuneforgeError, match="tools: "):
        grammars.json_schema({"type": "object", "properties": {"a": {"type": "no-such-type"}}}, field="tools")
    with pytest.raises(TuneforgeError, match="response_format: a JSON schema must be an object"):
        grammars.json_schema(["not", "a", "schema"], field="response_format")
