#!/usr/bin/env bash
# The bundled model's training and pipeline on one lent NVIDIA GPU, inside one device call.
# Built here with ../shared/gpu/build-cuda.sh -p stride-cli --features cuda (the binary travels
# gzipped in .gpu/). Everything it makes lands in $OUT: the final training checkpoint (split into
# parts under the 16 MiB file limit), results.tar (the model folder's schedules, policies, grid,
# without the weights, which `train-base --resume --export` rebuilds from the checkpoint) and log.txt.
#
#   TRAIN_UNTIL=seconds after start when training stops (default 300); BATCH, LR as below;
#   RESUME_FROM=folder with checkpoint.json and checkpoint.safetensors.gz continues that run;
#   CONFIG=a TrainConfig JSON for a new run, INIT=a model folder it starts from (a fine-tune),
#   BASELINE=a model folder evaluated last, as the stages' yardstick (e.g. INIT).
#
# The two calls of 2026-11-27 that finished the first weights (A; README, "The first weights"),
# carrying .gpu and runs/gpuup (the CPU run's checkpoint at step 13604, gzipped to fit the 64 MiB
# upload):
#   TRAIN_UNTIL=300 DEADLINE=555 bash scripts/gpu-pipeline.sh                        # fresh, batch 256
#   RESUME_FROM=runs/gpuup TRAIN_UNTIL=195 DEADLINE=250 bash scripts/gpu-pipeline.sh # the shipped run
# (The first call's probe timed the kernels' start-up too, so it planned 1200 steps and
# finished at 199 s; the probe now times its second half only.)
#
# The two calls of 2026-11-28 on an H200 that made the bundled weights (README, "How the bundled
# weights were made"), carrying .gpu and runs/gpu (ft.json = models/tiny-shapes/train-finetune.json;
# init/ = the EMA export of the CPU run at step 13384, with heldout_prompts.txt):
#   CONFIG=runs/gpu/ft.json INIT=runs/gpu/init BASELINE=runs/gpu/init BATCH=256 LR=5e-4 PROBE=100 \
#     TRAIN_UNTIL=370 DEADLINE=565 bash scripts/gpu-pipeline.sh     # 4.98 steps/s: steps 0-1600
# The second call landed on the still-warm machine, whose /tmp/run held the first call's run: its
# probe failed, and the training resumed that run with --steps 26000 (steps 1600-2928, learning
# rate near the peak again). It measured better than step 1600, and is the bundled weights. A run
# now starts from empty folders; its cosine ends at the step the probe plans, so the call anneals.
# The second call did not, and two CPU cycles from its weights (models/tiny-shapes/next, README
# parts 3 and 4) pass 0.486 of held-out prompts against 0.236. More of the same from there,
# carrying .gpu only:
#   CONFIG=models/tiny-shapes/train-finetune.json INIT=models/tiny-shapes/next BASELINE=models/tiny-shapes/next \
#     BATCH=256 LR=5e-4 PROBE=100 TRAIN_UNTIL=370 DEADLINE=565 bash scripts/gpu-pipeline.sh
# A step there is bound by kernel launches and the host-side AdamW, not by the batch, and a
# scene costs 2.5 us to draw and render on one core (measured here 2026-12-04): BATCH=1024
# would see 4 times the scenes in the same steps (untried; the probe's steps/s will say).
#
# ../shared/gpu/build-cuda.sh as of 2026-11-28 also needs two wheels it does not install
# (candle-kernels includes <nv/target>; stride links libnvrtc), unzipped into its CU_HOME:
#   nvidia-cuda-cccl==13.0.85 and nvidia-cuda-nvrtc==13.0.88 (then ln -s libnvrtc.so.13 libnvrtc.so).
set -u
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
log() { echo "[$(elapsed)s] $*" | tee -a "$OUT/log.txt"; }
TRAIN_UNTIL=${TRAIN_UNTIL:-300}
BATCH=${BATCH:-256}
LR=${LR:-1e-3}
PROBE=${PROBE:-200}   # inside the linear warm-up, whose learning rate does not depend on the total
R=${RUN:-/tmp/run}
M=${MODEL:-/tmp/model}
# A call that finds the machine still warm finds the last call's /tmp too.
rm -rf "$R" "$M"

DEV=${DEV:-cuda}
S=${STRIDE:-.gpu/stride}
if [ "$DEV" = cuda ]; then
  # PyTorch's CUDA 13 libraries (the machine has no CUDA toolkit of its own).
  libs=$(find /opt /usr/local /usr/lib \( -name libcublas.so.13 -o -name libcurand.so.10 -o -name libcudart.so.13 -o -name libnvrtc.so.13 \) \
    2>/dev/null | xargs -r -n1 dirname | sort -u | paste -sd:)
  export LD_LIBRARY_PATH=$libs
  gunzip -kf .gpu/stride.gz && chmod +x .gpu/stride
  ldd .gpu/stride | grep -i 'cuda\|cublas\|curand\|not found' >> "$OUT/log.txt"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> "$OUT/log.txt" 2>&1

