"""Single-stream decode speed: tuneforge's serving engine against plain transformers `generate` (and llama.cpp on
the exported GGUF when `llama-cpp-python` is installed), in one process.

    python bench/infer_bench.py [--reps 5] [--rank 8] [--threads N]      (also: make bench-infer)

Default model SmolLM2-135M-Instruct, greedy, end of sequence ignored, chat prompt of ~50 tokens. Variants:
  engine: base              `InferenceEngine` (what `tuneforge serve` runs) on the base model;
  engine: adapter unmerged  the same engine answering for a LoRA adapter (rank --rank on all 7 projections,
                            random nonzero B as after training), applied on the fly;
  engine: merged            an engine over `merge_adapter(...)`'s output (the adapter folded into the weights);
  engine: plain forward     the base through the engine with its lean decode step off (`fast_decode=False`): the
                            Hugging Face forward per token, i.e. the engine before the lean step;
  engine: ... int8 weights  the base and the unmerged adapter with `weights="int8"` (`tuneforge serve --weights
                            int8`: q8_0 projections and output head, LoRA in fp32 on top, one sequence's step
                            as one call into tuneforge's C kernels), on a CPU in fp32;
  transformers generate     `model.generate` on the base, same dtype, no tuneforge code;
  ..., static cache + CUDA graphs   (CUDA only) the same with `cache_implementation="static"`, with which
                            transformers compiles the decode step with torch.compile(mode="reduce-overhead");
  llama.cpp <type>          `llama_cpp.Llama` on the merged model exported to GGUF (q8_0 and f16), when installed.
Time per generated token is decode only: (t(N2 tokens) - t(N1 tokens)) / (N2 - N1), so prefill and per-request
costs cancel. Variants run interleaved, rep after rep, and the median is kept, so load from other processes on
the machine hits all of them alike: quote ratios; absolute figures only with the load average printed with them.

Checks printed (and the exit status): the engine's greedy tokens equal transformers' on the base and merged
models and between the merged and unmerged adapter in fp32 (in bf16: the first 8 tokens, the usual tolerance).
int8 is checked by greedy top-1 agreement instead: the int8 engine's tokens against the fp32 engine's, position by
position over the long run, printed as a fraction (not part of the exit status: 8-bit arithmetic is not bit-exact).
Last line: `single_stream_tokens_per_s=X vs_transformers=Y vs_llama_cpp=Z` where X is the slower of the engine's
base and unmerged-adapter figures (with `--weights int8`, the default on a CPU in float32: of the int8 engine's),
Y = X / transformers generate,
Z = X / llama.cpp q8_0 (omitted without it).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def make_adapter(out: Path, rank: int, seed: int = 0) -> Path:
    """A LoRA adapter shaped like a trained tuneforge adapter (all projections), B random and nonzero."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.models.loader import SMOLLM2_ID, resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model(SMOLLM2_ID).load_from, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    peft_model.peft_config["default"].base_model_name_or_path = SMOLLM2_ID
    peft_model.save_pretrained(out)
    return out


