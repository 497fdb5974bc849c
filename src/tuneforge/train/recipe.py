"""The training recipe: job spec in, adapter + metrics + report out.

Reads top to bottom as `setup` (model, data, adapter, optimizer; resume) -> `train` (the loop, inline; one
optimizer step is `train_step`, the early-stopping bookkeeping `track_eval`) -> `publish` (the typed
`TrainReport`, then the rename into place), cf. torchtune's lora_finetune_single_device and litgpt's
finetune/lora. Everything it calls is a plain function of explicit arguments; this file only wires them.

Output layout. The run works in `<DIR>.partial/` and renames it to `<DIR>` only when everything is written, so a
folder named DIR is always a finished run:
  adapter/        PEFT adapter (adapter_config.json, adapter_model.safetensors) + tokenizer files +
                  tuneforge_adapter.json (training prompt shape and exact base: adapter_card.py)
  spec.json       the resolved spec (defaults filled in, secrets redacted)
  metrics.jsonl   one line per logging step ("train") and per evaluation ("eval"); preference runs add reward
                  accuracy and margin and the chosen/rejected log-probs to both
  report.json     final losses, perplexity, steps, tokens, throughput, memory, time, parameter counts
  loss.png        train and validation loss curves
A classification job (data_config.task, train/tasks.py) adds confusion_matrix.png (held-out rows) and report.json's
`classification` (accuracy, macro-F1, per-class precision/recall, the confusion matrix); its adapter keeps the
trained head (PEFT modules_to_save) and tuneforge_adapter.json its id2label/label2id.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from dataclasses import field as dataclasses_field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from ..adapter_card import AdapterCard, build_card, classification_card, seq2seq_card
from ..data.classify import ClassExample
from ..data.example import Example
from ..data.pairs import PairExample
from ..data.seq2seq import Seq2SeqExample
from ..errors import TuneforgeError
from ..models.loader import base_record, load_image_processor, load_tokenizer, resolve_model
from ..models.lora import LoraSettings, QuantSettings, apply_lora, load_base_model, parameter_counts, weight_bytes
from ..models.memory import TrainingSetup
from ..runtime import Runtime, pick_runtime, resolve_optimizer
from ..spec import CLASSIFIER_TASKS, JobSpec
from .batching import collate, epoch_batches
from .checkpoint import (
    TrainerState,
    is_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_adapter_weights,
    load_checkpoint,
    save_adapter,
    save_checkpoint,
)
from .loss import loss_sum
from .metrics import MetricsLog, plot_loss
from .plan import Plan, is_finished_run, make_plan, prepare_spec_data, work_dir_for
from .preference import PreferenceObjective
from .schedule import WarmupPlateau, build_scheduler
from .seq2seq import Seq2SeqTask
from .tasks import ClassificationTask, ImageClassificationTask, plot_confusion

if TYPE_CHECKING:
    from .distributed import Dist, Parallel

EventSink = Callable[[dict], None]


@dataclass
class RunResult:
    output_dir: Path
    adapter_dir: Path
    report: dict  # report.json as written (TrainReport.to_dict())


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
    name = resolve_optimizer(t.optimizer, quantized=quantized, device_type=runtime.device.type)
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

    cls = {
        "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
        "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
        "adamw_8bit": bnb.optim.AdamW8bit,
    }[name]
    return cls(params, lr=t.learning_rate, weight_decay=t.weight_decay), name


@torch.no_grad()
def evaluate(
    model,
    examples: list[Example],
    *,
    batch_size: int,
    pad_id: int,
    runtime: Runtime,
    parallel: Parallel | None = None,
) -> float:
    """Mean cross-entropy per target token over `examples` (deterministic order, length-sorted for speed).
    `parallel`: every rank of a distributed run evaluates all of `examples` through the wrapped model (FSDP needs
    every rank in each forward pass), so all ranks agree on the loss and on early stopping."""
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = collate([examples[i] for i in order[start : start + batch_size]], pad_id)
        batch = {k: v.to(runtime.device) for k, v in batch.items()}
        with runtime.autocast():
            s, n = parallel.loss(batch) if parallel is not None else loss_sum(model, batch)
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
            field="output",
            value=str(output_dir),
        )
    if output_dir.exists() and not is_finished_run(output_dir) and any(output_dir.iterdir()):
        raise TuneforgeError(
            f"--output {str(output_dir)!r} exists and is not a tuneforge run; refusing to overwrite it",
            field="output",
            value=str(output_dir),
        )
    if resume:
        if latest_checkpoint(work) is None:
            raise TuneforgeError(
                f"--resume: no checkpoint to resume in {str(work)!r} (a run writes checkpoints every save_steps)",
                field="resume",
                value=str(work),
            )
    elif work.exists():
        shutil.rmtree(work)  # a stale unfinished run that the user chose not to resume
    work.mkdir(parents=True, exist_ok=True)
    return work


@dataclass
class Session:
    """Everything the loop works with, built by `setup` (and restored from a checkpoint when resuming)."""

    spec: JobSpec
    output_dir: Path
    work: Path
    runtime: Runtime
    model_id: str
    quant: QuantSettings | None
    tokenizer: Any  # image_classification: the model's image processor (saved with the adapter the same way)
    train_set: list[Example]
    val_set: list[Example]
    plan: Plan
    model: Any
    targets: list[str]
    trainable: int
    total_params: int
    optimizer: Any
    optimizer_name: str
    scheduler: Any
    state: TrainerState
    metrics: MetricsLog
    console: _Console
    card: AdapterCard  # tuneforge_adapter.json: the training prompt's shape and the exact base
    tracker: _WandbTracker | None = None
    eval_set: Any = None  # evaluate.EvalSet of the held-out test rows, or None without any
    objective: PreferenceObjective | None = None  # None: SFT
    # classification, image_classification (ImageClassificationTask) or seq2seq; None: causal LM
    task: ClassificationTask | Seq2SeqTask | None = None
    test_set: list = dataclasses_field(default_factory=list)  # every task but causal_lm: the held-out test examples
    parallel: Parallel | None = None  # a distributed run (train/distributed.py); None: one process

    @property
    def pad_id(self) -> int | None:
        """The tokenizer's padding id (None for an image processor: images are not padded)."""
        return getattr(self.tokenizer, "pad_token_id", None)

    @property
    def is_main(self) -> bool:
        """The process that writes the run folder: the only one, or rank 0 of a distributed run."""
        return self.parallel is None or self.parallel.ctx.is_main

    def record(self, entry: dict) -> None:
        """One metrics line: to metrics.jsonl, the event sink and the tracker (rank 0 only)."""
        if not self.is_main:
            return
        self.metrics.write(entry)
        self.console.event(entry)
        if self.tracker:
            self.tracker.log(entry)


