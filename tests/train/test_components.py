"""Pure training components: batch order, collation, loss, schedules."""

import math

import pytest
import torch

from tuneforge.data.example import IGNORE_INDEX, Example
from tuneforge.spec import SCHEDULERS, parse_spec
from tuneforge.train.batching import collate, epoch_batches
from tuneforge.train.loss import loss_sum
from tuneforge.train.schedule import WarmupPlateau, build_scheduler


def test_epoch_batches_cover_everything_once_and_are_deterministic():
    lengths = [(i * 37) % 200 + 5 for i in range(1000)]
    a = epoch_batches(lengths, 8, seed=1, epoch=0, group_by_length=True)
    assert sorted(i for b in a for i in b) == list(range(1000))
    assert a == epoch_batches(lengths, 8, seed=1, epoch=0, group_by_length=True)
    assert a != epoch_batches(lengths, 8, seed=1, epoch=1, group_by_length=True)
    # the biggest batch comes first, so an out-of-memory error shows at step 1
    assert max(lengths[i] for i in a[0]) == max(lengths)


def test_length_grouping_cuts_padding():
    lengths = [(i * 7919) % 500 + 10 for i in range(2000)]

    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    grouped = padded(epoch_batches(lengths, 8, seed=0, epoch=0, group_by_length=True))
    plain = padded(epoch_batches(lengths, 8, seed=0, epoch=0, group_by_length=False))
    assert grouped < 0.6 * plain
    assert grouped < 1.05 * sum(lengths)


