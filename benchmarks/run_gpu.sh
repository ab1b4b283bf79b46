#!/usr/bin/env bash
# GPU benchmark, for a machine with CUDA: the untrained models of CONFIG (default
# configs/pt_co_moe.yaml), AOTInductor-compiled for CUDA through nequip-compile, on the bench's
# Pt(111) + CO slabs of about 10k, 20k, 40k and 100k atoms (SIZES: surface atoms along each
# direction, 8 layers) at f = 0.1, 0.25, 0.5. It records the device and model dtype, the
# speed-up vs the ideal bound and its efficiency, atoms/s of every model, cost weights, peak
# GPU memory (torch.cuda.max_memory_allocated) of the MoE vs all-big at the largest size, and
# the largest system that fits on the GPU for the MoE (f = 0.25) vs all-big (FIT_SIZES: slabs
# tried, smallest first, until one runs out of memory). Run it as one script, with a CUDA
# torch installed:
#   PYTHON=.venv/bin/python benchmarks/run_gpu.sh
# Dry run (DRY_RUN=1): the same steps on the CPU at tiny sizes with eager models (no compile),
# as tests/test_bench.py runs it, so that the script is known to work before a GPU is lent:
#   DRY_RUN=1 CONFIG=configs/tiny_moe.yaml benchmarks/run_gpu.sh
# Results go to OUT_DIR (default benchmarks/out_gpu): bench.json, summary.txt; record the
# figures with the machine line in benchmarks/README.md. Extra arguments go to `nequip-moe bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT_DIR:-benchmarks/out_gpu}"
PYTHON="${PYTHON:-python}"
CONFIG="${CONFIG:-configs/pt_co_moe.yaml}"
if [ "${DRY_RUN:-0}" = 1 ]; then
    DEVICE=cpu
    SIZES="${SIZES:-2 3}"
    FIT_SIZES="${FIT_SIZES:-2 3 4}"
    MODE=(--eager --repeats 2)
else
    DEVICE=cuda
    SIZES="${SIZES:-36 50 71 112}"
    FIT_SIZES="${FIT_SIZES:-112 141 178 224 282 355}"
    MODE=(--repeats 5)
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
fi
mkdir -p "$OUT_DIR"
# shellcheck disable=SC2086  # SIZES and FIT_SIZES are lists of numbers
"$PYTHON" -m nequip_moe.scripts.cli bench --config "$CONFIG" --device "$DEVICE" \
    --slabs $SIZES --fit-slabs $FIT_SIZES --out-dir "$OUT_DIR" \
    --fractions 0.1 0.25 0.5 --no-training "${MODE[@]}" "$@" \
    | tee "$OUT_DIR/summary.txt"
