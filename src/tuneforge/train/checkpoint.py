"""Resumable checkpoints: adapter weights, optimizer, scheduler, RNG and loop position, written atomically.

A checkpoint folder `checkpoint-<step>/` holds:
  adapter/            the LoRA adapter in PEFT format (usable on its own)
  training_state.pt   optimizer + scheduler state, torch/CUDA RNG states
  trainer_state.json  loop position and counters (TrainerState)
It is written under a temporary name and renamed into place, so a crash mid-write leaves no folder that looks
complete; `latest_checkpoint` only ever returns complete ones.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import TuneforgeError

_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainerState:
    global_step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch index
    micro_batch: int = 0  # micro-batches of `epoch` already consumed
    tokens_seen: int = 0  # real (non-padding) tokens processed
    target_tokens_seen: int = 0  # tokens that carried loss
    train_seconds: float = 0.0  # time spent in the training loop, across resumes
    best_eval_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    last_train_loss: float | None = None
    last_eval_loss: float | None = None
    loss_window: list[float] = field(default_factory=list)  # last logged losses, for a smoothed final value
    best_eval_metrics: dict[str, float] | None = None  # every value of the best evaluation (preference: rewards)
    last_eval_metrics: dict[str, float] | None = None


def save_checkpoint(work_dir: Path, state: TrainerState, model, optimizer, scheduler, *, keep: int) -> Path:
    final = work_dir / f"checkpoint-{state.global_step}"
    tmp = work_dir / f".checkpoint-{state.global_step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_adapter(model, tmp / "adapter")
    payload = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    torch.save(payload, tmp / "training_state.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _prune(work_dir, keep)
    return final


def save_adapter(model, folder: Path) -> None:
    """The LoRA weights in PEFT format. save_embedding_layers=False: tuneforge never resizes the vocabulary, and
    PEFT's "auto" would ask the hub whether the base's vocabulary changed (a network call, failing offline)."""
    model.save_pretrained(folder, save_embedding_layers=False)


def load_adapter_weights(model, folder: Path) -> None:
    """Put the LoRA weights saved in `folder` into the live adapter, refusing weights that do not fit it."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise TuneforgeError(
            f"adapter {folder} does not fit this model/LoRA configuration (unexpected weights such as {unexpected[0]})"
        )


def list_checkpoints(work_dir: Path) -> list[Path]:
    if not work_dir.is_dir():
        return []
    found = []
    for child in work_dir.iterdir():
        m = _NAME.match(child.name)
        if m and (child / "trainer_state.json").is_file():
            found.append((int(m.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(work_dir: Path) -> Path | None:
    found = list_checkpoints(work_dir)
    return found[-1] if found else None


def _prune(work_dir: Path, keep: int) -> None:
    for old in list_checkpoints(work_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def is_checkpoint(path: Path) -> bool:
    return (path / "trainer_state.json").is_file() and (path / "training_state.pt").is_file()


def load_checkpoint(path: Path, model, optimizer, scheduler) -> TrainerState:
    """Restore everything `save_checkpoint` wrote into live objects; returns the loop state."""
    load_adapter_weights(model, path / "adapter")
    payload = torch.load(path / "training_state.pt", weights_only=False)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["torch_rng"])
    if payload.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    return TrainerState(**json.loads((path / "trainer_state.json").read_text()))
