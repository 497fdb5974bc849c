#!/usr/bin/env bash
# The CUDA checks, as one script for a machine with an NVIDIA GPU (run from the repository root):
# GPU tests (bf16 LoRA, QLoRA with bitsandbytes kernels + paged AdamW 8-bit, the lean decode step in bf16), then
# both benchmarks (the decode benchmark on CUDA), then with 2+ GPUs one job on 2 GPUs (DDP, FSDP2, QLoRA + DDP).
# Results land in bench/out/ (and $OUT when set, as the device tool collects it); copy the tables into RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench/out}"
mkdir -p "$OUT_DIR"
# Needs nothing beyond a plain clone: the Makefile's recipe builds .venv (no-op when it is up to date) and the
# training benchmark generates its data set (bench/bench_data.py).
make .venv/.installed-stamp || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT_DIR/gpu.txt"
.venv/bin/python -m pytest -m gpu tests/test_gpu.py -q 2>&1 | tail -5 | tee "$OUT_DIR/gpu_tests.txt"
.venv/bin/python bench/train_bench.py --train-examples 400 --out "$OUT_DIR" 2>&1 | tail -20 | tee "$OUT_DIR/train_bench.txt"
# Decode benchmark on CUDA (bf16: the engine picks it there), against transformers generate in the same run, eager and
# with a static cache + CUDA graphs (torch.compile mode="reduce-overhead"; its row is dropped with one line if the
# compile fails). The table has up to 10 rows plus the checks: keep the last 24 lines.
.venv/bin/python bench/infer_bench.py --device cuda 2>&1 | tail -24 | tee "$OUT_DIR/infer_bench.txt"
# One job on 2 GPUs (tuneforge train --nproc 2, NCCL): DDP and FSDP2 against a 1-GPU run with twice the per-process
# batch (same first 5 step losses within 1e-3 relative: bf16, so looser than the CPU tests' fp32), and QLoRA with
# DDP (FSDP cannot shard bitsandbytes' 4-bit weights: spec.py refuses that pairing). Needs at least 2 GPUs.
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
    MULTI=(--overwrite -q --set 'data_config.data_split_config={"train":0.9,"validation":0.1}'
        --set training_config.max_steps=30 --set pretrainedmodel_config.lora_dropout=0.0)
    {
        .venv/bin/tuneforge train examples/demo/spec.yaml -o "$OUT_DIR/multi_1gpu" "${MULTI[@]}" \
            --set training_config.batch_size=8 \
            && .venv/bin/tuneforge train examples/demo/spec.yaml -o "$OUT_DIR/multi_ddp" "${MULTI[@]}" --nproc 2 \
                --set training_config.batch_size=4 \
            && .venv/bin/tuneforge train examples/demo/spec.yaml -o "$OUT_DIR/multi_fsdp" "${MULTI[@]}" --nproc 2 \
                --set training_config.batch_size=4 --set training_config.distributed.strategy=fsdp \
            && .venv/bin/tuneforge train examples/demo/spec.yaml -o "$OUT_DIR/multi_qlora_ddp" "${MULTI[@]}" \
                --nproc 2 --set training_config.batch_size=4 --set pretrainedmodel_config.use_quantization=true \
            && .venv/bin/python - "$OUT_DIR" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def losses(name):
    rows = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["type"] == "train"][:5]
ref = losses("multi_1gpu")
for name in ("multi_ddp", "multi_fsdp"):
    got = losses(name)
    worst = max(abs(a - b) / abs(b) for a, b in zip(got, ref))
    print(f"{name}: first 5 losses {['%.4f' % x for x in got]} vs 1 GPU {['%.4f' % x for x in ref]}: "
          f"max relative difference {worst:.2e} ({'OK' if worst < 1e-3 else 'DIFFERENT'})")
for name in ("multi_1gpu", "multi_ddp", "multi_fsdp", "multi_qlora_ddp"):
    r = json.loads((out / name / "report.json").read_text())
    print(f"{name}: {r['tokens_per_second']:.0f} tokens/s, peak {r['peak_memory_bytes'] / 2**30:.2f} GiB on rank 0, "
          f"train loss {r['train_loss']:.4f}, eval loss {r['eval_loss']:.4f}")
PY
    } 2>&1 | tail -20 | tee "$OUT_DIR/multi_gpu.txt"
else
    echo "fewer than 2 GPUs: the multi-GPU checks (DDP, FSDP2, QLoRA + DDP) were skipped" | tee "$OUT_DIR/multi_gpu.txt"
fi