save_results() {
  tar -C "$M" --exclude=model.safetensors -cf "$OUT/results.tar" . 2>/dev/null
}
checkpoint_step() { grep -o '"step": *[0-9]*' "$R/checkpoint.json" | grep -o '[0-9]*$'; }

if [ -n "${RESUME_FROM:-}" ]; then
  # Continue a run started elsewhere (checkpoint.json and a gzipped checkpoint.safetensors).
  mkdir -p $R && cp "$RESUME_FROM/checkpoint.json" $R/
  gunzip -c "$RESUME_FROM/checkpoint.safetensors.gz" > $R/checkpoint.safetensors
  log "resuming at step $(checkpoint_step)"
  timeout $((TRAIN_UNTIL - $(elapsed))) $S train-base --out $R --resume --device $DEV \
    --checkpoint-minutes 0.5 2>&1 | tr '\r' '\n' | grep -a 'step\|error\|Error' >> "$OUT/log.txt"
else
  # Time the probe's second half only: the first steps load and compile the kernels.
  log "probe: $PROBE steps at batch $BATCH"
  $S train-base --out $R --device $DEV --batch-size "$BATCH" --lr "$LR" --steps 20 \
    ${CONFIG:+--config "$CONFIG"} ${INIT:+--init "$INIT"} --checkpoint-minutes 100 > $R.log 2>&1 \
    || { tail -3 $R.log >> "$OUT/log.txt"; log "the probe run failed"; exit 1; }
  tail -2 $R.log >> "$OUT/log.txt"
  p0=$(date +%s.%N)
  $S train-base --out $R --resume --steps $PROBE --device $DEV --checkpoint-minutes 100 --quiet
  p1=$(date +%s.%N)
  rate=$(awk -v a="$p0" -v b="$p1" -v n=$((PROBE - 20)) 'BEGIN { printf "%.2f", n / (b - a) }')
  total=$(awk -v r="$rate" -v left=$((TRAIN_UNTIL - $(elapsed))) -v n=$PROBE \
    'BEGIN { t = n + int(r * left * 0.97 / 100) * 100; print (t > n ? t : n) }')
  log "probe: $rate steps/s; training to step $total"

  timeout $((TRAIN_UNTIL + 60 - $(elapsed))) $S train-base --out $R --resume --steps "$total" \
    --device $DEV --checkpoint-minutes 1 2>&1 | tr '\r' '\n' | grep -a 'step\|error\|Error' >> "$OUT/log.txt"
fi
step=$(checkpoint_step)
log "training stopped at step $step"
cp $R/checkpoint.json "$OUT/"
split -b 12M $R/checkpoint.safetensors "$OUT/checkpoint.safetensors.part-"

$S train-base --out $R --resume --steps "$step" --export $M --quiet 2>&1 | tail -2 >> "$OUT/log.txt"
cp models/tiny-shapes/heldout_prompts.txt $M/
save_results

stage() {  # stage SECONDS NAME COMMAND...
  local limit=$1 name=$2; shift 2
  if [ "$limit" -lt 5 ]; then log "$name: no time left"; return; fi
  log "$name"
  timeout -k 20 "$limit" "$@" > "$M/$name.txt" 2>&1
  log "$name: exit $?"
  tail -c 3000 "$M/$name.txt" | tr '\r' '\n' | tail -25 >> "$OUT/log.txt"
  save_results
}
left() { echo $(( ${DEADLINE:-560} - $(elapsed) )); }
# The remake script's stages (scripts/remake-after-retrain.sh), most wanted first, with its
# --batch defaults, so that a table made here is the CPU's up to float rounding. (The jobs pin
# the device and the batch in work/job.json: neither machine continues the other's table.)
PB=${POLICY_BATCH:-16} DB=${DISTILL_BATCH:-8}
stage "$(( $(left) / 6 ))" eval $S eval --model $M --batch-size 250 --grid $M/grid.png --confusion --device $DEV
stage "$(( $(left) / 6 ))" probe-set $S eval --model $M --prompts docs/probe_single_object.txt --steps 30 \
  --batch-size 72 --confusion --device $DEV
stage "$(( $(left) / 4 ))" policy $S train-policy --model $M --batch $PB --device $DEV --quiet
stage "$(( $(left) / 3 ))" distill $S distill --model $M --samples 16 --batch $DB --device $DEV --quiet
stage "$(( $(left) / 4 ))" policy-distilled $S train-policy --model $M --scheduler distilled \
  --options 5,8,10,15,20 --out $M/policy-distilled --batch $PB --device $DEV --quiet
stage "$(( $(left) / 3 ))" exact $S distill --model $M --samples 16 --batch $DB --solver euler \
  --method exact --device $DEV --quiet
stage "$(( $(left) / 2 ))" eval-policy $S eval policy --model $M --batch-size 200 \
  --plot $M/eval_policy.svg --device $DEV --write
if [ -n "${BASELINE:-}" ]; then
  stage "$(( $(left) - 5 ))" baseline $S eval --model "$BASELINE" --batch-size 250 --steps 50 --device $DEV
fi
log done
