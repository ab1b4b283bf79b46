#!/usr/bin/env bash
# The Fe + H example end to end, with the commands a user runs (README.md, "Your own system"):
#   1. data:     data.py (bcc Fe with H, labelled by SevenNet) -> frames.xyz, test.xyz, bulk.xyz
#   2. label:    nequip-moe assign --dataset (the adsorbate_host preset: H and the Fe near it or
#                at a surface -> big, the rest -> small), for the training pool and the test frames
#   3. train:    nequip-train fe_h_big (all-big) and fe_h_small (all-small), side by side, then
#                fe_h_staged (the MoE: all-big frozen as its big expert, the small expert
#                starting from all-small and co-trained to agree with it on the training frames
#                whose bulk frames `nequip-moe distil` relabelled with all-big, plus the strained
#                bulk cells it adds); nequip-package each
#   4. validate: nequip-moe validate (split crystals, EOS, disagreement, interface, NVE, speed)
#   5. deploy:   nequip-moe deploy (compiled pair_allegro model, type table, LAMMPS input), side
#                by side with validate, kept only if the validation passes
# Usage: examples/fe_h/run.sh   (from any folder; the nequip and nequip-moe tools on PATH)
# Environment: OUT (default examples/fe_h/out), THREADS (torch threads of each command, shared
# by the steps that run side by side, and labelling processes; default: the cores, at most 2),
# LABELLER (sevenn | morse), BIG_EPOCHS,
# SMALL_EPOCHS, MOE_EPOCHS, DISTIL_CELLS, FORCE=1 (rerun steps whose outputs exist), ALLOW_FAIL=1 (deploy even when a
# validation check fails). Every step's time and the machine's load go to OUT/timings.txt.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="$(mkdir -p "${OUT:-$HERE/out}" && cd "${OUT:-$HERE/out}" && pwd)"
PYTHON="${PYTHON:-python}"
THREADS="${THREADS:-$(( $(nproc) < 2 ? $(nproc) : 2 ))}"
LABELLER="${LABELLER:-sevenn}"
BIG_EPOCHS="${BIG_EPOCHS:-80}"
SMALL_EPOCHS="${SMALL_EPOCHS:-30}"
MOE_EPOCHS="${MOE_EPOCHS:-40}"
DISTIL_CELLS="${DISTIL_CELLS:-120}"
FORCE="${FORCE:-0}"
# torch threads: THREADS per command; idle threads sleep instead of spinning (shared cores)
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" OMP_WAIT_POLICY=passive

DATA="$OUT/data"
MODELS="$OUT/models"
TIMINGS="$OUT/timings.txt"
mkdir -p "$DATA" "$MODELS" "$OUT/train" "$OUT/logs"

# step NAME OUTPUT COMMAND...: run COMMAND (output to OUT/logs/NAME.log) unless OUTPUT exists
step() {
    local name="$1" output="$2"
    shift 2
    if [[ "$FORCE" != 1 && -e "$output" ]]; then
        echo "[$name] done before, skipped ($output)"
        return
    fi
    echo "[$name] $*"
    local start=$SECONDS status=0
    "$@" > "$OUT/logs/$name.log" 2>&1 || status=$?
    local load
    load="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
    printf '%-14s %5d s  threads %s  load %s  exit %d\n' "$name" $((SECONDS - start)) "$OMP_NUM_THREADS" "$load" "$status" | tee -a "$TIMINGS"
    if [[ $status != 0 ]]; then
        tail -n 30 "$OUT/logs/$name.log"
        echo "[$name] failed (exit $status); the whole output: $OUT/logs/$name.log"
        return $status
    fi
}

# train NAME CONFIG EPOCHS DATA [OVERRIDES...]: nequip-train a config of this folder on DATA,
# then package it
train() {
    local name="$1" config="$2" epochs="$3" data_file="$4"
    shift 4
    step "train_$name" "$OUT/train/$name/best.ckpt" \
        nequip-train -cp "$HERE" -cn "$config" "data_file=$data_file" "max_epochs=$epochs" \
        "hydra.run.dir=$OUT/train/$name" "$@"
    step "package_$name" "$MODELS/$name.nequip.zip" \
        nequip-package build "$OUT/train/$name/best.ckpt" "$MODELS/$name.nequip.zip"
}

echo "Fe + H example -> $OUT ($THREADS threads, labeller $LABELLER)" | tee -a "$TIMINGS"
start_all=$SECONDS

