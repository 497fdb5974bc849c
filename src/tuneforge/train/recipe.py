"""The training recipe: job spec in, adapter + metrics + report out.

Reads top to bottom as setup -> train -> save (cf. torchtune's lora_finetune_single_device and litgpt's
finetune/lora). Everything it calls is a plain function of explicit arguments; this file only wires them.

Output layout. The run works in `<DIR>.partial/` and renames it to `<DIR>` only when everything is written, so a
folder named DIR is always a finished run:
  adapter/        PEFT adapter (adapter_config.json, adapter_model.safetensors) + tokenizer files +
                  tuneforge_adapter.json (training prompt shape and exact base: adapter_card.py)
  spec.json       the resolved spec (defaults filled in, secrets redacted)
  metrics.jsonl   one line per logging step ("train") and per evaluation ("eval")
  report.json     final losses, perplexity, steps, tokens, throughput, memory, time, parameter counts
  loss.png        train and validation loss curves
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.example import Example
from ..errors import TuneforgeError
from ..spec import JobSpec
from .batching import collate, epoch_batches
from .checkpoint import (TrainerState, is_checkpoint, latest_checkpoint, list_checkpoints, load_adapter_weights,
                         load_checkpoint, save_adapter, save_checkpoint)
from .loss import loss_sum
from .metrics import MetricsLog, plot_loss
from .runtime import Runtime, pick_runtime
from .schedule import WarmupPlateau, build_scheduler

EventSink = Callable[[dict], None]


@dataclass
class RunResult:
    output_dir: Path
    adapter_dir: Path
    report: dict


@dataclass(frozen=True)
class Plan:
    """Step arithmetic, fixed before the first step (and recomputed identically on resume)."""

    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    eval_every: int
    save_every: int


def make_plan(spec: JobSpec, n_train: int) -> Plan:
    t = spec.training_config
    batches = math.ceil(n_train / t.batch_size)
    per_epoch = math.ceil(batches / t.gradient_accumulation_steps)
    total = t.max_steps or max(1, math.ceil(t.num_train_epochs * per_epoch))
    warmup = t.warmup_steps if t.warmup_steps is not None else max(1, round(0.05 * total))
    eval_every = t.eval_steps or max(1, total // 10)
    return Plan(batches, per_epoch, total, min(warmup, total), eval_every, t.save_steps or eval_every)


def work_dir_for(output_dir: Path) -> Path:
    return output_dir.with_name(output_dir.name + ".partial")


def is_finished_run(path: Path) -> bool:
    return (path / "report.json").is_file() and (path / "adapter" / "adapter_config.json").is_file()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _peak_memory_bytes(runtime: Runtime) -> int:
    if runtime.is_cuda:
        return int(torch.cuda.max_memory_allocated(runtime.device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _build_optimizer(spec: JobSpec, model, runtime: Runtime, quantized: bool):
    t = spec.training_config
    params = [p for p in model.parameters() if p.requires_grad]
    name = t.optimizer
    if name == "auto":
        name = "paged_adamw_8bit" if (quantized and runtime.is_cuda) else "adamw"
    if name == "adamw":
        return torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay), name
    if not runtime.is_cuda:
        raise TuneforgeError(
            f"training_config.optimizer: {name!r} needs a CUDA device (bitsandbytes paged/8-bit optimizers); "
            "on the CPU use 'adamw' or 'auto'",
            field="training_config.optimizer",
            value=name,
        )
    import bitsandbytes as bnb

    cls = {"paged_adamw_8bit": bnb.optim.PagedAdamW8bit, "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
           "adamw_8bit": bnb.optim.AdamW8bit}[name]
    return cls(params, lr=t.learning_rate, weight_decay=t.weight_decay), name


@torch.no_grad()
def evaluate(model, examples: list[Example], *, batch_size: int, pad_id: int, runtime: Runtime) -> float:
    """Mean cross-entropy per target token over `examples` (deterministic order, length-sorted for speed)."""
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = collate([examples[i] for i in order[start : start + batch_size]], pad_id)
        batch = {k: v.to(runtime.device) for k, v in batch.items()}
        with runtime.autocast():
            s, n = loss_sum(model, batch)
        total += float(s)
        count += n
    model.train()
    return total / max(count, 1)


class _Console:
    """Log lines on stderr (above the progress bar) and to the event sink."""

    def __init__(self, on_event: EventSink | None, quiet: bool):
        self.on_event, self.quiet, self.bar = on_event, quiet, None

    def log(self, message: str) -> None:
        if not self.quiet:
            if self.bar is not None:
                self.bar.write(message, file=sys.stderr)
            else:
                print(message, file=sys.stderr, flush=True)
        if self.on_event:
            self.on_event({"type": "log", "message": message, "time": time.time()})

    def event(self, record: dict) -> None:
        if self.on_event:
            self.on_event(record)


def _prepare_output(output_dir: Path, *, resume: bool, overwrite: bool) -> Path:
    work = work_dir_for(output_dir)
    if is_finished_run(output_dir) and not overwrite:
        raise TuneforgeError(
            f"--output {str(output_dir)!r} already holds a finished run; choose another folder or pass --overwrite",
            field="output", value=str(output_dir),
        )
    if output_dir.exists() and not is_finished_run(output_dir) and any(output_dir.iterdir()):
        raise TuneforgeError(
            f"--output {str(output_dir)!r} exists and is not a tuneforge run; refusing to overwrite it",
            field="output", value=str(output_dir),
        )
    if resume:
        if latest_checkpoint(work) is None:
            raise TuneforgeError(
                f"--resume: no checkpoint to resume in {str(work)!r} (a run writes checkpoints every save_steps)",
                field="resume", value=str(work),
            )
    elif work.exists():
        shutil.rmtree(work)  # a stale unfinished run that the user chose not to resume
    work.mkdir(parents=True, exist_ok=True)
    return work


def prepare_spec_data(spec: JobSpec, tokenizer):
    """The job's data, validated, tokenized and split as its data_config says (raises DataValidationError)."""
    from ..data import prepare_dataset

    d = spec.data_config
    return prepare_dataset(
        data_path=d.data_path, tokenizer=tokenizer, cutoff_len=d.cutoff_len, prompt_template=d.prompt_template,
        data_format=d.data_format, completion_column=d.completion_column, train_on_inputs=d.train_on_inputs,
        data_subset=d.data_subset, data_split=d.data_split, split_fractions=d.data_split_config,
        validation_data_path=d.validation_data_path, seed=spec.training_config.seed, hf_token=spec.hf_config.hf_token,
    )


