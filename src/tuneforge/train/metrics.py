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


# The second panel of loss.png for tasks scored beyond their loss: (eval record keys with their labels, title).
_SCORE_PANELS = (
    ((("eval_accuracy", "accuracy"), ("eval_macro_f1", "macro-F1")), "validation accuracy and macro-F1"),  # classifiers
    (  # seq2seq (train/seq2seq.py): the greedy generations
        (("eval_exact_match", "exact match"), ("eval_chrf", "chrF"), ("eval_rouge_l", "ROUGE-L")),
        "validation generations: exact match, chrF, ROUGE-L",
    ),
)


def plot_loss(metrics_path: Path, out_png: Path, title: str = "") -> None:
    """Train and validation loss; for preference runs a second panel with the validation reward accuracy and
    margin (what tells whether the model has learned to prefer the chosen answers), for classifiers and seq2seq
    models one with their validation scores (_SCORE_PANELS)."""
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
    panel = next((p for p in _SCORE_PANELS if any(r.get("type") == "eval" and p[0][0][0] in r for r in records)), None)
    scored = [r for r in records if r.get("type") == "eval" and panel and panel[0][0][0] in r]
    scores = bool(panel and scored)
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
        if scores and panel is _SCORE_PANELS[0]
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
        assert panel is not None
        at = [r["step"] for r in scored]
        for (key, label), color, marker, style in zip(
            panel[0], ("#2ca02c", "#9467bd", "#ff7f0e"), "os^", ("-", "--", ":"), strict=False
        ):
            rax.plot(at, [r[key] for r in scored], label=label, color=color, marker=marker, linestyle=style)
        rax.set_ylim(-0.02, 1.02)
        rax.set_xlabel("optimizer step")
        rax.set_ylabel("validation score")
        rax.grid(alpha=0.3)
        rax.legend(loc="lower right")
        rax.set_title(panel[1])
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
