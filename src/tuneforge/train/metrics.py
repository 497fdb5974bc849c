"""metrics.jsonl (one JSON object per logging step and per evaluation) and the loss.png chart drawn from it."""

from __future__ import annotations

import json
import os
from pathlib import Path


class MetricsLog:
    """Append-only JSONL, flushed per line so a crash loses at most the line being written."""

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        """On resume: drop records newer than the checkpoint, which the resumed run will write again."""
        if not self.path.exists():
            return
        kept = [line for line in read_metrics(self.path) if line.get("step", 0) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()


def read_metrics(path: Path) -> list[dict]:
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return records


def plot_loss(metrics_path: Path, out_png: Path, title: str = "") -> None:
    """Train and validation loss; for preference runs a second panel with the validation reward accuracy and
    margin (what tells whether the model has learned to prefer the chosen answers), for classifiers one with the
    validation accuracy and macro-F1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r.get("type") == "train"]
    evals = [(r["step"], r["eval_loss"]) for r in records if r.get("type") == "eval"]
    rewards = [
        (r["step"], r["eval_reward_accuracy"], r["eval_reward_margin"])
        for r in records
        if r.get("type") == "eval" and "eval_reward_accuracy" in r
    ]
    # Classifiers (train/tasks.py): validation accuracy and macro-F1 beside the loss.
    scores = [
        (r["step"], r["eval_accuracy"], r["eval_macro_f1"])
        for r in records
        if r.get("type") == "eval" and "eval_accuracy" in r
    ]
    if rewards or scores:
        fig, (ax, rax) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    else:
        fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="#1f77b4", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals, strict=True), label="validation loss", color="#d62728", marker="o", linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(
        "preference loss (per pair)"
        if rewards
        else "cross-entropy (nats/row)"
        if scores
        else "cross-entropy (nats/token)"
    )
    ax.set_title(title or "tuneforge training")
    ax.grid(alpha=0.3)
    ax.legend()
    if rewards:
        steps, acc, margin = zip(*rewards, strict=True)
        rax.plot(steps, acc, label="reward accuracy", color="#2ca02c", marker="o")
        rax.set_ylim(-0.02, 1.02)
        rax.set_xlabel("optimizer step")
        rax.set_ylabel("validation reward accuracy")
        rax.grid(alpha=0.3)
        max_ = rax.twinx()
        max_.plot(steps, margin, label="reward margin", color="#9467bd", marker="s", linestyle="--")
        max_.set_ylabel("validation reward margin")
        lines = rax.get_lines() + max_.get_lines()
        rax.legend(lines, [line.get_label() for line in lines], loc="lower right")
        rax.set_title("chosen vs rejected (validation pairs)")
    if scores:
        steps, acc, f1 = zip(*scores, strict=True)
        rax.plot(steps, acc, label="accuracy", color="#2ca02c", marker="o")
        rax.plot(steps, f1, label="macro-F1", color="#9467bd", marker="s", linestyle="--")
        rax.set_ylim(-0.02, 1.02)
        rax.set_xlabel("optimizer step")
        rax.set_ylabel("validation score")
        rax.grid(alpha=0.3)
        rax.legend(loc="lower right")
        rax.set_title("validation accuracy and macro-F1")
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
