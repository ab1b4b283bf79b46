#!/usr/bin/env bash
# Paper-scale experts (`--preset paper`: big Allegro l_max 3, 4 layers, 128/64 features; small
# l_max 1, 2 layers, 32/32; both r_max 7 A), AOTInductor-compiled, float64 and float32, at
# f = 0.1, 0.25, 0.5 on the bench's 16 x 16 x 8 Pt(111) + CO slab (2,080 atoms), beside a
# short sweep of the default experts on the same slabs. A preset model whose call would need
# more than PRESET_MEMORY_GIB (default 16) -- all-big needs about 55 GiB in float64 -- is timed
# on the 4 x 4 and 6 x 6 slabs (130 and 296 atoms) and extrapolated with the exponent measured
# between them (marked `extrapolated` in bench.json and the summary). PRESET_SIZE (default 16)
# sets the target slab size. Results go to OUT_DIR (default benchmarks/out_paper); extra
# arguments go to `nequip-moe bench` (e.g. --repeats 1 --warmup 0 for a shorter run).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT_DIR:-benchmarks/out_paper}"
PYTHON="${PYTHON:-python}"
mkdir -p "$OUT_DIR"
"$PYTHON" -m nequip_moe.scripts.cli bench --config configs/pt_co_moe.yaml \
    --slabs 4 6 "${PRESET_SIZE:-16}" --out-dir "$OUT_DIR" --preset paper \
    --preset-memory-gib "${PRESET_MEMORY_GIB:-16}" \
    --fractions 0.1 0.25 0.5 --repeats 3 --no-memory --no-training "$@" \
    | tee "$OUT_DIR/summary.txt"