def train(spec: JobSpec, output_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          quiet: bool = False, on_event: EventSink | None = None, device: str | None = None) -> RunResult:
    # ----------------------------------------------------------------------------------------------- setup
    from ..adapter_card import build_card
    from ..models.loader import base_record, load_tokenizer, resolve_model
    from ..models.lora import LoraSettings, QuantSettings, apply_lora, load_base_model, parameter_counts, weight_bytes
    from ..models.memory import TrainingSetup

    wall_start = time.time()
    output_dir = Path(output_dir).expanduser().resolve()
    p, d, t = spec.pretrainedmodel_config, spec.data_config, spec.training_config
    hf_token = spec.hf_config.hf_token
    runtime = pick_runtime(t.precision, device)
    # A bad model id, or one too large for this device by the estimate, is refused before any download or work.
    resolved = resolve_model(p.model_path, setup=TrainingSetup.from_spec(spec, device=device))
    console = _Console(on_event, quiet)
    _seed_everything(t.seed)

    # Validate the data before anything is written: a bad dataset leaves no output folder behind.
    tokenizer = load_tokenizer(p.model_path, hf_token=hf_token)
    data = prepare_spec_data(spec, tokenizer)
    for warning in data.report.warnings:
        console.log(f"data warning: {warning}")
    train_set, val_set = data.train, data.validation
    if not train_set:
        raise TuneforgeError(f"data_config.data_path: no training examples in {d.data_path!r}")
    plan = make_plan(spec, len(train_set))
    work = _prepare_output(output_dir, resume=resume, overwrite=overwrite)

    quant = QuantSettings(p.quantization_type, p.double_quantization) if p.use_quantization else None
    base = load_base_model(resolved, runtime, quant=quant, hf_token=hf_token)
    lora = LoraSettings(p.lora_r, p.lora_alpha, p.lora_dropout, p.lora_bias, p.target_modules)
    model, targets, how = apply_lora(base, lora, model_id=resolved.model_id, quantized=quant is not None,
                                     gradient_checkpointing=p.use_gradient_checkpointing, seed=t.seed)
    trainable, total_params = parameter_counts(model)
    console.log(
        f"model {resolved.model_id} on {runtime.device.type} ({runtime.precision}"
        f"{', 4-bit ' + quant.quant_type if quant else ''}); LoRA r={p.lora_r} on {', '.join(targets)} ({how}); "
        f"{trainable:,} trainable of {total_params:,} parameters ({100 * trainable / total_params:.2f}%)"
    )
    optimizer, optimizer_name = _build_optimizer(spec, model, runtime, quant is not None)
    scheduler = build_scheduler(t.lr_scheduler_type, optimizer, warmup_steps=plan.warmup_steps,
                                total_steps=plan.total_steps)

    metrics = MetricsLog(work / "metrics.jsonl")
    state = TrainerState()
    checkpoint = latest_checkpoint(work) if resume else None
    if checkpoint is None and p.resume_checkpoint_path:
        source = Path(p.resume_checkpoint_path).expanduser()
        if is_checkpoint(source):
            checkpoint = source
        elif (source / "adapter_config.json").is_file():
            load_adapter_weights(model, source)
            console.log(f"initialised the adapter from {source}")
        else:
            raise TuneforgeError(
                f"pretrainedmodel_config.resume_checkpoint_path: {str(source)!r} is neither a checkpoint folder "
                "(checkpoint-N with trainer_state.json) nor an adapter folder (adapter_config.json)",
                field="pretrainedmodel_config.resume_checkpoint_path", value=str(source),
            )
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer, scheduler)
        if checkpoint.parent == work:
            metrics.truncate_after(state.global_step)
        console.log(f"resumed from {checkpoint} at step {state.global_step}/{plan.total_steps}")
    (work / "spec.json").write_text(json.dumps(_resolved_spec(spec, targets, plan), indent=2))

    tracker = _wandb_tracker(spec, output_dir, console) if spec.logging_config.use_wandb else None
    pad_id = tokenizer.pad_token_id
    ga = t.gradient_accumulation_steps
    lengths = [len(e) for e in train_set]

    # ----------------------------------------------------------------------------------------------- train
    def record(entry: dict) -> None:
        metrics.write(entry)
        console.event(entry)
        if tracker:
            tracker.log(entry)

    def run_eval() -> None:
        loss = evaluate(model, val_set, batch_size=t.batch_size * 2, pad_id=pad_id, runtime=runtime)
        state.last_eval_loss = loss
        improved = state.best_eval_loss is None or loss < state.best_eval_loss - t.early_stopping_threshold
        if improved:
            state.best_eval_loss, state.best_step, state.evals_without_improvement = loss, state.global_step, 0
            save_adapter(model, work / "best_adapter")  # small: only the LoRA weights
        else:
            state.evals_without_improvement += 1
        if isinstance(scheduler, WarmupPlateau):
            scheduler.on_eval(loss)
        record({"type": "eval", "step": state.global_step, "epoch": round(state.global_step / plan.steps_per_epoch, 4),
                "eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50)), "time": time.time()})
        if state.evals_without_improvement >= t.early_stopping_patience:
            state.stopped_early = True
            console.log(f"early stopping at step {state.global_step}: validation loss has not improved for "
                        f"{t.early_stopping_patience} evaluations (best {state.best_eval_loss:.4f} at step {state.best_step})")

    from tqdm.auto import tqdm

    bar = tqdm(total=plan.total_steps, initial=state.global_step, unit="step", desc="training",
               disable=quiet, dynamic_ncols=True, file=sys.stderr)
    console.bar = bar
    if val_set and state.global_step == 0:
        run_eval()  # the base model's validation loss: the curve's starting point and the bar to beat
    model.train()
    loop_start = time.perf_counter() - state.train_seconds
    while state.global_step < plan.total_steps and not state.stopped_early:
        batches = epoch_batches(lengths, t.batch_size, seed=t.seed, epoch=state.epoch, group_by_length=t.group_by_length)
        groups = [batches[i : i + ga] for i in range(0, len(batches), ga)]
        for group in groups[-(-state.micro_batch // ga) :]:  # ceil: a finished last group is never redone
            step_targets = sum(train_set[i].n_targets for mb in group for i in mb)
            step_loss = 0.0
            for mb in group:
                batch = collate([train_set[i] for i in mb], pad_id)
                state.tokens_seen += int(batch["attention_mask"].sum())
                batch = {k: v.to(runtime.device, non_blocking=True) for k, v in batch.items()}
                with runtime.autocast():
                    s, _ = loss_sum(model, batch)
                (s / max(step_targets, 1)).backward()
                step_loss += float(s.detach())
            if t.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad], t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.global_step += 1
            state.micro_batch += len(group)
            state.target_tokens_seen += step_targets
            state.last_train_loss = step_loss / max(step_targets, 1)
            state.loss_window = (state.loss_window + [state.last_train_loss])[-10:]
            state.train_seconds = time.perf_counter() - loop_start
            bar.update(1)
            bar.set_postfix(loss=f"{state.last_train_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
            if state.global_step % t.logging_steps == 0 or state.global_step == plan.total_steps:
                record({"type": "train", "step": state.global_step,
                        "epoch": round(state.global_step / plan.steps_per_epoch, 4), "loss": state.last_train_loss,
                        "lr": scheduler.get_last_lr()[0], "tokens_seen": state.tokens_seen,
                        "tokens_per_second": state.tokens_seen / max(state.train_seconds, 1e-9),
                        "total_steps": plan.total_steps, "time": time.time()})
            last = state.global_step >= plan.total_steps
            if val_set and (state.global_step % plan.eval_every == 0 or last):
                eval_start = time.perf_counter()
                run_eval()
                loop_start += time.perf_counter() - eval_start  # throughput counts training time only
            if not last and not state.stopped_early and state.global_step % plan.save_every == 0:
                save_start = time.perf_counter()
                save_checkpoint(work, state, model, optimizer, scheduler, keep=t.save_total_limit)
                loop_start += time.perf_counter() - save_start
            if last or state.stopped_early:
                break
        else:
            state.epoch += 1
            state.micro_batch = 0
    bar.close()
    console.bar = None

    # ------------------------------------------------------------------------------------------------ save
    if state.best_step is not None and state.best_step != state.global_step:
        load_adapter_weights(model, work / "best_adapter")
        console.log(f"kept the adapter of step {state.best_step}, which had the lowest validation loss")
    adapter_dir = work / "adapter"
    save_adapter(model, adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    # How it was trained, so inference renders prompts the same way (adapter_card.py).
    renderer = data.renderer
    assert renderer is not None
    build_card(renderer.fmt, adds_bos=bool(renderer.encoder.prefix), rows=data.train_rows,
               base_model=base_record(resolved)).write(adapter_dir)
    report = {
        "model": resolved.model_id,
        "device": runtime.device.type,
        "precision": runtime.precision,
        "quantization": f"4-bit {quant.quant_type}{' + double quant' if quant.double_quant else ''}" if quant else None,
        "optimizer": optimizer_name,
        "target_modules": targets,
        "train_loss": state.last_train_loss,
        "train_loss_smoothed": float(np.mean(state.loss_window)) if state.loss_window else None,
        "eval_loss": state.best_eval_loss,
        "eval_perplexity": math.exp(min(state.best_eval_loss, 50)) if state.best_eval_loss is not None else None,
        "final_eval_loss": state.last_eval_loss,
        "best_step": state.best_step,
        "steps": state.global_step,
        "total_steps": plan.total_steps,
        "epochs": round(state.global_step / plan.steps_per_epoch, 4),
        "stopped_early": state.stopped_early,
        "train_examples": len(train_set),
        "validation_examples": len(val_set),
        "tokens_seen": state.tokens_seen,
        "target_tokens_seen": state.target_tokens_seen,
        "tokens_per_second": state.tokens_seen / max(state.train_seconds, 1e-9),
        "train_seconds": state.train_seconds,
        "wall_time_seconds": time.time() - wall_start,
        "peak_memory_bytes": _peak_memory_bytes(runtime),
        "peak_memory_kind": "cuda_max_allocated" if runtime.is_cuda else "process_max_rss",
        "weight_bytes": weight_bytes(model),
        "trainable_parameters": trainable,
        "total_parameters": total_params,
        "trainable_share": trainable / total_params,
    }
    (work / "report.json").write_text(json.dumps(report, indent=2))
    plot_loss(work / "metrics.jsonl", work / "loss.png", title=f"{resolved.model_id} · LoRA r={p.lora_r}")
    for ckpt in list_checkpoints(work):
        shutil.rmtree(ckpt)
    shutil.rmtree(work / "best_adapter", ignore_errors=True)
    if output_dir.exists():
        shutil.rmtree(output_dir)  # only reached with --overwrite of a finished run (checked in _prepare_output)
    os.replace(work, output_dir)
    if tracker:
        tracker.finish(report)
    console.log(
        f"done: {state.global_step} steps, train loss {state.last_train_loss:.4f}"
        + (f", validation loss {state.best_eval_loss:.4f}" if state.best_eval_loss is not None else "")
        + f", {report['tokens_per_second']:.0f} tokens/s; adapter in {output_dir / 'adapter'}"
    )
    return RunResult(output_dir=output_dir, adapter_dir=output_dir / "adapter", report=report)


def _resolved_spec(spec: JobSpec, targets: list[str], plan: Plan) -> dict:
    data = spec.to_dict(redact=True)
    data["pretrainedmodel_config"]["target_modules"] = targets
    tc = data["training_config"]
    tc["warmup_steps"] = plan.warmup_steps
    tc["eval_steps"] = plan.eval_every
    tc["save_steps"] = plan.save_every
    data["plan"] = asdict(plan)
    return data


class _WandbTracker:
    def __init__(self, run):
        self.run = run

    def log(self, entry: dict) -> None:
        prefix = "eval" if entry["type"] == "eval" else "train"
        values = {f"{prefix}/{k}": v for k, v in entry.items() if isinstance(v, (int, float)) and k not in ("step", "time")}
        self.run.log(values, step=entry["step"])

    def finish(self, report: dict) -> None:
        self.run.summary.update({k: v for k, v in report.items() if isinstance(v, (int, float, str))})
        self.run.finish()


def _wandb_tracker(spec: JobSpec, output_dir: Path, console: _Console) -> _WandbTracker:
    cfg = spec.logging_config
    try:
        import wandb
    except ImportError:
        raise TuneforgeError("logging_config.use_wandb: the wandb package is not installed (pip install wandb)",
                             field="logging_config.use_wandb", value=True) from None
    if cfg.wandb_login_key:
        wandb.login(key=cfg.wandb_login_key, relogin=True)
    run = wandb.init(project=cfg.wandb_project or "tuneforge", entity=cfg.wandb_username or None,
                     name=cfg.wandb_run_name or output_dir.name, config=spec.to_dict(redact=True))
    console.log(f"logging to Weights & Biases: {run.url or run.name}")
    return _WandbTracker(run)