def setup(
    spec: JobSpec,
    output_dir: Path,
    *,
    resume: bool,
    overwrite: bool,
    console: _Console,
    device: str | None,
    dist: Dist | None = None,
) -> Session:
    """Model, data, adapter, optimizer and schedule, in the order that refuses bad input before any work: the
    model id and fit first, then the data, and only then the output folder. `dist`: this process's rank in a
    distributed run (every rank sets up alike; rank 0 alone prepares the output folder)."""
    p, d, t = spec.pretrainedmodel_config, spec.data_config, spec.training_config
    hf_token = spec.hf_config.hf_token
    if dist is not None:
        device = dist.device()
    runtime = pick_runtime(t.precision, device)
    # A bad model id, or one too large for this device by the estimate, is refused before any download or work.
    resolved = resolve_model(p.model_path, setup=TrainingSetup.from_spec(spec, device=device))
    classifier, seq2seq = d.task in CLASSIFIER_TASKS, d.task == "seq2seq"
    vision = d.task == "image_classification"
    # A model that cannot do the task (no classification head; a vision model for a text task; seq2seq on a
    # decoder-only model, causal_lm on T5) is refused by name before the data is read.
    from transformers import AutoConfig

    from ..models.classifier import check_task

    check_task(AutoConfig.from_pretrained(resolved.load_from, token=hf_token), d.task, resolved.model_id)
    _seed_everything(t.seed)

    # Validate the data before anything is written: a bad dataset leaves no output folder behind.
    if vision:
        tokenizer = load_image_processor(p.model_path, hf_token=hf_token)
    else:
        tokenizer = load_tokenizer(p.model_path, hf_token=hf_token)
    data = prepare_spec_data(spec, tokenizer)
    for warning in data.report.warnings:
        console.log(f"data warning: {warning}")
    if not data.train:
        raise TuneforgeError(f"data_config.data_path: no training examples in {d.data_path!r}")
    from ..evaluate.runner import job_eval_set

    # Checked now: rows without a reference answer fail before training. Classifiers and seq2seq models score
    # their test rows themselves.
    eval_set = job_eval_set(data, tokenizer) if d.task == "causal_lm" else None
    plan = make_plan(spec, len(data.train), world_size=dist.world_size if dist is not None else 1)
    if dist is not None:
        work = dist.rank0_first(lambda: _prepare_output(output_dir, resume=resume, overwrite=overwrite))
    else:
        work = _prepare_output(output_dir, resume=resume, overwrite=overwrite)

    quant = QuantSettings(p.quantization_type, p.double_quantization) if p.use_quantization else None
    if quant is not None and dist is not None and dist.strategy == "fsdp":
        # FSDP shards the packed 4-bit weights with the others: stored in the compute dtype (bitsandbytes'
        # FSDP-QLoRA guide). The bits are the same as with uint8 storage, only viewed as another dtype.
        quant = replace(quant, storage_dtype=runtime.compute_dtype)
    load_runtime = runtime
    if dist is not None and dist.strategy == "fsdp" and runtime.is_cuda:
        # FSDP: the base goes to host memory first and each GPU receives only its shard (distributed._shard), so a
        # base larger than one GPU can be trained.
        load_runtime = replace(runtime, device=torch.device("cpu"))
    labels = data.labels if classifier else None
    base = load_base_model(
        resolved,
        load_runtime,
        quant=quant,
        hf_token=hf_token,
        labels=labels,
        pad_token_id=getattr(tokenizer, "pad_token_id", None),
        vision=vision,
        seq2seq=seq2seq,
    )
    lora = LoraSettings(p.lora_r, p.lora_alpha, p.lora_dropout, p.lora_bias, p.target_modules)
    model, targets, how = apply_lora(
        base,
        lora,
        model_id=resolved.model_id,
        quantized=quant is not None,
        gradient_checkpointing=p.use_gradient_checkpointing,
        seed=t.seed,
        classification=classifier,
        vision=vision,
        seq2seq=seq2seq,
    )
    trainable, total_params = parameter_counts(model)
    parallel = None
    if dist is not None:
        from .distributed import Parallel

        parallel = Parallel(dist, model, loss_sum, filler=data.train[0])
    console.log(
        f"model {resolved.model_id} on {runtime.device.type} ({runtime.precision}"
        f"{', 4-bit ' + quant.quant_type if quant else ''}); LoRA r={p.lora_r} on {', '.join(targets)} ({how}); "
        f"{trainable:,} trainable of {total_params:,} parameters ({100 * trainable / total_params:.2f}%)"
    )
    optimizer, optimizer_name = _build_optimizer(spec, model, runtime, quant is not None)
    scheduler = build_scheduler(
        t.lr_scheduler_type, optimizer, warmup_steps=plan.warmup_steps, total_steps=plan.total_steps
    )
    session = Session(
        spec=spec,
        output_dir=output_dir,
        work=work,
        runtime=runtime,
        model_id=resolved.model_id,
        quant=quant,
        tokenizer=tokenizer,
        train_set=data.train,
        val_set=data.validation,
        plan=plan,
        model=model,
        targets=targets,
        trainable=trainable,
        total_params=total_params,
        optimizer=optimizer,
        optimizer_name=optimizer_name,
        scheduler=scheduler,
        state=TrainerState(),
        metrics=MetricsLog(work / "metrics.jsonl"),
        console=console,
        card=_card(spec, data, resolved),
        eval_set=eval_set,
        objective=preference_objective(spec),
        parallel=parallel,
        task=_task(spec, data.labels, tokenizer) if classifier else Seq2SeqTask(tokenizer) if seq2seq else None,
        test_set=list(data.test) if d.task != "causal_lm" else [],
    )
    _restore(session, resume=resume)
    if session.is_main:
        (work / "spec.json").write_text(json.dumps(_resolved_spec(spec, targets, plan), indent=2))
        session.tracker = _wandb_tracker(spec, output_dir, console) if spec.logging_config.use_wandb else None
    return session


