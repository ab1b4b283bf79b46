#!/usr/bin/env bash
# Default MoE benchmark (about 10-15 minutes on 2 CPU cores): the untrained example
# architectures of configs/pt_co_moe.yaml, AOTInductor-compiled with nequip-compile, on the
# bench's Pt(111) + CO slabs (`--slabs`: nequip_moe.benchmarking.structures, 8 layers, about
# 300 to 2,100 atoms) at high-fidelity fractions 0 to 1, plus cost weights, peak memory and
# training steps.
# Results (bench.json), plots, checkpoints, compiled models and the terminal summary
# (summary.txt) go to OUT_DIR (default benchmarks/out). PYTHON is the interpreter with
# nequip-moe installed (default: python). Extra arguments go to `nequip-moe bench`, e.g.
#   PYTHON=.venv/bin/python benchmarks/run_default.sh --device cuda
#   benchmarks/run_default.sh --moe moe.nequip.pt2 --big big.nequip.pt2 --small small.nequip.pt2
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT_DIR:-benchmarks/out}"
PYTHON="${PYTHON:-python}"
mkdir -p "$OUT_DIR"
"$PYTHON" -m nequip_moe.scripts.cli bench --config configs/pt_co_moe.yaml \
    --slabs 6 8 11 16 --out-dir "$OUT_DIR" "$@" | tee "$OUT_DIR/summary.txt"