def load_avg() -> str:
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank (tuneforge's default is 8)")
    ap.add_argument("--short", type=int, default=8, help="N1 generated tokens")
    ap.add_argument("--long", type=int, default=72, help="N2 generated tokens (N2 - N1 = 64 by default)")
    ap.add_argument(
        "--min-seconds", type=float, default=8.0, help="each variant's (short, long) pairs per rep last at least this"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument(
        "--weights",
        default=None,
        choices=("dense", "int8"),
        help="the engine the last line reports (default: int8 on a CPU in float32, where it runs; dense elsewhere)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from tuneforge.inference import merge_adapter
    from tuneforge.models.loader import SMOLLM2_ID, resolve_model
    from tuneforge.serve.engine import InferenceEngine

    tmp = Path(tempfile.mkdtemp(prefix="tuneforge-infer-bench-"))
    adapter = make_adapter(tmp / "adapter", args.rank)
    merged = merge_adapter(adapter, tmp / "merged")
    engines = {
        "lora": InferenceEngine(SMOLLM2_ID, adapters={"ft": str(adapter)}, device=args.device),
        "merged": InferenceEngine(str(merged), model_name="merged", device=args.device),
        "plain": InferenceEngine(SMOLLM2_ID, device=args.device, fast_decode=False),
    }
    lora = engines["lora"]
    dtype, device = lora.dtype, lora.device
    with_int8 = device.type == "cpu" and dtype == torch.float32
    if with_int8:
        engines["int8"] = InferenceEngine(SMOLLM2_ID, adapters={"ft": str(adapter)}, device=args.device, weights="int8")
    elif args.weights == "int8":
        print(f"--weights int8 runs on a CPU in float32, not {device.type} {dtype}")
        return 2
    if args.weights is None:
        args.weights = "int8" if with_int8 else "dense"
    messages = [
        {
            "role": "user",
            "content": "Write a short story about a lighthouse keeper who finds a message in "
            "a bottle, in three paragraphs.",
        }
    ]
    prompt_ids = lora.encode(lora.chat_prompt(messages), chat=True)

    def engine_run(engine, model):
        def run(n):
            res = engine.generate(model, prompt_ids, temperature=0, max_tokens=n, ignore_eos=True)
            assert res.completion_tokens == n
            return engine.encode(res.text)  # for the equality checks (re-encoded text)

        return run

    hf = AutoModelForCausalLM.from_pretrained(resolve_model(SMOLLM2_ID).load_from, dtype=dtype).to(device).eval()
    hf_ids = torch.tensor([prompt_ids], device=device)

    def hf_run(n):
        with torch.no_grad():
            out = hf.generate(
                input_ids=hf_ids,
                attention_mask=torch.ones_like(hf_ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )
        return lora.encode(lora.tokenizer.decode(out[0, len(prompt_ids) :], skip_special_tokens=True))

    variants = {
        "engine: base": engine_run(lora, lora.base_name),
        f"engine: adapter unmerged (r={args.rank})": engine_run(lora, "ft"),
        "engine: merged": engine_run(engines["merged"], "merged"),
        "engine: plain forward (lean step off)": engine_run(engines["plain"], engines["plain"].base_name),
        "transformers generate": hf_run,
    }
    unmerged = f"engine: adapter unmerged (r={args.rank})"
    int8_pairs = {"engine: base, int8 weights": "engine: base", f"{unmerged}, int8 weights": unmerged}
    if with_int8:
        variants["engine: base, int8 weights"] = engine_run(engines["int8"], lora.base_name)
        variants[f"{unmerged}, int8 weights"] = engine_run(engines["int8"], "ft")
    if device.type == "cuda":
        variants.update(
            cuda_graph_variant(
                hf, hf_ids, args, lambda out: lora.encode(lora.tokenizer.decode(out, skip_special_tokens=True))
            )
        )
    variants.update(llama_cpp_variants(merged, tmp, prompt_ids))

    # Warm-up (adapter load, allocator, llama.cpp mmap) and the equality checks.
    outputs = {label: run(args.short) for label, run in variants.items()}
    exact = dtype == torch.float32
    n_check = None if exact else 8
    checks = {
        "engine base == transformers generate": outputs["engine: base"][:n_check]
        == outputs["transformers generate"][:n_check],
        "engine base == plain forward": outputs["engine: base"][:n_check]
        == outputs["engine: plain forward (lean step off)"][:n_check],
        "merged == adapter unmerged": outputs["engine: merged"][:n_check] == outputs[unmerged][:n_check],
    }

    per_token: dict[str, list[float]] = {label: [] for label in variants}
    loads = [load_avg()]
    for _ in range(args.reps):
        for label, run in variants.items():
            # A fast variant (llama.cpp: ~2 s a pair) repeats its (short, long) pair until --min-seconds have
            # passed: on a loaded machine one scheduler stall of a few seconds inside a single short pair made the
            # difference negative (measured -53 to +113 ms/token for llama.cpp in one run); the median over the
            # pairs of all reps is kept. Slow variants run one pair a rep as before.
            spent = 0.0
            while True:
                t = time.perf_counter()
                run(args.short)
                t_short = time.perf_counter() - t
                t = time.perf_counter()
                outputs[label] = run(args.long)
                t_long = time.perf_counter() - t
                per_token[label].append((t_long - t_short) / (args.long - args.short))
                spent += t_short + t_long
                if spent >= args.min_seconds:
                    break
        loads.append(load_avg())
    for e in engines.values():
        e.close()

    med = {label: statistics.median(v) for label, v in per_token.items()}
    lean = "on" if lora._fast is not None else "OFF (see the log)"
    print(
        f"\nSmolLM2-135M-Instruct, {str(dtype).removeprefix('torch.')}, {device}, {torch.get_num_threads()} torch "
        f"threads, {platform.machine()}, torch {torch.__version__}; lean decode {lean}; prompt {len(prompt_ids)} "
        f"tokens; decode time per token = (t({args.long}) - t({args.short})) / {args.long - args.short}, median "
        f"of {args.reps} interleaved reps (fast variants: of all their pairs, >= {args.min_seconds:g} s per rep); "
        f"1-min load average during the reps: {', '.join(loads)}\n"
    )
    ref = med["transformers generate"]
    print("| variant | ms / generated token | tokens / s | speed vs transformers generate |")
    print("| --- | ---: | ---: | ---: |")
    for label, v in med.items():
        spread = f" (min {min(per_token[label]) * 1e3:.1f}, max {max(per_token[label]) * 1e3:.1f})"
        print(f"| {label} | {v * 1e3:.2f}{spread} | {1 / v:.1f} | {ref / v:.2f}x |")
    print()
    for what, ok in checks.items():
        print(f"{what} (greedy, {'all' if exact else 'first 8'} tokens): {ok}")
    if with_int8 and engines["int8"].weights != "int8":
        print("the int8 engine fell back to dense weights (its log line says why): its rows are fp32")
    if with_int8:
        # greedy top-1 agreement of the int8 engine with the fp32 one, position by position (the re-encoded texts;
        # after the first difference the two continue from different tokens, so this is a lower bound)
        for label, dense in int8_pairs.items():
            a, b = outputs[label], outputs[dense]
            same = sum(x == y for x, y in zip(a, b, strict=False))
            print(
                f"{label}: {med[dense] / med[label]:.2f}x the fp32 lean step's speed; greedy tokens equal to fp32 at "
                f"{same}/{max(len(a), len(b))} positions (first difference at {first_difference(a, b)})"
            )
    if args.weights == "int8":
        x = 1 / max(med["engine: base, int8 weights"], med[f"{unmerged}, int8 weights"])
    else:
        x = 1 / max(med["engine: base"], med[unmerged])
    line = f"single_stream_tokens_per_s={x:.1f} vs_transformers={x * ref:.2f}"
    if "llama.cpp q8_0" in med:
        line += f" vs_llama_cpp={x * med['llama.cpp q8_0']:.2f}"
    print(line)
    return 0 if all(checks.values()) else 1


def first_difference(a: list[int], b: list[int]) -> int | str:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), "none")


def cuda_graph_variant(hf, hf_ids: torch.Tensor, args, decode) -> dict:
    """transformers `generate` with a static KV cache, which on CUDA makes it compile the decode forward with
    `torch.compile(mode="reduce-overhead")` (CUDA graphs: one graph replay per token instead of hundreds of kernel
    launches; transformers' `CompileConfig` default). Compiled for both lengths here (a static cache's size is part
    of the graph), outside the timed reps; a compile failure drops the row with one line saying why."""
    prompt = hf_ids.shape[1]

    def run(n):
        with torch.no_grad():
            out = hf.generate(
                input_ids=hf_ids,
                attention_mask=torch.ones_like(hf_ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
                cache_implementation="static",
            )
        return decode(out[0, prompt:])

    try:
        for n in (args.short, args.long):
            run(n)
    except Exception as exc:  # inductor/CUDA-graph failures vary by torch version and GPU: report, do not abort
        print(f"transformers generate with CUDA graphs off: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        return {}
    return {"transformers generate, static cache + CUDA graphs": run}


def llama_cpp_variants(merged: Path, tmp: Path, prompt_ids: list[int]) -> dict:
    """llama.cpp on the merged model exported to GGUF (q8_0 and f16), when llama-cpp-python is installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        print("llama-cpp-python not installed (pip install -e '.[llama]'): no llama.cpp comparison")
        return {}
    from llama_cpp import Llama

    from tuneforge.export import convert_to_gguf

    variants = {}
    for outtype in ("q8_0", "f16"):
        path = tmp / f"merged-{outtype}.gguf"
        convert_to_gguf(merged, path, outtype=outtype)
        llm = Llama(model_path=str(path), n_ctx=512, n_threads=torch.get_num_threads(), verbose=False)

        def run(n, llm=llm):
            llm.reset()
            out = []
            for token in llm.generate(prompt_ids, temp=0.0, top_k=1, reset=True):
                out.append(token)
                if len(out) == n:
                    break
            return out

        variants[f"llama.cpp {outtype}"] = run
    return variants


if __name__ == "__main__":
    sys.exit(main())
