"""lm-evaluation-harness tasks on a model or an adapter (optional extra: `pip install tuneforge[lm-eval]`).

The model is loaded by tuneforge's own loader (`load_for_inference`: aliases, the bundled SmolLM2, adapters with
their recorded base) and handed to the harness as a ready model object, so an adapter needs no merge and no copy.
For an adapter the base is scored too, inside PEFT's `disable_adapter()` (the same weights in memory), so the
result answers "what did the fine-tune cost or gain on standard tasks".

Only tasks whose data is on this machine can run (the hubs may be unreachable): a custom task YAML with
`dataset_path: json` (or csv/parquet) and `dataset_kwargs: {data_files: ...}` in a folder given as `--include-path`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import TuneforgeError, did_you_mean

RESULTS_FILE = "lm_eval.json"  # beside the run (or the adapter) unless --output says otherwise


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise TuneforgeError(
            "lm-evaluation-harness is not installed: pip install 'tuneforge[lm-eval]' (or lm_eval)", field="lm_eval"
        ) from None
    return lm_eval, HFLM, TaskManager


def check_tasks(tasks: list[str], include_path: str | None):
    """A TaskManager that knows `tasks` (the harness's own and those under `include_path`), or a clear error."""
    _, _, task_manager_cls = _lm_eval()
    if include_path and not Path(include_path).expanduser().is_dir():
        raise TuneforgeError(
            f"--include-path: {include_path!r} is not a folder of task YAML files",
            field="--include-path",
            value=include_path,
        )
    include = str(Path(include_path).expanduser()) if include_path else None
    manager = None
    if include:
        # Indexing the harness's thousands of built-in task files takes a while; local tasks alone need none of it.
        manager = task_manager_cls(include_path=include, include_defaults=False)
        if not set(tasks) <= set(manager.all_tasks):
            manager = None
    if manager is None:
        manager = task_manager_cls(include_path=include)
    known = set(manager.all_tasks)
    for task in tasks:
        if task not in known:
            raise TuneforgeError(
                f"--tasks: unknown lm-evaluation-harness task {task!r}{did_you_mean(task, known)}; "
                "define it in a YAML file under --include-path",
                field="--tasks",
                value=task,
            )
    return manager


def _scores(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} without stderr entries and the harness's ',none' filter suffix."""
    out: dict[str, dict[str, float]] = {}
    for task, metrics in result.get("results", {}).items():
        out[task] = {
            key.split(",")[0]: value
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and "_stderr" not in key
        }
    return out


def run_harness(
    target: str,
    tasks: list[str],
    *,
    include_path: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    device: str | None = None,
    output: str | None = None,
    log=None,
) -> tuple[dict[str, dict], Path]:
    """Run `tasks` on `target` (an adapter/run folder: base and adapter; a model: itself). Returns
    ({candidate: {task: {metric: value}}}, path of the saved full results)."""
    import torch

    from ..inference import load_for_inference
    from .evaluate import resolve_target

    lm_eval, hflm_cls, _ = _lm_eval()
    manager = check_tasks(tasks, include_path)  # before loading any model
    t = resolve_target(target, "ADAPTER_OR_MODEL")
    out_path = (
        Path(output).expanduser()
        if output
        else (
            (t.adapter_dir.parent if t.adapter_dir.name == "adapter" else t.adapter_dir) / RESULTS_FILE
            if t.adapter_dir is not None
            else Path(RESULTS_FILE)
        )
    )
    model, tokenizer = load_for_inference(t.model_path, t.adapter_dir, dtype=torch.float32, device=device)

    def evaluate() -> dict[str, Any]:
        lm = hflm_cls(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        try:
            return lm_eval.simple_evaluate(
                model=lm,
                tasks=tasks,
                task_manager=manager,
                limit=limit,
                num_fewshot=num_fewshot,
                log_samples=False,
                verbosity="ERROR",
            )
        except (ConnectionError, OSError) as exc:
            raise TuneforgeError(
                f"--tasks: the data of {', '.join(tasks)} could not be read ({exc}); only tasks whose "
                "data is on this machine can run (dataset_path: json with local data_files)",
                field="--tasks",
            ) from None

    full: dict[str, Any] = {}
    if t.is_adapter:
        with model.disable_adapter():
            if log:
                log(f"lm-eval: {', '.join(tasks)} on the base model {t.model_path}")
            full["base"] = evaluate()
        if log:
            log(f"lm-eval: {', '.join(tasks)} on the adapter {t.adapter_dir}")
        full["adapter"] = evaluate()
    else:
        full["model"] = evaluate()
    scores = {name: _scores(result) for name, result in full.items()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(
        json.dumps({"target": target, "tasks": tasks, "scores": scores, "results": full}, indent=2, default=str)
    )
    tmp.replace(out_path)
    return scores, out_path


def run_lm_eval_command(args) -> int:
    tasks = [x.strip() for v in args.tasks for x in v.split(",") if x.strip()]
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    scores, path = run_harness(
        args.target,
        tasks,
        include_path=args.include_path,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
        device=args.device,
        output=args.output,
        log=log,
    )
    if args.json:
        print(json.dumps(scores, indent=2))
    else:
        names = list(scores)
        print(f"{'task':<24}{'metric':<16}" + "".join(f"{n:>12}" for n in names))
        first = scores[names[0]]
        for task, metrics in first.items():
            for metric in metrics:
                print(f"{task:<24}{metric:<16}" + "".join(f"{scores[n][task][metric]:>12.4f}" for n in names))
    print(f"full results: {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def add_lm_eval_arguments(p: argparse.ArgumentParser) -> None:
    from .evaluate import _positive

    p.add_argument(
        "target",
        metavar="ADAPTER_OR_MODEL",
        help="an adapter or run folder (scored with its base), or a model folder, hub id or alias",
    )
    p.add_argument(
        "--tasks", nargs="+", required=True, metavar="TASK", help="harness task names (space- or comma-separated)"
    )
    p.add_argument("--include-path", help="folder of custom task YAML files (e.g. local data via dataset_path: json)")
    p.add_argument("--limit", type=_positive, help="at most N examples per task")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples per prompt (default: the task's)")
    p.add_argument("--batch-size", type=_positive, default=8)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--output", help=f"full results JSON (default: {RESULTS_FILE} beside the run, or here for a model)")
    p.add_argument("--json", action="store_true", help="print {candidate: {task: {metric: value}}}")
    p.add_argument("--quiet", action="store_true")
