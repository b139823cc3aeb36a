#!/usr/bin/env bash
# Everything made from the bundled weights, made again after new weights land in
# models/tiny-shapes (`stride train-base ... --export models/tiny-shapes`), in the order the
# README's tables were made. CPU, two cores: about 4 hours in all for the bundled weights (times
# per stage below, measured for them).
#
#   bash scripts/remake-after-retrain.sh            # every stage
#   bash scripts/remake-after-retrain.sh policy     # from the named stage on
#   MODEL_DIR=runs/candidate bash scripts/remake-after-retrain.sh eval   # a candidate model folder
#     (its grid goes into its folder; bench-adaptive, which measures the bundled model, is skipped;
#     move its weights, schedules and policies up into models/tiny-shapes in one commit)
#
# The distill and train-policy stages are resumable jobs: after a kill or Ctrl-C, run the script
# again from that stage and they continue from their work/ folders. Outputs made from the old
# weights are removed first (`fresh`): the jobs would refuse them, their model hash differs.
# Afterwards: the README's eval, schedule, policy and adaptive-solver tables from the logs in runs/remake/, and
# the prompts and seeds of crates/models/tests/committed_weights.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
S=${STRIDE:-target/release/stride}
M=${MODEL_DIR:-models/tiny-shapes}
LOGS=${LOGS:-runs/remake}
GRID=assets/tiny_shapes_grid.png
[ "$M" = models/tiny-shapes ] || GRID=$M/grid.png
mkdir -p "$LOGS"
cargo build --release -p stride-cli

stages=(fresh eval distill exact policy policy-distilled eval-policy eval-schedules bench-adaptive)
from=${1:-fresh}
[[ " ${stages[*]} " == *" $from "* ]] || { echo "unknown stage $from: one of ${stages[*]}" >&2; exit 2; }
started=
run() {  # run STAGE COMMAND...: runs once the named starting stage is reached, logging its output
  local stage=$1; shift
  [ "$stage" = "$from" ] && started=1
  [ -n "$started" ] || return 0
  echo "== $stage: $*" >&2
  "$@" 2>&1 | tee "$LOGS/$stage.txt"
}

run fresh rm -rf "$M/schedules" "$M/policy" "$M/policy-distilled"
# 500 held-out prompts at 50, 20, 10 and 5 steps, the README's grid and shape confusion (16 min).
run eval "$S" eval --model "$M" --grid "$GRID" --confusion
# OSS schedules for dpmpp_2m and euler at NFE 5, 8, 10, 15, 20 (58 min).
run distill "$S" distill --model "$M" --samples 16
# Exact-DP euler schedules (2 min).
run exact "$S" distill --model "$M" --samples 16 --solver euler --method exact
# Reward table and policy over uniform schedules (about 65 min: 64 blocks of 16 items), then
# over the distilled ones (19 min).
run policy "$S" train-policy --model "$M"
run policy-distilled "$S" train-policy --model "$M" --scheduler distilled --options 5,8,10,15,20 \
  --out "$M/policy-distilled"
# The policies against fixed counts on 200 held-out prompts, stored in policy.json (20 min).
run eval-policy "$S" eval policy --model "$M" --write
# Hand-designed against distilled schedules on 64 held-out prompts (16 min; one thread, as the
# README's timing column was measured).
run eval-schedules env CANDLE_NUM_THREADS=1 "$S" eval schedules --model "$M" --limit 64
# The README's adaptive-solver table and assets/bench_adaptive_*.svg: the mixture rows do not
# depend on the weights, the tiny-shapes rows do (28 min; one thread, as measured before).
[ "$M" = models/tiny-shapes ] || exit 0
run bench-adaptive env CANDLE_NUM_THREADS=1 "$S" bench adaptive --model-samples 32
