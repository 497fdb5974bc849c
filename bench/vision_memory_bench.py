"""Image-classification memory estimate (models/vision_memory.py) against measurements, on random models.

For each model: build it with random weights from a config (the tiny test models, or a catalog entry's shape), load
it the way training does (models/lora.load_base_model + apply_lora), then
- saved: the bytes autograd keeps for one training forward (torch.autograd.graph.saved_tensors_hooks, parameters
  excluded), against the estimate's activation term without the CPU allocator factor;
- rss: peak RSS (ru_maxrss) of a fresh process running `--steps` AdamW training steps, against the estimate's total.
Prints estimate/measured ratios. CPU only; the machine is shared, so RSS includes whatever the allocator keeps.

    python bench/vision_memory_bench.py [--catalog] [--batch-size 2] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build(folder: Path, arch: str, sizes: dict) -> None:
    import torch
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    config = AutoConfig.for_model(arch, num_labels=3, **sizes)
    names = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES[arch]
    cls = getattr(transformers, names[0] if isinstance(names, tuple) else names)
    config.architectures = [cls.__name__]
    torch.manual_seed(0)
    cls(config).save_pretrained(folder)


def trained_model(folder: Path, precision: str):
    from tuneforge.models.loader import resolve_model
    from tuneforge.models.lora import LoraSettings, apply_lora, load_base_model
    from tuneforge.runtime import pick_runtime

    runtime = pick_runtime(precision, "cpu")
    base = load_base_model(resolve_model(str(folder)), runtime, labels=["a", "b", "c"], vision=True)
    model, _, _ = apply_lora(
        base, LoraSettings(r=8), model_id="bench", quantized=False, gradient_checkpointing=False, seed=0, vision=True
    )
    return model, runtime


def saved_bytes(model, runtime, batch_size: int, image_size: int) -> int:
    """Bytes of the tensors autograd saves in one training forward, parameters (counted in the weights) excluded."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    model.train()
    x = torch.randn(batch_size, 3, image_size, image_size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), runtime.autocast():
        model(pixel_values=x)
    return sum(seen.values())


def train_steps(folder: str, precision: str, batch_size: int, image_size: int, steps: int) -> None:
    """In a fresh process: `steps` training steps, then print peak RSS."""
    import torch

    model, runtime = trained_model(Path(folder), precision)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    for _ in range(steps):
        x = torch.randn(batch_size, 3, image_size, image_size)
        y = torch.randint(0, 3, (batch_size,))
        with runtime.autocast():
            logits = model(pixel_values=x).logits.float()
        torch.nn.functional.cross_entropy(logits, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--catalog", action="store_true", help="also the catalog's shapes at 224 x 224")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--only", default=None, help="only the models whose name contains this")
    parser.add_argument("--no-rss", action="store_true", help="only the saved-tensor comparison")
    parser.add_argument("--_train", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._train:
        folder, precision, image_size, steps = args._train
        train_steps(folder, precision, args.batch_size, int(image_size), int(steps))
        return

    from transformers import AutoConfig

    from tiny_images import TINY_VISION_CONFIGS
    from tuneforge.models.catalog import VISION_CATALOG
    from tuneforge.models.memory import CPU_ALLOCATOR_FACTOR, format_bytes
    from tuneforge.models.vision_memory import VisionShape, estimate_image_training_memory

    cases = [(f"tiny-{arch}", arch, dict(sizes), 32) for arch, sizes in TINY_VISION_CONFIGS.items()]
    if args.catalog:
        cases += [(e.alias, e.architecture, dict(e.config), e.context_length) for e in VISION_CATALOG]
    print(f"precision {args.precision}, batch {args.batch_size}, LoRA r=8 on the default targets, CPU")
    print(f"{'model':<24} {'saved':>9} {'est.':>9} {'ratio':>6} {'peak RSS':>9} {'est.':>9} {'ratio':>6}")
    for name, arch, sizes, image_size in cases:
        if args.only and args.only not in name:
            continue
        sizes = {k: v for k, v in sizes.items() if k != "num_labels"}
        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp), arch, sizes)
            config = AutoConfig.from_pretrained(tmp)
            shape = VisionShape.from_config(config, image_size=image_size)
            est = estimate_image_training_memory(
                shape, batch_size=args.batch_size, device="cpu", precision=args.precision
            )
            model, runtime = trained_model(Path(tmp), args.precision)
            saved = saved_bytes(model, runtime, args.batch_size, image_size)
            del model
            autograd = est.activations / CPU_ALLOCATOR_FACTOR + est.workspace
            line = f"{name:<24} {saved / 2**20:8.1f}M {autograd / 2**20:8.1f}M {autograd / saved:6.2f}"
            if not args.no_rss:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--batch-size",
                        str(args.batch_size),
                        "--_train",
                        tmp,
                        args.precision,
                        str(image_size),
                        str(args.steps),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                rss = json.loads(out.strip().splitlines()[-1])["peak_rss"]
                line += f" {format_bytes(rss):>9} {format_bytes(est.total):>9} {est.total / rss:6.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
