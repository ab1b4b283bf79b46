#!/usr/bin/env bash
# GPU check, prepared for a machine with CUDA (none was lent when it was written): the untrained
# example experts and MoE of configs/pt_co_moe.yaml, AOTInductor-compiled for CUDA through
# nequip-compile, on the example's Pt(111) + CO slabs of about 10k, 20k, 40k and 100k atoms
# (SIZES: surface atoms along each direction, 8 layers), at f = 0.1, 0.25, 0.5: speed-up vs the
# ideal bound, efficiency, cost weights, and peak GPU memory (torch.cuda.max_memory_allocated)
# of the MoE vs all-big at the largest size. Run it as one script, with a CUDA torch installed:
#   PYTHON=.venv/bin/python benchmarks/run_gpu.sh
# Results go to OUT_DIR (default benchmarks/out_gpu): bench.json, summary.txt; record the
# figures with the machine line in benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT_DIR:-benchmarks/out_gpu}"
PYTHON="${PYTHON:-python}"
mkdir -p "$OUT_DIR"
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
"$PYTHON" examples/pt_co/structures.py bench-slabs "$OUT_DIR/slabs.xyz" --sizes ${SIZES:-36 50 71 112}
"$PYTHON" -m nequip_moe.scripts.cli bench --config configs/pt_co_moe.yaml \
    --structure "$OUT_DIR/slabs.xyz" --out-dir "$OUT_DIR" --device cuda \
    --fractions 0.1 0.25 0.5 --repeats 5 --no-training "$@" \
    | tee "$OUT_DIR/summary.txt"