def _task(spec: JobSpec, labels: list[str], tokenizer: Any) -> ClassificationTask:
    """The classification task of the job: over texts, or over images with the model's image processor."""
    d = spec.data_config
    if d.task == "image_classification":
        return ImageClassificationTask(labels, tokenizer, augment_train=d.image_augmentation)
    return ClassificationTask(labels)


def _card(spec: JobSpec, data: Any, resolved: Any) -> AdapterCard:
    """How the adapter is trained (format, training prompt, shared system prompt; a classifier's labels) and on
    which exact base."""
    d = spec.data_config
    if d.task == "image_classification":
        return classification_card(
            data.labels, image_column=d.image_column, task=d.task, base_model=base_record(resolved)
        )
    if d.task == "classification":
        return classification_card(
            data.labels, text_column=d.text_column, max_length=d.cutoff_len, base_model=base_record(resolved)
        )
    if d.task == "seq2seq":
        return seq2seq_card(
            text_column=d.text_column,
            target_column=d.label_column,
            max_length=d.cutoff_len,
            base_model=base_record(resolved),
        )
    renderer = data.renderer
    assert renderer is not None, "prepare_dataset always sets the renderer of trainable data"
    return build_card(
        renderer.fmt, adds_bos=bool(renderer.encoder.prefix), rows=data.train_rows, base_model=base_record(resolved)
    )


