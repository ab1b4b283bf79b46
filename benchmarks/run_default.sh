#!/usr/bin/env bash
# Default MoE benchmark (about 10-15 minutes on 2 CPU cores): the untrained example
# architectures of configs/pt_co_moe.yaml, AOTInductor-compiled, on Pt(111) + CO slabs of about
# 300 to 2,100 atoms at high-fidelity fractions 0 to 1, plus peak memory and training steps.
# Results (bench.json), plots, compiled models and the terminal summary (summary.txt) go to
# OUT_DIR (default benchmarks/out). PYTHON is the interpreter with nequip-moe installed
# (default: python). Extra arguments go to `nequip-moe bench`, e.g.
#   PYTHON=.venv/bin/python benchmarks/run_default.sh --device cuda
#   benchmarks/run_default.sh --moe moe.nequip.pt2 --big big.nequip.pt2 --small small.nequip.pt2
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT_DIR:-benchmarks/out}"
mkdir -p "$OUT_DIR"
"${PYTHON:-python}" -m nequip_moe.scripts.cli bench --config configs/pt_co_moe.yaml \
    --out-dir "$OUT_DIR" "$@" | tee "$OUT_DIR/summary.txt"
