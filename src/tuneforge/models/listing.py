"""`tuneforge models [--json]`: the catalog as a table (or JSON), with the estimated memory for LoRA and QLoRA.

Two functions so the main CLI can mount the command: `add_models_arguments(parser)` and `run_models(args)`;
`catalog_rows(...)` is the data both print (and what an API route would return).
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import TuneforgeError
from ..runtime import resolve_optimizer
from ..spec import TASKS
from .catalog import (
    CATALOG,
    ENCODER_CATALOG,
    PROMPT_STYLES,
    QLORA_NOT_QUANTIZED,
    SEQ2SEQ_CATALOG,
    VISION_CATALOG,
    CatalogEntry,
)
from .memory import ModelShape, TrainingSetup, estimate_training_memory
from .vision_memory import VisionShape, estimate_image_training_memory

# The reference job the table's memory columns assume (a typical single-GPU fine-tune); all adjustable by options.
REFERENCE = TrainingSetup(
    batch_size=1, seq_len=1024, lora_r=8, gradient_checkpointing=True, precision="bf16", device="cuda"
)


def add_models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (every field, the memory breakdown)")
    parser.add_argument("--family", default=None, help="only models whose family or architecture contains this")
    parser.add_argument(
        "--task",
        choices=(*TASKS, "all"),
        default="causal_lm",
        help="models for this data_config.task: causal_lm (text generation, the default), classification (encoders "
        "such as BERT and decoders with a classification head), image_classification (ViT, DeiT, ConvNeXt, ResNet), "
        "seq2seq (encoder-decoders such as T5 and BART), or all",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=REFERENCE.batch_size,
        help=f"micro-batch for the memory estimate (default {REFERENCE.batch_size})",
    )
    parser.add_argument(
        "--seq-len",
        type=int,
        default=REFERENCE.seq_len,
        help=f"tokens per sequence for the memory estimate (default {REFERENCE.seq_len})",
    )
    parser.add_argument("--lora-r", type=int, default=REFERENCE.lora_r, help=f"LoRA rank (default {REFERENCE.lora_r})")
    parser.add_argument(
        "--no-gradient-checkpointing",
        dest="gradient_checkpointing",
        action="store_false",
        help="estimate without gradient checkpointing (default: with)",
    )
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default=REFERENCE.device,
        help="device the estimate is for (default cuda, bf16)",
    )


def catalog_rows(setup: TrainingSetup = REFERENCE, family: str | None = None, task: str = "causal_lm") -> list[dict]:
    """One dict per catalog entry that trains for `task` ("all": every entry): its facts, tasks, LoRA targets, and
    the LoRA and QLoRA memory estimates for `setup`."""
    rows = []
    for entry in (*CATALOG, *ENCODER_CATALOG, *SEQ2SEQ_CATALOG, *VISION_CATALOG):
        if family and family.lower() not in f"{entry.family} {entry.architecture}".lower():
            continue
        if task != "all" and task not in entry.tasks:
            continue
        if entry.vision:  # models/vision_memory at the published image side; QLoRA is refused for image classification
            rows.append(_vision_row(entry, setup))
            continue
        shape = ModelShape.from_config(entry.transformers_config(), extrapolate=True)
        memory = {
            method: estimate_training_memory(shape, setup, method=method, optimizer=_optimizer(setup, method))
            for method in ("lora", "qlora")
        }
        rows.append(_row(entry, shape, memory))
    return rows


def _optimizer(setup: TrainingSetup, method: str) -> str:
    """What the recipe's optimizer 'auto' picks for `method` (the table compares LoRA and QLoRA side by side)."""
    if method == "qlora" and setup.device == "cuda":
        return resolve_optimizer("auto", quantized=True, device_type="cuda")
    return setup.optimizer