def _restore(session: Session, *, resume: bool) -> None:
    """Continue from this run's latest checkpoint (`resume`), or start from `resume_checkpoint_path`: a checkpoint
    (full state) or a finished adapter (weights only, a warm start)."""
    s = session
    p = s.spec.pretrainedmodel_config
    checkpoint = latest_checkpoint(s.work) if resume else None
    if checkpoint is None and p.resume_checkpoint_path:
        source = Path(p.resume_checkpoint_path).expanduser()
        if is_checkpoint(source):
            checkpoint = source
        elif (source / "adapter_config.json").is_file():
            load_adapter_weights(s.model, source)
            s.console.log(f"initialised the adapter from {source}")
        else:
            raise TuneforgeError(
                f"pretrainedmodel_config.resume_checkpoint_path: {str(source)!r} is neither a checkpoint folder "
                "(checkpoint-N with trainer_state.json) nor an adapter folder (adapter_config.json)",
                field="pretrainedmodel_config.resume_checkpoint_path",
                value=str(source),
            )
    if checkpoint is not None:
        s.state = load_checkpoint(checkpoint, s.model, s.optimizer, s.scheduler)
        if checkpoint.parent == s.work and s.is_main:
            s.metrics.truncate_after(s.state.global_step)
        s.console.log(f"resumed from {checkpoint} at step {s.state.global_step}/{s.plan.total_steps}")


def preference_objective(spec: JobSpec) -> PreferenceObjective | None:
    t = spec.training_config
    return PreferenceObjective(t.preference, beta=t.beta, gamma=t.simpo_gamma) if t.preference else None


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean cross-entropy per target token over the whole step (all micro-batches); preference: per pair
    target_tokens: int  # tokens that carried loss
    tokens: int  # real (non-padding) tokens
    stats: dict[str, float] | None = None  # preference: mean reward accuracy/margin and log-probs of the step's pairs


def train_step(
    model,
    micro_batches: list[list[Example]],
    *,
    pad_id: int,
    runtime: Runtime,
    optimizer,
    scheduler,
    max_grad_norm: float,
    parallel: Parallel | None = None,
) -> StepResult:
    """One optimizer step over `micro_batches` (gradient accumulation). Each micro-batch's summed loss is divided
    by the step's total target tokens, so the step's gradient is that of the per-token mean over all of them,
    whatever the padding or the split into micro-batches.

    `parallel` (a distributed run): `micro_batches` are this rank's shares; the target-token count is summed over
    the ranks before dividing and the gradients are summed across ranks (train/distributed.py), which gives the
    single-process gradient of the whole step. A rank whose share is empty runs a zero-weighted filler example, so
    every rank takes part in each forward and backward pass (DDP's reduction and FSDP's gathers need all of them)."""
    step_targets = sum(e.n_targets for mb in micro_batches for e in mb)
    if parallel is not None:
        step_targets = int(parallel.sum(step_targets)[0])
    step_loss, tokens = 0.0, 0
    for i, mb in enumerate(micro_batches):
        weight = 1.0
        if not mb:
            assert parallel is not None, "only a rank of a distributed run gets an empty share of a micro-batch"
            mb, weight = [parallel.filler], 0.0
        batch = collate(mb, pad_id)
        tokens += int(batch["attention_mask"].sum()) if weight else 0
        batch = {k: v.to(runtime.device, non_blocking=True) for k, v in batch.items()}
        with parallel.accumulating(last=i == len(micro_batches) - 1) if parallel else contextlib.nullcontext():
            with runtime.autocast():
                s, _ = parallel.loss(batch) if parallel is not None else loss_sum(model, batch)
            (s * weight / max(step_targets, 1)).backward()
        step_loss += float(s.detach()) * weight
    if parallel is not None:
        parallel.finish_backward()
        step_loss, total_tokens = parallel.sum(step_loss, tokens)
        tokens = int(total_tokens)
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad], max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=step_loss / max(step_targets, 1), target_tokens=step_targets, tokens=tokens)


def preference_step(
    objective: PreferenceObjective,
    model,
    micro_batches: list[list[Any]],
    *,
    pad_id: int,
    runtime: Runtime,
    optimizer,
    scheduler,
    max_grad_norm: float,
) -> StepResult:
    """`train_step` for preference pairs: each micro-batch runs its chosen and rejected sequences in one forward
    pass, and the per-pair losses are divided by the step's number of pairs (the mean over pairs, however they are
    split into micro-batches). DPO's reference log-probs are computed first, under no_grad, with the adapter off."""
    n_pairs = sum(len(mb) for mb in micro_batches)
    totals: dict[str, float] = {}
    target_tokens = sum(p.n_targets for mb in micro_batches for p in mb)
    tokens = 0
    for mb in micro_batches:
        batch = objective.collate(mb, pad_id)
        tokens += int(batch["attention_mask"].sum())
        batch = {k: v.to(runtime.device, non_blocking=True) for k, v in batch.items()}
        terms = objective.terms(model, batch, runtime)
        (terms.losses.sum() / n_pairs).backward()
        for k, v in objective.stat_sums(terms).items():
            totals[k] = totals.get(k, 0.0) + v
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad], max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    stats = objective.means(totals)
    return StepResult(loss=stats.pop("loss"), target_tokens=target_tokens, tokens=tokens, stats=stats)