def test_collate_pads_right_and_masks():
    batch = collate([Example((5, 6, 7), (IGNORE_INDEX, 6, 7)), Example((9,), (9,))], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [9, IGNORE_INDEX, IGNORE_INDEX]]
    assert collate([Example((1, 2, 3), (1, 2, 3))], 0, pad_to_multiple_of=8)["input_ids"].shape == (1, 8)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from tiny import build_model

    return build_model("llama", vocab_size=400).eval()


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 400, (3, 20), generator=g)
    labels = ids.clone()
    labels[:, :8] = IGNORE_INDEX  # prompt
    labels[2, 15:] = IGNORE_INDEX  # padding
    mask = torch.ones_like(ids)
    mask[2, 15:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_completion_only_loss_equals_full_logits_loss(tiny_llama):
    batch = _batch()
    s, n = loss_sum(tiny_llama, batch)
    reference = tiny_llama(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss
    assert n == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert torch.allclose(s / n, reference, rtol=1e-5)


def test_chunked_loss_and_gradients_match_unchunked(tiny_llama):
    batch = _batch(1)
    head = tiny_llama.get_output_embeddings().weight
    head.requires_grad_(True)
    s1, _ = loss_sum(tiny_llama, batch, chunk_tokens=10_000)
    (g1,) = torch.autograd.grad(s1, head)
    s2, _ = loss_sum(tiny_llama, batch, chunk_tokens=7)
    (g2,) = torch.autograd.grad(s2, head)
    head.requires_grad_(False)
    assert torch.allclose(s1, s2, rtol=1e-5)
    assert ((g1 - g2).norm() / g1.norm()).item() < 1e-5


def _lrs(name, steps=100, warmup=10):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = build_scheduler(name, opt, warmup_steps=warmup, total_steps=steps)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("name", [s for s in SCHEDULERS if s != "reduce_lr_on_plateau"])
def test_each_scheduler_warms_up_then_follows_its_shape(name):
    lrs = _lrs(name)
    if name != "constant":
        assert lrs[0] < 0.2 and abs(lrs[10] - 1.0) < 0.02, lrs[:12]  # linear warm-up to the peak
    else:
        assert lrs[0] == 1.0
    if name in ("linear", "cosine", "cosine_with_restarts", "polynomial"):
        assert lrs[-1] < 0.05
    if name == "cosine":
        assert abs(lrs[55] - 0.5) < 0.02  # halfway through the decay
    if name == "linear":
        assert abs(lrs[55] - 0.5) < 0.02
    if name in ("constant", "constant_with_warmup"):
        assert lrs[-1] == 1.0
    if name == "inverse_sqrt":
        assert abs(lrs[40] - math.sqrt(10 / 40)) < 0.02


def test_plateau_halves_after_patience_and_resumes_exactly():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = WarmupPlateau(opt, warmup_steps=4, patience=2)
    for _ in range(5):
        sched.step()
    assert opt.param_groups[0]["lr"] == 1.0
    sched.on_eval(2.0)
    sched.on_eval(1.5)  # improved
    sched.on_eval(1.6)
    assert opt.param_groups[0]["lr"] == 1.0
    sched.on_eval(1.55)  # second evaluation without improvement
    assert opt.param_groups[0]["lr"] == 0.5
    state = sched.state_dict()
    other = WarmupPlateau(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), warmup_steps=4, patience=2)
    other.load_state_dict(state)
    assert other.get_last_lr() == [0.5]


def _lora_llama():
    import sys
    from pathlib import Path

    from peft import LoraConfig, get_peft_model

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from tiny import build_model

    torch.manual_seed(0)
    # init_lora_weights=False: B is random too, so both LoRA factors get gradients from the first step.
    return get_peft_model(
        build_model("llama", vocab_size=400),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )


def _examples():
    g = torch.Generator().manual_seed(3)
    out = []
    for n, prompt in [(12, 5), (7, 3), (16, 9), (9, 2)]:  # uneven lengths: micro-batches pad differently
        ids = tuple(torch.randint(3, 400, (n,), generator=g).tolist())
        out.append(Example(ids, (IGNORE_INDEX,) * prompt + ids[prompt:]))
    return out


def _one_step(micro_batches, max_grad_norm=0.0):
    from tuneforge.runtime import pick_runtime
    from tuneforge.train.recipe import train_step

    model = _lora_llama()
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    result = train_step(
        model,
        micro_batches,
        pad_id=0,
        runtime=pick_runtime("fp32", "cpu"),
        optimizer=optimizer,
        scheduler=scheduler,
        max_grad_norm=max_grad_norm,
    )
    return result, before, dict(model.named_parameters()), model


def test_train_step_accumulation_equals_one_big_batch_and_touches_only_the_adapter():
    ex = _examples()
    whole, before, after_whole, model = _one_step([ex])
    split, _, after_split, _ = _one_step([ex[:1], ex[1:3], ex[3:]])

    # The loss it reports is the per-target-token mean before the update, whatever the micro-batching.
    with torch.no_grad():
        fresh = _lora_llama()
        s, n = loss_sum(fresh, collate(ex, 0))
    assert whole.target_tokens == split.target_tokens == sum(e.n_targets for e in ex) == n
    assert whole.tokens == split.tokens == sum(len(e) for e in ex)
    assert whole.loss == pytest.approx(float(s) / n, rel=1e-5)
    assert split.loss == pytest.approx(whole.loss, rel=1e-5)

    changed = {name for name, p in after_whole.items() if not torch.equal(p, before[name])}
    assert changed and changed == {name for name, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in name for name in changed)
    for name in changed:  # three micro-batches of the per-token mean = one batch of it (same SGD step)
        assert torch.allclose(after_split[name], after_whole[name], atol=1e-6), name
    assert all(p.grad is None for p in model.parameters())  # gradients are cleared for the next step


def test_train_step_clips_the_gradient_norm():
    ex = _examples()
    free, before, _, _ = _one_step([ex])
    clipped, _, after_clipped, _ = _one_step([ex], max_grad_norm=1e-3)
    norm = torch.sqrt(
        sum(
            ((after_clipped[n] - before[n]) / 0.5).pow(2).sum()
            for n in after_clipped
            if not torch.equal(after_clipped[n], before[n])
        )
    )
    assert norm.item() == pytest.approx(1e-3, rel=1e-3)  # the update is lr * the clipped gradient
    assert clipped.loss == free.loss


def test_track_eval_keeps_the_best_and_stops_after_patience():
    from tuneforge.train.checkpoint import TrainerState
    from tuneforge.train.recipe import track_eval

    state = TrainerState()
    seen = []
    for step, loss in [(0, 2.0), (10, 1.5), (20, 1.495), (30, 1.6), (40, 1.7), (50, 1.0)]:
        state.global_step = step
        seen.append(track_eval(state, loss, threshold=0.01, patience=3))
        if state.stopped_early:
            break
    # 1.495 is not better than 1.5 by more than the threshold; the third miss in a row stops the run
    assert seen == [True, True, False, False, False]
    assert (state.best_eval_loss, state.best_step, state.last_eval_loss) == (1.5, 10, 1.7)
    assert state.stopped_early and state.evals_without_improvement == 3


@pytest.mark.parametrize("steps,evals", [(18, 9), (10, 10), (11, 6), (19, 10), (100, 10), (5, 5), (1000, 10)])
def test_the_default_evaluation_interval_gives_about_10_per_run(steps, evals):
    """eval_steps' help says "about 10 times per run": an 18-step run evaluated at every step before (18 // 10 = 1)."""
    from tuneforge.train.plan import make_plan

    spec = parse_spec({"data_config": {"data_path": "x.jsonl"}, "training_config": {"max_steps": steps}})
    plan = make_plan(spec, n_train=100)
    at = [s for s in range(1, plan.total_steps + 1) if s % plan.eval_every == 0 or s == plan.total_steps]
    assert len(at) == evals