# 1. data (single-thread labelling processes, as many as THREADS)
step data "$DATA/summary.json" \
    "$PYTHON" "$HERE/data.py" --out "$DATA" --labeller "$LABELLER" --workers "$THREADS"

# 2. expert labels, no model needed
for set in frames test; do
    out="$DATA/labelled.xyz"
    [[ $set == test ]] && out="$DATA/test_labelled.xyz"
    step "assign_$set" "$out" \
        nequip-moe assign "$DATA/$set.xyz" --dataset "$out" --experts big,small \
        --preset adsorbate_host --host Fe --adsorbates H
done

# 3. all-big and all-small, then the staged MoE: all-big its frozen big expert, its small expert
#    starting from all-small; the experts' energy shifts are each element's energy per atom
#    that data.py fitted, e.g. {Fe:-8.31,H:-2.08}
shifts="$("$PYTHON" -c 'import json, sys
shifts = json.load(open(sys.argv[1]))["energy_shifts"]
print("{" + ",".join(f"{e}:{v:.6f}" for e, v in shifts.items()) + "}")' "$DATA/summary.json")"
# all-big and all-small do not depend on each other: trained side by side, each on half the
# threads (a model this small keeps about one core busy whatever its thread count)
half=$(( THREADS > 1 ? THREADS / 2 : 1 ))
OMP_NUM_THREADS=$half MKL_NUM_THREADS=$half \
    train big fe_h_big "$BIG_EPOCHS" "$DATA/labelled.xyz" "energy_shifts=$shifts" &
big_job=$!
OMP_NUM_THREADS=$half MKL_NUM_THREADS=$half \
    train small fe_h_small "$SMALL_EPOCHS" "$DATA/labelled.xyz" "energy_shifts=$shifts" &
small_job=$!
wait $big_job
wait $small_job
# the bulk frames (every atom small) relabelled by all-big, plus DISTIL_CELLS strained bulk
# cells it labels: there the small expert learns the frozen big expert, not the labeller
# (where the two differ the experts could not agree)
step distil "$DATA/distilled.xyz" \
    nequip-moe distil "$DATA/labelled.xyz" --model "$MODELS/big.nequip.zip" --out "$DATA/distilled.xyz" \
    --cells "$DISTIL_CELLS" --bulk "$DATA/bulk.xyz"
train moe fe_h_staged "$MOE_EPOCHS" "$DATA/distilled.xyz" "energy_shifts=$shifts" \
    "big_model=$OUT/train/big/best.ckpt" "small_model=$OUT/train/small/best.ckpt"

# 4-5. validation and, side by side with it, deployment (the LAMMPS pair_style allegro model,
# its type table and input) into a staging folder that becomes OUT/deploy only if the
# validation passes. Validation runs in OUT so that validation.json names its files
# relative to it.
staging="$OUT/deploy.staging"
deploy_job=
if [[ "$FORCE" == 1 || ! -e "$OUT/deploy/moe.lammps.in" ]]; then
    rm -rf "$staging"
    OMP_NUM_THREADS=$half MKL_NUM_THREADS=$half step deploy "$staging/moe.lammps.in" \
        nequip-moe deploy "$MODELS/moe.nequip.zip" --targets pair_allegro --out-dir "$staging" &
    deploy_job=$!
fi
validate_status=0
(cd "$OUT" && OMP_NUM_THREADS=$half MKL_NUM_THREADS=$half step validate validation/validation.json \
    nequip-moe validate models/moe.nequip.zip --test data/test_labelled.xyz --bulk data/bulk.xyz \
    --reference models/big.nequip.zip --out validation --allow-fail)
"$PYTHON" "$HERE/render.py" "$OUT/validation/validation.json" | tee "$OUT/validation_table.md"
grep -q '^\*\*PASS\*\*' "$OUT/validation_table.md" || validate_status=1
[[ -z "$deploy_job" ]] || wait $deploy_job
if [[ $validate_status != 0 && "${ALLOW_FAIL:-0}" != 1 ]]; then
    rm -rf "$staging"
    echo "validation did not pass (see $OUT/validation/validation.md): not deploying (ALLOW_FAIL=1 deploys anyway)"
    exit 1
fi
if [[ -n "$deploy_job" ]]; then
    rm -rf "$OUT/deploy"
    mv "$staging" "$OUT/deploy"
fi

printf '%-14s %5d s  (every step above, this run)\n' total $((SECONDS - start_all)) | tee -a "$TIMINGS"