def track_eval(state: TrainerState, loss: float, *, threshold: float, patience: int) -> bool:
    """Early-stopping bookkeeping for one validation loss; True when it is a new best (by more than `threshold`).
    Sets `state.stopped_early` after `patience` evaluations in a row without one."""
    state.last_eval_loss = loss
    improved = state.best_eval_loss is None or loss < state.best_eval_loss - threshold
    if improved:
        state.best_eval_loss, state.best_step, state.evals_without_improvement = loss, state.global_step, 0
    else:
        state.evals_without_improvement += 1
    if state.evals_without_improvement >= patience:
        state.stopped_early = True
    return improved


def _run_eval(s: Session) -> None:
    t, state = s.spec.training_config, s.state
    if s.objective is not None:
        # Pairs take two sequences each: the same batch_size * 2 sequences per forward pass as SFT's evaluation.
        pairs = cast("list[PairExample]", s.val_set)  # preference data: prepare_dataset kept pairs
        values = s.objective.evaluate(
            s.model, pairs, batch_size=t.batch_size, pad_id=s.tokenizer.pad_token_id, runtime=s.runtime
        )
        loss = values["eval_loss"]
    elif s.task is not None:
        rows = cast("list[Any]", s.val_set)  # the task's examples (ClassExample, ImageExample, Seq2SeqExample)
        values = s.task.evaluate(s.model, rows, batch_size=t.batch_size * 2, pad_id=s.pad_id, runtime=s.runtime)
        loss = values["eval_loss"]
    else:
        loss = evaluate(
            s.model,
            s.val_set,
            batch_size=t.batch_size * 2,
            pad_id=s.tokenizer.pad_token_id,
            runtime=s.runtime,
            parallel=s.parallel,
        )
        values = {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50))}
    if track_eval(state, loss, threshold=t.early_stopping_threshold, patience=t.early_stopping_patience):
        if s.is_main:
            save_adapter(s.model, s.work / "best_adapter")  # small: only the LoRA weights
        state.best_eval_metrics = values
    state.last_eval_metrics = values
    if isinstance(s.scheduler, WarmupPlateau):
        s.scheduler.on_eval(loss)
    s.record(
        {
            "type": "eval",
            "step": state.global_step,
            "epoch": round(state.global_step / s.plan.steps_per_epoch, 4),
            **values,
            "time": time.time(),
        }
    )
    if state.stopped_early:
        s.console.log(
            f"early stopping at step {state.global_step}: validation loss has not improved for "
            f"{t.early_stopping_patience} evaluations (best {state.best_eval_loss:.4f} at step {state.best_step})"
        )


def train(
    spec: JobSpec,
    output_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    on_event: EventSink | None = None,
    device: str | None = None,
) -> RunResult:
    """Train `spec` in this process. A spec with a distributed strategy runs through `distributed.launch`
    (`tuneforge train --nproc`), which starts the processes and calls `train_distributed` in each."""
    strategy = spec.training_config.distributed.strategy
    if strategy != "none":
        raise TuneforgeError(
            f"training_config.distributed.strategy {strategy!r} runs on several processes: start it with "
            "`tuneforge train SPEC --nproc N` (or tuneforge.train.distributed.launch), not in this process",
            field="training_config.distributed.strategy",
            value=strategy,
        )
    result = _run(spec, output_dir, resume=resume, overwrite=overwrite, quiet=quiet, on_event=on_event, device=device)
    assert result is not None, "a single process is rank 0"
    return result


def train_distributed(
    spec: JobSpec,
    output_dir: str | Path,
    dist: Dist,
    *,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
) -> RunResult | None:
    """One rank of a distributed run, in a process group that `distributed.launch` set up. Rank 0 logs and writes
    the run folder and returns its RunResult; the other ranks train alongside and return None after the last step."""
    return _run(spec, output_dir, resume=resume, overwrite=overwrite, quiet=quiet or not dist.is_main, dist=dist)


