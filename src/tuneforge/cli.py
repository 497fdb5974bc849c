"""The `tuneforge` command: parse arguments, call one function, print. Logic lives elsewhere.

Commands import what they run inside their function: training, serving and the service pull in torch, FastAPI
and SQLAlchemy, which `tuneforge --help` or `tuneforge spec` should not wait for.

User errors (TuneforgeError) print one line `tuneforge: error: ...` and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import get_args

from . import __version__
from .commands.data import add_validate_arguments, run_validate
from .commands.service import add_service_commands
from .errors import TuneforgeError
from .models.listing import add_models_arguments
from .spec import GGUFType


def _cmd_train(args) -> int:
    from .data import DataValidationError
    from .spec import load_spec
    from .train.recipe import train

    spec = load_spec(args.spec, args.set)
    options = dict(resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    if args.nproc is not None or spec.training_config.distributed.strategy != "none":
        from .train.distributed import launch

        # Rank 0 prints a data validation report itself (train/distributed.py).
        launched = launch(spec, args.output, nproc=args.nproc, **options)
        if launched is None:
            note = "rank 0 runs on another machine and wrote the run"
            print(json.dumps({"output": os.path.abspath(args.output), "note": note}))
            return 0
        result = launched
    else:
        try:
            result = train(spec, args.output, **options)
        except DataValidationError as exc:
            print(exc.report.to_text(), file=sys.stderr)  # the same report as `tuneforge data validate`
            raise
    r = result.report
    summary = {
        k: r[k]
        for k in (
            "train_loss",
            "eval_loss",
            "eval_perplexity",
            "steps",
            "epochs",
            "tokens_per_second",
            "wall_time_seconds",
            "trainable_parameters",
            "trainable_share",
        )
    }
    if r.get("preference"):  # preference runs: the method and the best validation rewards
        summary = {
            "method": r["method"],
            **summary,
            "eval_reward_accuracy": r["preference"]["reward_accuracy"],
            "eval_reward_margin": r["preference"]["reward_margin"],
        }
    if r.get("classification"):  # classifiers: the held-out scores of the published adapter
        c = r["classification"]
        summary = {**summary, "split": c["split"], "accuracy": c["accuracy"], "macro_f1": c["macro_f1"]}
    if r.get("seq2seq"):  # seq2seq: the held-out generations of the published adapter, scored
        g = r["seq2seq"]
        summary = {**summary, "split": g["split"], **{m: g[m] for m in ("exact_match", "chrf", "rouge_l")}}
    print(json.dumps({"output": str(result.output_dir), **summary}, indent=2))
    return 0


def _chat_template_arg(p, what: str) -> None:
    p.add_argument(
        "--chat-template",
        choices=["training", "model"],
        default="training",
        help=f"how {what} is rendered: training (default) = as the adapter was trained, from its "
        "tuneforge_adapter.json (its prompt_template, Alpaca prompt, or the model's chat template for chat "
        "data); model = the base model's chat template",
    )


def _cmd_generate(args) -> int:
    from .inference import format_prompt, generate, load_for_inference

    model, tokenizer = load_for_inference(args.model, args.adapter)
    text = format_prompt(
        tokenizer,
        args.prompt,
        chat=False if args.raw else None,
        adapter_dir=args.adapter,
        chat_template=args.chat_template,
    )
    print(
        generate(
            model, tokenizer, text, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed
        )
    )
    return 0


def _cmd_merge(args) -> int:
    from .inference import merge_adapter

    out = merge_adapter(args.adapter, args.output, model_path=args.model, chat_template=args.chat_template)
    print(f"merged model written to {out}")
    return 0


def _cmd_serve(args) -> int:
    from .serve.app import run_server

    return run_server(
        model=args.model,
        adapters=args.adapter,
        host=args.host,
        port=args.port,
        max_adapters=args.max_adapters,
        api_key=args.api_key,
        model_name=args.model_name,
        chat_template=args.chat_template,
        dtype=args.dtype,
        weights=args.weights,
        scheduler=args.scheduler,
        max_batch_size=args.max_batch_size,
        step_tokens=args.step_tokens,
        kv_cache_mb=args.kv_cache_mb,
        max_waiting=args.max_waiting,
    )


def _cmd_predict(args) -> int:
    from .commands.predict import run_predict

    return run_predict(args)


def _cmd_export(args) -> int:
    from .export import run_export

    return run_export(args)


def _cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(output=args.output, max_steps=args.max_steps)


def _cmd_eval(args) -> int:
    from .commands.evaluate import run_eval

    return run_eval(args)


def _cmd_lm_eval(args) -> int:
    from .commands.lm_eval import run_lm_eval_command

    return run_lm_eval_command(args)


def _cmd_spec(args) -> int:
    from .spec import JobSpec, load_spec

    if args.spec:
        print(load_spec(args.spec, args.set).to_json())
    else:
        print(json.dumps(JobSpec.model_json_schema(), indent=2))
    return 0


def _cmd_estimate(args) -> int:
    from .estimate import estimate_job, format_estimate
    from .spec import load_spec

    est = estimate_job(
        load_spec(args.spec, args.set), device=args.device, gpu_memory_gb=args.gpu_memory, gpu_tflops=args.gpu_tflops
    )
    print(json.dumps(est.to_dict(), indent=2) if args.json else format_estimate(est))
    return 0 if est.fits is not False else 1


def _cmd_export_base(args) -> int:
    from .export_base import run_export_base

    return run_export_base(args)


def _cmd_models(args) -> int:
    from .models.listing import run_models

    return run_models(args)


def _cmd_data_validate(args) -> int:
    return run_validate(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneforge", description="Self-hosted LoRA/QLoRA fine-tuning for open LLMs.")
    parser.add_argument("--version", action="version", version=f"tuneforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="fine-tune a LoRA/QLoRA adapter from a job spec (JSON or YAML)")
    p.add_argument("spec", help="job spec file: the MonsterAPI fine-tune payload, plus optional tuneforge fields")
    p.add_argument("--output", "-o", required=True, help="run folder to create (adapter/, report.json, ...)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a spec field, e.g. --set training_config.learning_rate=1e-4 (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --output")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or log lines")
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="train on N processes of this machine with torch.distributed (one per GPU, or per CPU core without "
        "one); batch_size stays per process. Sets training_config.distributed.nproc_per_node; picks strategy "
        "ddp when the spec's is none",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("generate", help="generate text with a base model, optionally with an adapter")
    p.add_argument("prompt")
    p.add_argument("--model", "-m", default=None, help="base model (default: the adapter's base, else SmolLM2)")
    p.add_argument("--adapter", "-a", default=None, help="adapter folder (a run's adapter/)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--raw", action="store_true", help="the prompt is already formatted: no template at all")
    _chat_template_arg(p, "the prompt")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("merge", help="merge an adapter into its base model (no added inference latency)")
    p.add_argument("adapter", help="adapter folder")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--model", "-m", default=None, help="base model (default: the one recorded in the adapter)")
    _chat_template_arg(p, "the merged model's chat template")
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser("serve", help="serve a base model and LoRA adapters on an OpenAI-compatible API")
    p.add_argument(
        "--model",
        "-m",
        default=None,
        help="base model (default: SmolLM2-135M-Instruct; classifier adapters: the base their adapter names)",
    )
    p.add_argument(
        "--adapter",
        "-a",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="serve the adapter in DIR as model NAME (repeatable; loaded on first use); a classifier adapter answers "
        "POST /v1/classify",
    )
    p.add_argument("--model-name", default=None, help="the base model's name in the API (default: its id)")
    p.add_argument(
        "--dtype",
        default="auto",
        help="weight dtype: auto (bf16 on CUDA and on CPUs with native bf16, else float32), float32, "
        "bfloat16 or float16",
    )
    p.add_argument(
        "--weights",
        default="dense",
        help="decode-step weights: dense (the --dtype weights, default) or int8 (CPU, float32: llama.cpp's q8_0 "
        "format run by tuneforge's C kernels, built on first use with the system C compiler; ~4x faster per token "
        "on a memory-bound CPU, not bit-identical to float32: next-token KL ~0.005 nats)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--max-adapters",
        type=int,
        default=4,
        help="adapters kept in memory at once; the least recently used is evicted past this",
    )
    p.add_argument(
        "--scheduler",
        choices=("batched", "roundrobin"),
        default="batched",
        help="batched: continuous batching, one decode step for all requests and adapters (default); "
        "roundrobin: one request's token per step (the old engine, for comparison)",
    )
    p.add_argument("--max-batch-size", type=int, default=32, help="most requests decoded together (default 32)")
    p.add_argument(
        "--step-tokens",
        type=int,
        default=256,
        help="prompt tokens prefilled per step at most, so running streams wait for one bounded chunk (default 256)",
    )
    p.add_argument(
        "--kv-cache-mb",
        type=float,
        default=2048,
        help="memory for the running batch's KV cache; requests past it wait in the queue (default 2048)",
    )
    p.add_argument(
        "--max-waiting",
        type=int,
        default=1024,
        help="queued requests at most; more get 503 with Retry-After (default 1024)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("TUNEFORGE_API_KEY"),
        help="require `Authorization: Bearer KEY` (default: $TUNEFORGE_API_KEY; none: open)",
    )
    _chat_template_arg(p, "chat requests to an adapter")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "predict",
        help="label every row of a file with a classifier adapter, or generate its target with a seq2seq adapter (JSONL or CSV out)",
    )
    from .commands.predict import add_predict_arguments

    add_predict_arguments(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="export an adapter merged into its base: Hugging Face folder and/or GGUF")
    p.add_argument("adapter", help="adapter folder (a run's adapter/)")
    p.add_argument("--merged", default=None, metavar="DIR", help="write the merged Hugging Face model here")
    p.add_argument("--gguf", default=None, metavar="FILE.gguf", help="write the merged model as GGUF here")
    p.add_argument("--gguf-type", choices=get_args(GGUFType), default="q8_0", help="GGUF weight type (default q8_0)")
    p.add_argument("--model", "-m", default=None, help="base model (default: the one recorded in the adapter)")
    _chat_template_arg(p, "the exported model's chat template (tokenizer_config.json, GGUF tokenizer.chat_template)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("demo", help="fine-tune SmolLM2-135M on the bundled example task and show before/after")
    p.add_argument("--output", "-o", default="runs/demo")
    p.add_argument("--max-steps", type=int, default=None, help="cap the optimizer steps (default: the demo spec)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("eval", help="score an adapter (against its base), a merged model or a base model on a dataset")
    from .commands.evaluate import add_eval_arguments

    add_eval_arguments(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "lm-eval",
        help="run lm-evaluation-harness tasks on an adapter (and its base) or a model (needs tuneforge[lm-eval])",
    )
    from .commands.lm_eval import add_lm_eval_arguments

    add_lm_eval_arguments(p)
    p.set_defaults(func=_cmd_lm_eval)

    p = sub.add_parser("spec", help="print a resolved spec (with defaults), or the JSON schema without SPEC")
    p.add_argument("spec", nargs="?")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.set_defaults(func=_cmd_spec)

    p = sub.add_parser("estimate", help="predict a job's peak memory and time per epoch before running it")
    p.add_argument("spec")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: CUDA when present, else CPU")
    p.add_argument("--gpu-memory", type=float, default=None, metavar="GB", help="memory of the target GPU")
    p.add_argument(
        "--gpu-tflops",
        type=float,
        default=None,
        metavar="T",
        help="matmul peak of a GPU that is not on this machine (bf16 dense TFLOP/s), for the time",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_estimate)

    p = sub.add_parser("models", help="list the model catalog with estimated LoRA/QLoRA memory (--json for all fields)")
    add_models_arguments(p)
    p.set_defaults(func=_cmd_models)
    models = p.add_subparsers(dest="models_command", metavar="COMMAND")
    p = models.add_parser(
        "export-base",
        help="write a base model (e.g. the bundled default) as a Hugging Face "
        "folder, so plain PEFT loads its adapters offline",
    )
    p.add_argument("name", help="model id, alias or folder, as in model_path (e.g. smollm2)")
    p.add_argument("dir", help="the folder to write (new or empty)")
    p.add_argument(
        "--adapter",
        "-a",
        action="append",
        default=[],
        metavar="ADAPTER_DIR",
        help="point this adapter's adapter_config.json at DIR, after checking it was trained on these "
        "exact weights (repeatable)",
    )
    p.set_defaults(func=_cmd_export_base)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(
        dest="data_command", required=True, metavar="COMMAND"
    )
    p = data.add_parser("validate", help="check a dataset before training and print a report")
    add_validate_arguments(p)
    p.set_defaults(func=_cmd_data_validate)

    add_service_commands(sub)  # server, worker, keys
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # PEFT calls a transformers API that transformers deprecates; users can do nothing about it.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TuneforgeError as exc:
        print(f"tuneforge: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tuneforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
