#!/usr/bin/env bash
# Paper-scale experts (`--preset paper`: big Allegro l_max 3, 4 layers, 128/64 features; small
# l_max 1, 2 layers, 32/32; both r_max 7 A), AOTInductor-compiled, float64 and float32, at
# f = 0.1, 0.25, 0.5 on the example's 16 x 16 x 8 Pt(111) + CO slab (2,080 atoms), beside a
# short default sweep of the example experts on the same slab. PRESET_SIZE (default 16) sets
# the slab size (surface atoms along each direction) when a 2,080-atom call is too slow.
# Results go to OUT_DIR (default benchmarks/out_paper); extra arguments go to `nequip-moe bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT_DIR:-benchmarks/out_paper}"
PYTHON="${PYTHON:-python}"
mkdir -p "$OUT_DIR"
"$PYTHON" -m nequip_moe.scripts.cli bench --config configs/pt_co_moe.yaml \
    --slabs "${PRESET_SIZE:-16}" --out-dir "$OUT_DIR" --preset paper \
    --fractions 0.1 0.25 0.5 --repeats 3 --no-memory --no-training "$@" \
    | tee "$OUT_DIR/summary.txt"
