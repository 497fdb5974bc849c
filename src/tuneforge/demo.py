"""`tuneforge demo`: fine-tune SmolLM2-135M-Instruct on a small task and show that it learned.

The task (examples/demo/): turn a free-text shop order into one line of JSON with fixed keys. The base model
answers with prose or other keys; exact match on held-out orders measures whether the adapter learned the format.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from .errors import TuneforgeError
from .inference import load_for_inference
from .models.loader import load_tokenizer, resolve_model
from .models.lora import load_base_model
from .runtime import pick_runtime
from .spec import load_spec
from .train.plan import prepare_spec_data, work_dir_for
from .train.recipe import evaluate, train


def find_demo_dir() -> Path:
    """examples/demo in the source checkout (the package is installed editable by `make demo`), or under cwd."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        candidate = root / "examples" / "demo"
        if (candidate / "spec.yaml").is_file():
            return candidate
    raise TuneforgeError("the demo files (examples/demo/spec.yaml) were not found; run the demo from a tuneforge checkout")


@torch.no_grad()
def greedy_batch(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy completions for prompts given as token ids, batched with left padding."""
    pad = tokenizer.pad_token_id
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=model.device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, top_p=None, top_k=None,
                             temperature=None)
        outputs.extend(tokenizer.decode(row[width:], skip_special_tokens=True) for row in out)
    return outputs


def exact_match(predictions: list[str], references: list[str]) -> float:
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)) / max(len(references), 1)


def _evaluate(model, tokenizer, data, examples, rows, runtime) -> tuple[float, float, list[str]]:
    loss = evaluate(model, examples, batch_size=16, pad_id=tokenizer.pad_token_id, runtime=runtime)
    prompts = [data.prompt_ids(r) for r in rows]
    with runtime.autocast():
        predictions = greedy_batch(model, tokenizer, prompts, max_new_tokens=48)
    return loss, exact_match(predictions, [data.reference(r) for r in rows]), predictions


def run_demo(output: str = "runs/demo", max_steps: int | None = None) -> int:
    started = time.time()
    demo_dir = find_demo_dir()
    overrides = [f"data_config.data_path={demo_dir / 'orders.jsonl'}"]
    if max_steps:
        overrides.append(f"training_config.max_steps={max_steps}")
    spec = load_spec(demo_dir / "spec.yaml", overrides)
    d = spec.data_config
    print(f"tuneforge demo: LoRA fine-tune of {spec.pretrainedmodel_config.model_path} on {demo_dir / 'orders.jsonl'}")
    print(f"task: {d.prompt_template!r}")

    tokenizer = load_tokenizer(spec.pretrainedmodel_config.model_path)
    data = prepare_spec_data(spec, tokenizer)  # the same splits train() will use
    runtime = pick_runtime(spec.training_config.precision)
    print(f"data: {len(data.train)} train, {len(data.validation)} validation, {len(data.test)} held-out test rows")

    print("\n[1/3] base model: validation loss and exact match on the held-out rows ...")
    base = load_base_model(resolve_model(spec.pretrainedmodel_config.model_path), runtime, for_training=False)
    before_loss, before_em, before_pred = _evaluate(base, tokenizer, data, data.validation, data.test_rows, runtime)
    del base

    print("[2/3] fine-tuning (LoRA) ...")
    out = Path(output)
    for stale in (out, work_dir_for(out)):
        if stale.exists():
            shutil.rmtree(stale)  # the demo always starts fresh
    result = train(spec, out)

    print("[3/3] fine-tuned model: the same measurements ...")
    model, _ = load_for_inference(None, result.adapter_dir, dtype=torch.float32)
    after_loss, after_em, after_pred = _evaluate(model, tokenizer, data, data.validation, data.test_rows, runtime)

    sample = data.test_rows[0]
    r = result.report
    print("\n" + "=" * 78)
    print(f"{'':28}{'base model':>16}{'fine-tuned':>16}")
    print(f"{'validation loss':28}{before_loss:>16.4f}{after_loss:>16.4f}")
    print(f"{'exact match (held-out)':28}{before_em:>15.1%} {after_em:>15.1%}")
    print("=" * 78)
    print(f"sample order : {sample['text']}")
    print(f"expected     : {data.reference(sample)}")
    print(f"base model   : {before_pred[0].strip()[:160]!r}")
    print(f"fine-tuned   : {after_pred[0].strip()[:160]!r}")
    print(f"\ntraining: {r['steps']} steps, {r['tokens_per_second']:.0f} tokens/s, {r['train_seconds']:.0f} s; "
          f"{r['trainable_parameters']:,} trainable parameters ({r['trainable_share']:.2%}); "
          f"demo total {time.time() - started:.0f} s")
    print(f"adapter: {result.adapter_dir}   loss curve: {result.output_dir / 'loss.png'}")
    (result.output_dir / "demo.json").write_text(json.dumps({
        "before": {"validation_loss": before_loss, "exact_match": before_em},
        "after": {"validation_loss": after_loss, "exact_match": after_em},
        "test_rows": len(data.test_rows), "total_seconds": time.time() - started,
    }, indent=2))
    if not (after_em > before_em and after_loss < before_loss):
        print("the fine-tuned model did not beat the base model", flush=True)
        return 1
    return 0