def _row(entry: CatalogEntry, shape: ModelShape | None, memory: dict) -> dict:
    return {
        "id": entry.id,
        "alias": entry.alias,
        "family": entry.family,
        "architecture": entry.architecture,
        "tasks": list(entry.tasks),
        "params_b": entry.params_b,
        "params_exact": shape.params
        if shape is not None
        else None,  # as transformers builds the model from the entry's config sizes
        "active_params_b": entry.active_params_b,
        "context_length": entry.context_length,
        "prompt_style": entry.prompt_style,
        "prompt_format": PROMPT_STYLES[entry.prompt_style],
        "chat": entry.chat,
        "licence": entry.licence,
        "gated": entry.gated,
        "target_modules": entry.target_modules,
        "target_parameters": entry.target_parameters,
        "qlora_4bit": entry.qlora_4bit,
        "notes": "; ".join(filter(None, [entry.notes, QLORA_NOT_QUANTIZED.get(entry.architecture, "")])),
        "memory": {method: estimate.to_dict() for method, estimate in memory.items()},
    }


def _vision_row(entry: CatalogEntry, setup: TrainingSetup) -> dict:
    shape = VisionShape.from_config(entry.transformers_config(), image_size=entry.context_length)
    row = _row(entry, shape.backbone, {"lora": estimate_image_training_memory(shape, setup)})
    row.update(qlora_4bit=False)
    return row


def _short_licence(licence: str) -> str:
    return licence.split(" (")[0].split(":")[0]


def _params(row: dict) -> str:
    b = row["params_b"]
    text = f"{b * 1000:.0f}M" if b < 1 else f"{b:g}B"
    return text + (f" ({row['active_params_b']:g}B act.)" if row["active_params_b"] else "")


def format_table(rows: list[dict], setup: TrainingSetup) -> str:
    header = ("alias", "hub id", "arch", "params", "context", "LoRA", "QLoRA", "prompt", "licence", "tasks")
    lines = [header]
    for r in rows:
        lines.append(
            (
                r["alias"],
                r["id"],
                r["architecture"],
                _params(r),
                f"{r['context_length']:,}" + ("px" if r["prompt_style"] == "vision" else ""),
                f"{r['memory']['lora']['total_gib']:.1f} GiB" if r["memory"] else "-",
                f"{r['memory']['qlora']['total_gib']:.1f} GiB" + ("" if r["qlora_4bit"] else "*")
                if r["memory"] and "qlora" in r["memory"]
                else "-",
                r["prompt_style"],
                _short_licence(r["licence"]) + (" [gated]" if r["gated"] else ""),
                ", ".join(r["tasks"]),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {3, 4, 5, 6}
    out = [
        "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    archs = sorted({r["architecture"] for r in rows})
    checkpointing = "with" if setup.gradient_checkpointing else "without"
    out += [
        "",
        f"{len(rows)} model{'s' * (len(rows) != 1)}, {len(archs)} architecture{'s' * (len(archs) != 1)}. Memory: estimated peak for training on {setup.device} in "
        f"{setup.precision}, batch {setup.batch_size} x {setup.seq_len} tokens, LoRA r={setup.lora_r} on the default "
        f"targets, {checkpointing} gradient checkpointing; QLoRA: 4-bit NF4 with double quantization"
        + (", paged 8-bit AdamW" if setup.device == "cuda" else "")
        + ".",
        *(
            [
                f"* QLoRA stays 16-bit for {', '.join(sorted(QLORA_NOT_QUANTIZED))}: "
                + "; ".join(QLORA_NOT_QUANTIZED.values())
            ]
            if any(not r["qlora_4bit"] and "qlora" in r["memory"] for r in rows)
            else []
        ),
        *(
            [
                f"Vision models: batch {setup.batch_size} images at the context's side (patches + [CLS] through "
                "ViT/DeiT; no gradient checkpointing for ConvNeXt/ResNet), the new head trained fully; QLoRA (-) is "
                "not offered for image classification."
            ]
            if any(r["prompt_style"] == "vision" for r in rows)
            else []
        ),
        "Any hub id or local folder of another architecture transformers knows also works: LoRA then targets every "
        "linear layer except the output head. `--json` shows target modules, prompt formats and the memory breakdown.",
    ]
    return "\n".join(out)


def run_models(args) -> int:
    try:
        setup = TrainingSetup(
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            lora_r=args.lora_r,
            gradient_checkpointing=args.gradient_checkpointing,
            device=args.device,
            precision="bf16",
        )
    except ValueError as exc:
        raise TuneforgeError(f"models: {exc}") from None
    rows = catalog_rows(setup, args.family, args.task)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
    else:
        print(format_table(rows, setup))
    return 0
