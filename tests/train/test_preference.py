"""Preference objectives: the losses against the papers' formulas written out independently here, the
completion-only log-probs against a plain full-logits computation, DPO's reference = adapter disabled."""

from __future__ import annotations

import math

import pytest
import torch

from tuneforge.data.example import IGNORE_INDEX, Example
from tuneforge.data.pairs import PairExample
from tuneforge.runtime import pick_runtime
from tuneforge.train.preference import PreferenceObjective, dpo_terms, orpo_terms, sequence_logps, simpo_terms


def _logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# Four pairs' log-probs (summed over the answer's tokens) and answer lengths: made-up but realistic values.
POLICY_C = [-12.0, -30.5, -4.25, -50.0]
POLICY_R = [-15.5, -22.0, -4.0, -80.0]
REF_C = [-13.0, -29.0, -5.0, -49.0]
REF_R = [-14.0, -25.0, -3.5, -79.0]
LEN_C = [6, 20, 3, 25]
LEN_R = [7, 11, 2, 40]


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_dpo_matches_the_paper():
    beta = 0.1
    # Rafailov et al. 2023, eq. 7: -log sigma(beta log(pi(yw)/ref(yw)) - beta log(pi(yl)/ref(yl)))
    expected = [
        -_logsigmoid(beta * (pc - rc) - beta * (pr - rr))
        for pc, pr, rc, rr in zip(POLICY_C, POLICY_R, REF_C, REF_R, strict=True)
    ]
    t = dpo_terms(_t(POLICY_C), _t(POLICY_R), _t(REF_C), _t(REF_R), beta)
    assert t.losses.tolist() == pytest.approx(expected, abs=1e-4)
    assert float(t.losses.mean()) == pytest.approx(sum(expected) / 4, abs=1e-4)
    assert t.chosen_rewards.tolist() == pytest.approx(
        [beta * (pc - rc) for pc, rc in zip(POLICY_C, REF_C, strict=True)]
    )


def test_orpo_matches_the_paper():
    lam = 0.1
    expected = []
    for c, r, lc, lr in zip(POLICY_C, POLICY_R, LEN_C, LEN_R, strict=True):
        # Hong et al. 2024: P(y|x) = exp(mean token log-prob); odds(y) = P / (1 - P);
        # L = L_SFT - lambda * log sigma(log(odds(yw) / odds(yl))), L_SFT = mean token NLL of the chosen answer.
        pw, pl = math.exp(c / lc), math.exp(r / lr)
        log_or = math.log((pw / (1 - pw)) / (pl / (1 - pl)))
        expected.append(-c / lc - lam * _logsigmoid(log_or))
    t = orpo_terms(_t(POLICY_C) / _t(LEN_C), _t(POLICY_R) / _t(LEN_R), lam)
    assert t.losses.tolist() == pytest.approx(expected, abs=1e-4)


def test_orpo_is_finite_when_an_answer_is_nearly_certain():
    t = orpo_terms(torch.tensor([-1e-9, -0.01]), torch.tensor([-3.0, -1e-12]), 0.1)
    assert torch.isfinite(t.losses).all()


def test_simpo_matches_the_paper():
    beta, gamma = 2.0, 0.5
    # Meng et al. 2024, eq. 6: -log sigma(beta/|yw| log pi(yw) - beta/|yl| log pi(yl) - gamma)
    expected = [
        -_logsigmoid(beta / lc * c - beta / lr * r - gamma)
        for c, r, lc, lr in zip(POLICY_C, POLICY_R, LEN_C, LEN_R, strict=True)
    ]
    t = simpo_terms(_t(POLICY_C) / _t(LEN_C), _t(POLICY_R) / _t(LEN_R), beta, gamma)
    assert t.losses.tolist() == pytest.approx(expected, abs=1e-4)


@pytest.fixture(scope="module")
def peft_llama(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    from tiny import build_model

    torch.manual_seed(0)
    model = get_peft_model(build_model("llama"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a non-zero adapter, so policy and reference differ
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model.eval()


def _pairs(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt = torch.randint(5, 300, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()

        def answer(prompt=prompt):
            ids = torch.randint(5, 300, (int(torch.randint(1, 8, (1,), generator=g)),), generator=g).tolist()
            return Example(tuple(prompt + ids), tuple([IGNORE_INDEX] * len(prompt) + ids))

        out.append(PairExample(answer(), answer()))
    return out


def _plain_logps(model, pair_side: Example) -> float:
    """Full logits, no masks, no chunks: log p(answer | prompt) summed over the answer tokens."""
    ids = torch.tensor([pair_side.input_ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    return sum(float(logp[t - 1, tok]) for t, tok in enumerate(pair_side.labels) if tok != IGNORE_INDEX)


def test_sequence_logps_are_completion_only_and_match_full_logits(peft_llama):
    pairs = _pairs()
    obj = PreferenceObjective("orpo", beta=0.1)
    batch = obj.collate(pairs, pad_id=0)
    with torch.no_grad():
        sums, counts = sequence_logps(peft_llama, batch)
        chunked, _ = sequence_logps(peft_llama, batch, chunk_tokens=3)
    sides = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    with torch.no_grad():
        expected = [_plain_logps(peft_llama, s) for s in sides]
    assert sums.tolist() == pytest.approx(expected, abs=1e-4)
    assert chunked.tolist() == pytest.approx(expected, abs=1e-4)
    assert counts.tolist() == [s.n_targets for s in sides]


def test_dpo_reference_is_the_model_with_the_adapter_disabled(peft_llama):
    pairs = _pairs(1)
    runtime = pick_runtime("fp32", "cpu")
    obj = PreferenceObjective("dpo", beta=0.1)
    batch = obj.collate(pairs, pad_id=0)
    ref = obj.reference_logps(peft_llama, batch, runtime)
    with peft_llama.disable_adapter(), torch.no_grad():
        base = [_plain_logps(peft_llama, s) for s in [p.chosen for p in pairs] + [p.rejected for p in pairs]]
    assert ref.tolist() == pytest.approx(base, abs=1e-4)
    with torch.no_grad():
        t = obj.terms(peft_llama, batch, runtime)
        policy, _ = sequence_logps(peft_llama, batch)
    b = len(pairs)
    expected = dpo_terms(policy[:b], policy[b:], ref[:b], ref[b:], 0.1).losses
    assert t.losses.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert not torch.allclose(policy, ref)  # the adapter is really on outside the reference pass


def test_evaluate_averages_over_pairs_and_caches_the_dpo_reference(peft_llama):
    pairs = _pairs(2, n=5)
    runtime = pick_runtime("fp32", "cpu")
    obj = PreferenceObjective("dpo", beta=0.1)
    m1 = obj.evaluate(peft_llama, pairs, batch_size=2, pad_id=0, runtime=runtime)
    assert set(m1) == {
        "eval_loss",
        "eval_reward_accuracy",
        "eval_reward_margin",
        "eval_chosen_logps",
        "eval_rejected_logps",
    }
    assert len(obj._reference_cache) == 5
    with torch.no_grad():
        t = obj.terms(peft_llama, obj.collate(pairs, 0), runtime)
    assert m1["eval_loss"] == pytest.approx(float(t.losses.mean()), abs=1e-5)
    acc = float((t.chosen_rewards > t.rejected_rewards).float().mean())
    assert m1["eval_reward_accuracy"] == pytest.approx(acc)
    assert obj.evaluate(peft_llama, pairs, batch_size=3, pad_id=0, runtime=runtime) == pytest.approx(m1, abs=1e-5)
