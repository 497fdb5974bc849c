"""The preference example end to end: reward accuracy on held-out pairs and a generation, before and after ORPO.

    python examples/preference/run.py [--output runs/orders-orpo] [--max-steps N] [--set section.field=value ...]

"Reward accuracy" is the share of held-out pairs (the spec's `test` split, never trained or validated on) whose
chosen answer the model scores higher than the rejected one, by the method's own reward (ORPO: mean token
log-probability). Writes <output>/preference_demo.json with the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main() -> int:
    from tuneforge.demo import greedy_batch
    from tuneforge.inference import load_for_inference
    from tuneforge.models.loader import load_tokenizer, resolve_model
    from tuneforge.models.lora import load_base_model
    from tuneforge.runtime import pick_runtime
    from tuneforge.spec import load_spec
    from tuneforge.train.recipe import (
        preference_objective,
        prepare_spec_data,
        train,
        work_dir_for,
    )

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="runs/orders-orpo")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument(
        "--set", action="append", default=[], help="spec override, e.g. training_config.preference_method=dpo"
    )
    args = ap.parse_args()
    started = time.time()
    overrides = [f"data_config.data_path={HERE / 'pairs.jsonl'}", *args.set]
    if args.max_steps:
        overrides.append(f"training_config.max_steps={args.max_steps}")
    spec = load_spec(HERE / "spec.yaml", overrides)
    tokenizer = load_tokenizer(spec.pretrainedmodel_config.model_path)
    data = prepare_spec_data(spec, tokenizer)  # the same splits train() uses
    runtime = pick_runtime(spec.training_config.precision)
    objective = preference_objective(spec)
    assert objective is not None
    method = spec.training_config.preference
    print(
        f"{method.upper()} on {len(data.train)} train / {len(data.validation)} validation pairs; "
        f"{len(data.test)} held-out test pairs"
    )
    sample = data.test_rows[0]
    prompt_ids = [data.prompt_ids(sample)]

    def measure(model) -> tuple[dict, str]:
        metrics = objective.evaluate(model, data.test, batch_size=8, pad_id=tokenizer.pad_token_id, runtime=runtime)
        with runtime.autocast():
            text = greedy_batch(model, tokenizer, prompt_ids, max_new_tokens=48)[0]
        return metrics, text

    print("[1/3] base model on the held-out pairs ...")
    base = load_base_model(resolve_model(spec.pretrainedmodel_config.model_path), runtime, for_training=False)
    if method == "dpo":  # DPO's reward is relative to the base model itself: 0 for every pair before training
        before, before_text = {"eval_reward_accuracy": 0.0, "eval_reward_margin": 0.0}, measure(base)[1]
    else:
        before, before_text = measure(base)
    del base

    print("[2/3] training ...")
    out = Path(args.output)
    for stale in (out, work_dir_for(out)):
        if stale.exists():
            shutil.rmtree(stale)
    result = train(spec, out)

    print("[3/3] fine-tuned model on the same pairs ...")
    model, _ = load_for_inference(None, result.adapter_dir, dtype=torch.float32)
    after, after_text = measure(model)

    r = result.report
    print("\n" + "=" * 78)
    print(f"{'held-out pairs: ' + str(len(data.test)):32}{'base model':>16}{'fine-tuned':>16}")
    print(f"{'reward accuracy':32}{before['eval_reward_accuracy']:>15.1%} {after['eval_reward_accuracy']:>15.1%}")
    print(f"{'reward margin':32}{before['eval_reward_margin']:>16.4f}{after['eval_reward_margin']:>16.4f}")
    print("=" * 78)
    print(f"sample order : {sample['text']}")
    print(f"chosen       : {sample['chosen']}")
    print(f"rejected     : {sample['rejected']}")
    print(f"base model   : {before_text.strip()[:160]!r}")
    print(f"fine-tuned   : {after_text.strip()[:160]!r}")
    print(
        f"\ntraining: {r['steps']} steps, {r['tokens_per_second']:.0f} tokens/s, {r['train_seconds']:.0f} s; "
        f"total {time.time() - started:.0f} s"
    )
    (result.output_dir / "preference_demo.json").write_text(
        json.dumps(
            {
                "method": method,
                "test_pairs": len(data.test),
                "before": before,
                "after": after,
                "sample": {"order": sample["text"], "base": before_text, "fine_tuned": after_text},
                "steps": r["steps"],
                "tokens_per_second": r["tokens_per_second"],
                "total_seconds": time.time() - started,
            },
            indent=2,
        )
    )
    return 0 if after["eval_reward_accuracy"] > before["eval_reward_accuracy"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