def _run(
    spec: JobSpec,
    output_dir: str | Path,
    *,
    resume: bool,
    overwrite: bool,
    quiet: bool,
    on_event: EventSink | None = None,
    device: str | None = None,
    dist: Dist | None = None,
) -> RunResult | None:
    wall_start = time.time()
    console = _Console(on_event, quiet)
    s = setup(
        spec,
        Path(output_dir).expanduser().resolve(),
        resume=resume,
        overwrite=overwrite,
        console=console,
        device=device,
        dist=dist,
    )
    t, plan, state, train_set = spec.training_config, s.plan, s.state, s.train_set
    ga = t.gradient_accumulation_steps
    lengths = [len(e) for e in train_set]
    # A micro-batch of the run: batch_size examples per process, cut from the one order all processes compute.
    global_batch = t.batch_size * (dist.world_size if dist is not None else 1)

    bar = tqdm(
        total=plan.total_steps,
        initial=state.global_step,
        unit="step",
        desc="training",
        disable=quiet,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    console.bar = bar
    if s.val_set and state.global_step == 0:
        _run_eval(s)  # the base model's validation loss: the curve's starting point and the bar to beat
    s.model.train()
    loop_start = time.perf_counter() - state.train_seconds
    while state.global_step < plan.total_steps and not state.stopped_early:
        batches = epoch_batches(
            lengths, global_batch, seed=t.seed, epoch=state.epoch, group_by_length=t.group_by_length
        )
        groups = [batches[i : i + ga] for i in range(0, len(batches), ga)]
        for group in groups[-(-state.micro_batch // ga) :]:  # ceil: a finished last group is never redone
            micro_batches = [[train_set[i] for i in mb] for mb in group]
            if s.parallel is not None:
                micro_batches = [s.parallel.share(mb) for mb in micro_batches]
            common = dict(
                pad_id=s.pad_id,
                runtime=s.runtime,
                optimizer=s.optimizer,
                scheduler=s.scheduler,
                max_grad_norm=t.max_grad_norm,
            )
            if s.objective is not None:
                step = preference_step(s.objective, s.model, micro_batches, **common)
            elif s.task is not None:
                rows_mb = cast("list[list[Any]]", micro_batches)  # the task's examples
                loss, rows, tokens = s.task.step(s.model, rows_mb, **common)
                step = StepResult(loss=loss, target_tokens=rows, tokens=tokens)
            else:
                step = train_step(s.model, micro_batches, parallel=s.parallel, **common)
            state.global_step += 1
            state.micro_batch += len(group)
            state.tokens_seen += step.tokens
            state.target_tokens_seen += step.target_tokens
            state.last_train_loss = step.loss
            state.loss_window = (state.loss_window + [state.last_train_loss])[-10:]
            state.train_seconds = time.perf_counter() - loop_start
            lr = s.scheduler.get_last_lr()[0]
            bar.update(1)
            bar.set_postfix(loss=f"{state.last_train_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            if state.global_step % t.logging_steps == 0 or state.global_step == plan.total_steps:
                s.record(
                    {
                        "type": "train",
                        "step": state.global_step,
                        "epoch": round(state.global_step / plan.steps_per_epoch, 4),
                        "loss": state.last_train_loss,
                        **(step.stats or {}),
                        "lr": lr,
                        "tokens_seen": state.tokens_seen,
                        "tokens_per_second": state.tokens_seen / max(state.train_seconds, 1e-9),
                        "total_steps": plan.total_steps,
                        "time": time.time(),
                    }
                )
            last = state.global_step >= plan.total_steps
            if s.val_set and (state.global_step % plan.eval_every == 0 or last):
                eval_start = time.perf_counter()
                _run_eval(s)
                loop_start += time.perf_counter() - eval_start  # throughput counts training time only
            if not last and not state.stopped_early and state.global_step % plan.save_every == 0 and s.is_main:
                save_start = time.perf_counter()
                save_checkpoint(s.work, state, s.model, s.optimizer, s.scheduler, keep=t.save_total_limit)
                loop_start += time.perf_counter() - save_start
            if last or state.stopped_early:
                break
        else:
            state.epoch += 1
            state.micro_batch = 0
    bar.close()
    console.bar = None
    if not s.is_main:
        return None  # rank 0 publishes; its work needs no other rank (FSDP runs have no test rows: spec.py)
    return publish(s, wall_start=wall_start)


@dataclass(frozen=True)
class TrainReport:
    """report.json (field order is the file's key order)."""

    model: str
    device: str
    precision: str
    quantization: str | None
    optimizer: str
    target_modules: list[str]
    train_loss: float | None
    train_loss_smoothed: float | None
    eval_loss: float | None  # the best validation loss, whose adapter is the one published
    eval_perplexity: float | None
    final_eval_loss: float | None
    best_step: int | None
    steps: int
    total_steps: int
    epochs: float
    stopped_early: bool
    train_examples: int
    validation_examples: int
    tokens_seen: int
    target_tokens_seen: int
    tokens_per_second: float
    train_seconds: float
    wall_time_seconds: float
    peak_memory_bytes: int
    peak_memory_kind: str  # "cuda_max_allocated" or "process_max_rss"
    weight_bytes: int
    trainable_parameters: int
    total_parameters: int
    trainable_share: float
    test_examples: int = 0
    evaluation: dict | None = None  # base vs adapter on the held-out test rows (evaluate.runner.Evaluation.summary)
    method: str = "sft"  # or the preference method: orpo, dpo, simpo
    # Preference runs: the validation metrics at the best step (the published adapter's) and at the last evaluation.
    preference: dict | None = None
    task: str = "causal_lm"  # data_config.task
    # Classification: the published adapter on the held-out rows (test split, else validation): accuracy,
    # macro_f1, per_class precision/recall/f1/support, labels, confusion_matrix, examples, split, loss.
    classification: dict | None = None
    # Seq2seq: the published adapter's greedy generations on the held-out rows (test split, else validation):
    # exact_match, chrf, rouge_l, loss (per target token), examples, split, and a few samples.
    seq2seq: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def build_report(
    s: Session,
    *,
    wall_start: float,
    evaluation: dict | None = None,
    classification: dict | None = None,
    seq2seq: dict | None = None,
) -> TrainReport:
    state, quant, runtime = s.state, s.quant, s.runtime
    t = s.spec.training_config
    preference = None
    if s.objective is not None:
        best, final = state.best_eval_metrics or {}, state.last_eval_metrics or {}
        preference = {
            "beta": s.objective.beta,
            **({"gamma": s.objective.gamma} if t.preference == "simpo" else {}),
            **{
                k: best.get(f"eval_{k}") for k in ("reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps")
            },
            "final_reward_accuracy": final.get("eval_reward_accuracy"),
            "final_reward_margin": final.get("eval_reward_margin"),
        }
    return TrainReport(
        model=s.model_id,
        device=runtime.device.type,
        precision=runtime.precision,
        quantization=f"4-bit {quant.quant_type}{' + double quant' if quant.double_quant else ''}" if quant else None,
        optimizer=s.optimizer_name,
        target_modules=s.targets,
        train_loss=state.last_train_loss,
        train_loss_smoothed=float(np.mean(state.loss_window)) if state.loss_window else None,
        eval_loss=state.best_eval_loss,
        eval_perplexity=(
            math.exp(min(state.best_eval_loss, 50))
            if state.best_eval_loss is not None and s.objective is None and not isinstance(s.task, ClassificationTask)
            else None
        ),
        final_eval_loss=state.last_eval_loss,
        best_step=state.best_step,
        steps=state.global_step,
        total_steps=s.plan.total_steps,
        epochs=round(state.global_step / s.plan.steps_per_epoch, 4),
        stopped_early=state.stopped_early,
        train_examples=len(s.train_set),
        validation_examples=len(s.val_set),
        tokens_seen=state.tokens_seen,
        target_tokens_seen=state.target_tokens_seen,
        tokens_per_second=state.tokens_seen / max(state.train_seconds, 1e-9),
        train_seconds=state.train_seconds,
        wall_time_seconds=time.time() - wall_start,
        peak_memory_bytes=_peak_memory_bytes(runtime),
        peak_memory_kind="cuda_max_allocated" if runtime.is_cuda else "process_max_rss",
        weight_bytes=weight_bytes(s.model),
        trainable_parameters=s.trainable,
        total_parameters=s.total_params,
        trainable_share=s.trainable / s.total_params,
        test_examples=len(s.eval_set) if s.eval_set is not None else 0,
        evaluation=evaluation,
        method=t.preference or "sft",
        preference=preference,
        task=s.spec.data_config.task,
        classification=classification,
        seq2seq=seq2seq,
    )


def publish(s: Session, *, wall_start: float) -> RunResult:
    """Write the final adapter (the best one by validation loss), the report and the plot into the work folder,
    drop the checkpoints, and rename the folder into place: only a complete run ever carries the final name."""
    state, work, output_dir = s.state, s.work, s.output_dir
    if state.best_step is not None and state.best_step != state.global_step:
        load_adapter_weights(s.model, work / "best_adapter")
        s.console.log(f"kept the adapter of step {state.best_step}, which had the lowest validation loss")
    adapter_dir = work / "adapter"
    save_adapter(s.model, adapter_dir)
    s.tokenizer.save_pretrained(adapter_dir)
    s.card.write(adapter_dir)  # how it was trained, so inference prompts it the same way (adapter_card.py)
    evaluation = None
    if s.eval_set is not None:
        from ..evaluate.runner import evaluate_after_training

        evaluation = evaluate_after_training(
            s.model,
            s.tokenizer,
            s.eval_set,
            runtime=s.runtime,
            loss_fn=evaluate,
            run_dir=work,
            base_source=s.model_id,
            batch_size=s.spec.training_config.batch_size * 2,
            log=s.console.log,
        )
        s.console.event({"type": "evaluation", **evaluation, "time": time.time()})
    classification = _score_classifier(s) if isinstance(s.task, ClassificationTask) else None
    seq2seq = _score_seq2seq(s) if isinstance(s.task, Seq2SeqTask) else None
    report = build_report(
        s, wall_start=wall_start, evaluation=evaluation, classification=classification, seq2seq=seq2seq
    ).to_dict()
    (work / "report.json").write_text(json.dumps(report, indent=2))
    method = s.spec.training_config.preference
    plot_loss(
        work / "metrics.jsonl",
        work / "loss.png",
        title=f"{s.model_id} · LoRA r={s.spec.pretrainedmodel_config.lora_r}"
        + (f" · {method.upper()}" if method else ""),
    )
    for ckpt in list_checkpoints(work):
        shutil.rmtree(ckpt)
    shutil.rmtree(work / "best_adapter", ignore_errors=True)
    if output_dir.exists():
        shutil.rmtree(output_dir)  # only reached with --overwrite of a finished run (checked in _prepare_output)
    os.replace(work, output_dir)
    if s.tracker:
        s.tracker.finish(report)
    s.console.log(
        f"done: {state.global_step} steps, train loss {state.last_train_loss:.4f}"
        + (f", validation loss {state.best_eval_loss:.4f}" if state.best_eval_loss is not None else "")
        + f", {report['tokens_per_second']:.0f} {'images' if isinstance(s.task, ImageClassificationTask) else 'tokens'}"
        + f"/s; adapter in {output_dir / 'adapter'}"
    )
    return RunResult(output_dir=output_dir, adapter_dir=output_dir / "adapter", report=report)


def _score_classifier(s: Session) -> dict | None:
    """The published classifier on the test rows (the validation rows when there are none): report.json's
    `classification`, and confusion_matrix.png in the run folder."""
    assert isinstance(s.task, ClassificationTask)
    split, rows = ("test", s.test_set) if s.test_set else ("validation", s.val_set)
    if not rows:
        return None
    scores = s.task.scores(
        s.model,
        cast("list[ClassExample]", rows),
        batch_size=s.spec.training_config.batch_size * 2,
        pad_id=s.pad_id,
        runtime=s.runtime,
    )
    plot_confusion(
        scores["confusion_matrix"],
        s.task.labels,
        s.work / "confusion_matrix.png",
        title=f"{len(rows):,} {split} rows\naccuracy {scores['accuracy']:.1%}, macro-F1 {scores['macro_f1']:.3f}",
    )
    s.console.log(f"{split} rows ({len(rows):,}): accuracy {scores['accuracy']:.4f}, macro-F1 {scores['macro_f1']:.4f}")
    result = {"split": split, **scores}
    s.console.event({"type": "classification", **result, "time": time.time()})
    return result


def _score_seq2seq(s: Session) -> dict | None:
    """The published seq2seq adapter's greedy generations on the test rows (the validation rows when there are
    none), scored: report.json's `seq2seq`."""
    assert isinstance(s.task, Seq2SeqTask)
    split, rows = ("test", s.test_set) if s.test_set else ("validation", s.val_set)
    if not rows:
        return None
    scores = s.task.scores(
        s.model,
        cast("list[Seq2SeqExample]", rows),
        batch_size=s.spec.training_config.batch_size * 2,
        pad_id=s.tokenizer.pad_token_id,
        runtime=s.runtime,
    )
    s.console.log(
        f"{split} rows ({len(rows):,}): exact match {scores['exact_match']:.4f}, chrF {scores['chrf']:.4f}, "
        f"ROUGE-L {scores['rouge_l']:.4f}"
    )
    result = {"split": split, **scores}
    s.console.event({"type": "seq2seq", **result, "time": time.time()})
    return result


def _resolved_spec(spec: JobSpec, targets: list[str], plan: Plan) -> dict:
    data = spec.to_dict(redact=True)
    data["pretrainedmodel_config"]["target_modules"] = targets
    tc = data["training_config"]
    tc["preference_method"] = spec.training_config.preference
    if spec.training_config.preference in ("dpo", "simpo"):
        tc["preference_beta"] = spec.training_config.beta
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
        values = {
            f"{prefix}/{k}": v for k, v in entry.items() if isinstance(v, (int, float)) and k not in ("step", "time")
        }
        self.run.log(values, step=entry["step"])

    def finish(self, report: dict) -> None:
        self.run.summary.update({k: v for k, v in report.items() if isinstance(v, (int, float, str))})
        self.run.finish()


def _wandb_tracker(spec: JobSpec, output_dir: Path, console: _Console) -> _WandbTracker:
    cfg = spec.logging_config
    try:
        import wandb
    except ImportError:
        raise TuneforgeError(
            "logging_config.use_wandb: the wandb package is not installed (pip install wandb)",
            field="logging_config.use_wandb",
            value=True,
        ) from None
    if cfg.wandb_login_key:
        wandb.login(key=cfg.wandb_login_key, relogin=True)
    run = wandb.init(
        project=cfg.wandb_project or "tuneforge",
        entity=cfg.wandb_username or None,
        name=cfg.wandb_run_name or output_dir.name,
        config=spec.to_dict(redact=True),
    )
    console.log(f"logging to Weights & Biases: {run.url or run.name}")
    return _WandbTracker(run)
