#!/usr/bin/env bash
# The CUDA checks, as one script for a machine with an NVIDIA GPU (run from the repository root):
# GPU tests (bf16 LoRA, QLoRA with bitsandbytes kernels + paged AdamW 8-bit, the lean decode step in bf16), then
# both benchmarks (the decode benchmark on CUDA), FSDP-QLoRA on one GPU, then with 2+ GPUs one job on 2 GPUs (DDP,
# FSDP2, FSDP2-QLoRA, QLoRA + DDP).
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
# Decode benchmark on CUDA (bf16: the engine picks it there), against transformers generate in the same run.
.venv/bin/python bench/infer_bench.py --device cuda 2>&1 | tail -16 | tee "$OUT_DIR/infer_bench.txt"
MULTI=(--overwrite -q --set 'data_config.data_split_config={"train":0.9,"validation":0.1}'
    --set training_config.max_steps=30 --set pretrainedmodel_config.lora_dropout=0.0)
QLORA=(--set pretrainedmodel_config.use_quantization=true)
FSDP=(--set training_config.distributed.strategy=fsdp)
# FSDP-QLoRA (train/distributed.py): the packed NF4 weights stored as bf16 and sharded by FSDP2. bitsandbytes #1945
# reports FSDP2 on CUDA rewriting packed bytes that read as bf16 NaNs, even on one GPU, so this runs with any GPU
# count: a 1-process FSDP run gathers its (whole) shards the same way. tuneforge compares every gathered 4-bit weight
# with the loaded one before training: either the run stops with "FSDP changed the 4-bit weights of ..." (then
# FSDP-QLoRA must be refused on CUDA again), or it follows the plain QLoRA run's first 5 losses.
.venv/bin/tuneforge train examples/demo/spec.yaml -o "$OUT_DIR/qlora_1gpu" "${MULTI[@]}" "${QLORA[@]}" \
    --set training_config.batch_size=8 2>&1 | tail -3
.venv/bin/tuneforge train examples/demo/spec.yaml -o "$OUT_DIR/fsdp_qlora_1gpu" "${MULTI[@]}" "${QLORA[@]}" \
    "${FSDP[@]}" --nproc 1 --set training_config.batch_size=8 2>&1 | tail -3 | tee "$OUT_DIR/fsdp_qlora.txt"
COMPARE='
import json, sys
from pathlib import Path
out, ref_name, names = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
def losses(name):
    rows = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["type"] == "train"][:5]
ref = losses(ref_name)
for name in names:
    if not (out / name / "metrics.jsonl").exists():
        print(f"{name}: did not train (see above)")
        continue
    got = losses(name)
    worst = max(abs(a - b) / abs(b) for a, b in zip(got, ref))
    verdict = "OK" if worst < 1e-3 else "DIFFERENT"
    print(f"{name}: first 5 losses {[round(x, 4) for x in got]} vs {ref_name} {[round(x, 4) for x in ref]}: "
          f"max relative difference {worst:.2e} ({verdict})")
'
.venv/bin/python -c "$COMPARE" "$OUT_DIR" qlora_1gpu fsdp_qlora_1gpu 2>&1 | tee -a "$OUT_DIR/fsdp_qlora.txt"
# One job on 2 GPUs (tuneforge train --nproc 2, NCCL): DDP and FSDP2 against a 1-GPU run with twice the per-process
# batch (same first 5 step losses within 1e-3 relative: bf16, so looser than the CPU tests' fp32), FSDP2-QLoRA
# against the 1-GPU QLoRA run, and QLoRA with DDP. Needs at least 2 GPUs.
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
    .venv/bin/tuneforge train examples/demo/spec.yaml -o "$OUT_DIR/multi_fsdp_qlora" "${MULTI[@]}" "${QLORA[@]}" \
        "${FSDP[@]}" --nproc 2 --set training_config.batch_size=4 2>&1 | tail -3 | tee "$OUT_DIR/multi_fsdp_qlora.txt"
    .venv/bin/python -c "$COMPARE" "$OUT_DIR" qlora_1gpu multi_fsdp_qlora 2>&1 | tee -a "$OUT_DIR/multi_fsdp_qlora.txt"
    {
        .venv/bin/tuneforge train examples/demo/spec.yaml -o "$OUT_DIR/multi_1gpu" "${MULTI[@]}" \
            --set training_config.batch_size=8 \
            && .venv/bin/tuneforge train examples/demo/spec.yaml -o "$OUT_DIR/multi_ddp" "${MULTI[@]}" --nproc 2 \
                --set training_config.batch_size=4 \
            && .venv/bin/tuneforge train examples/demo/spec.yaml -o "$OUT_DIR/multi_fsdp" "${MULTI[@]}" --nproc 2 \
                --set training_config.batch_size=4 "${FSDP[@]}" \
            && .venv/bin/tuneforge train examples/demo/spec.yaml -o "$OUT_DIR/multi_qlora_ddp" "${MULTI[@]}" \
                --nproc 2 --set training_config.batch_size=4 "${QLORA[@]}" \
            && .venv/bin/python -c "$COMPARE" "$OUT_DIR" multi_1gpu multi_ddp multi_fsdp \
            && .venv/bin/python - "$OUT_DIR" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("multi_1gpu", "multi_ddp", "multi_fsdp", "multi_qlora_ddp"):
    r = json.loads((out / name / "report.json").read_text())
    print(f"{name}: {r['tokens_per_second']:.0f} tokens/s, peak {r['peak_memory_bytes'] / 2**30:.2f} GiB on rank 0, "
          f"train loss {r['train_loss']:.4f}, eval loss {r['eval_loss']:.4f}")
PY
    } 2>&1 | tail -20 | tee "$OUT_DIR/multi_gpu.txt"
else
    echo "fewer than 2 GPUs: the multi-GPU checks (DDP, FSDP2, FSDP2-QLoRA, QLoRA + DDP) were skipped" \
        | tee "$OUT_DIR/multi_gpu.txt"
fi
