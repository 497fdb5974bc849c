#!/usr/bin/env bash
# The CUDA checks, as one script for a machine with an NVIDIA GPU (run from the repository root):
# GPU tests (bf16 LoRA, QLoRA with bitsandbytes kernels + paged AdamW 8-bit, the lean decode step in bf16), then
# both benchmarks (the decode benchmark on CUDA).
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
