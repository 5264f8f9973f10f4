#!/usr/bin/env bash
# Issue 14's GPU work as one call on a lent GPU: three sweeps of docs/protocols/powered_comparison.md
# at once, each under its committed protocol (none of them sets a device; the GPU only makes
# them fit one call):
#   1. the from-scratch comparison (section 4): benchmarks/gpu_from_scratch.sh, nice 0. Its
#      trainings are the only timed ones (train.max_minutes caps them; a capped run is named).
#   2. the two claims at the peers' size (section 5): experiments/claims.py, one process per
#      claim x seed (4; its two arms one after the other), nice 5, from one shared preparation.
#   3. the harder fine-tune protocol (section 2): experiments/finetune.py with
#      configs/finetune/hard_multi30k_de_en.yaml, one process per seed (3), nice 10, from BASE
#      (the base run: config, vocabulary, encoded data and its best checkpoint's weights).
# Sweeps 2 and 3 skip finished runs; whatever of them has not finished DEADLINE seconds after the
# start is stopped, and its report names the runs missing (no verdict is drawn on a partial set).
#
# Usage (device machine, repo root):
#   GAPLESS_DATA=DIR BASE=DIR OUT=DIR bash benchmarks/gpu_issue14.sh
# Options: DEADLINE (s, default 480), RUNS_DIR (default /tmp/g14), SKIP=claims,hard (sweeps not
# to run), DRY_RUN=1 (the from-scratch script's own CPU dry run), CLAIMS_SPEC / HARD_SPEC (other
# spec files: tests/test_gpu_issue14.py runs a tiny claims spec beside the dry run),
# RESUME_FROM=DIR (an earlier call's runs, laid out as RUNS_DIR: scratch/, claims/, hard/; copied
# in first, so that only the runs without their record -- finetune.json, claim.json -- train).
# Output ($OUT, few files, as the device tool returns at most 8): evidence.tar.gz (every run's
# config, log, scores, hypotheses and each sweep's report; no checkpoints, no encoded data),
# summary.txt (the three reports' text and the exit statuses), gpu.txt.
set -u
OUT=${OUT:-/tmp/g14_out}; mkdir -p "$OUT"
W=${RUNS_DIR:-/tmp/g14}; mkdir -p "$W"
DEADLINE=${DEADLINE:-480}
SKIP=${SKIP:-}
PY=${PYTHON:-python3}
BASE=${BASE:-}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
CLAIMS=${CLAIMS_SPEC:-configs/claims/layernorm_tying.yaml}
HARD=${HARD_SPEC:-configs/finetune/hard_multi30k_de_en.yaml}
if [[ ",$SKIP," != *,hard,* && ! -d "$BASE" ]]; then  # before anything starts
  echo "gpu_issue14: BASE='$BASE' is not a folder (the harder protocol's base run; or SKIP=hard)" >&2
  exit 2
fi
if [ -n "${RESUME_FROM:-}" ]; then  # finished runs of an earlier call: skipped, not retrained
  [ -d "$RESUME_FROM" ] || { echo "gpu_issue14: RESUME_FROM='$RESUME_FROM' is not a folder" >&2; exit 2; }
  cp -rn "$RESUME_FROM"/. "$W"/
fi
START=$SECONDS
command -v nvidia-smi > /dev/null && nvidia-smi > "$OUT/gpu.txt" 2>&1

(RUNS_DIR=$W/scratch OUT=$W/scratch_out PYTHON=$PY bash benchmarks/gpu_from_scratch.sh \
  > "$W/scratch.out" 2>&1; echo $? > "$W/scratch.rc") &
SCRATCH=$!

LANES=()
if [[ ",$SKIP," != *,claims,* ]]; then
  # one preparation first: every lane then reuses it (claims.py prepares when it is missing)
  $PY - "$CLAIMS" "$W/claims" > "$W/claims_prepare.out" 2>&1 <<'PY'
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("claims", "experiments/claims.py")
claims = sys.modules["claims"] = importlib.util.module_from_spec(spec)  # dataclasses need it
spec.loader.exec_module(claims)
claims.shared_data(claims.Spec.read(sys.argv[1]), Path(sys.argv[2]))
PY
  for claim in layernorm tying; do for seed in 1 2; do
    # one process per claim x seed: its two arms run one after the other
    nice -n 5 $PY experiments/claims.py "$CLAIMS" --runs "$W/claims" --claims $claim \
      --seeds $seed > "$W/claims_${claim}_s$seed.out" 2>&1 &
    LANES+=($!)
  done; done
fi
if [[ ",$SKIP," != *,hard,* ]]; then
  # seed 1 scores the base first (base.json); the other seeds start once it is there
  nice -n 10 $PY experiments/finetune.py "$HARD" --base "$BASE" --runs "$W/hard" --seeds 1 \
    --keep-checkpoints none > "$W/hard_s1.out" 2>&1 &
  LANES+=($!)
  for seed in 2 3; do
    (while [ ! -f "$W/hard/base.json" ] && ((SECONDS - START < DEADLINE)); do sleep 2; done
     exec nice -n 10 $PY experiments/finetune.py "$HARD" --base "$BASE" --runs "$W/hard" \
       --seeds $seed --keep-checkpoints none > "$W/hard_s$seed.out" 2>&1) &
    LANES+=($!)
  done
fi

wait $SCRATCH
for pid in "${LANES[@]}"; do  # the untimed sweeps get what is left of DEADLINE
  while kill -0 "$pid" 2> /dev/null && ((SECONDS - START < DEADLINE)); do sleep 2; done
  kill -0 "$pid" 2> /dev/null && { pkill -TERM -P "$pid"; kill -TERM "$pid"; }
done
wait

{
  echo "== from scratch (rc $(cat "$W/scratch.rc" 2>/dev/null))"
  cat "$W/scratch_out/from_scratch.md" 2>/dev/null
  tail -n 5 "$W/scratch.out"
  if [ -d "$W/claims" ]; then
    echo "== claims"
    $PY experiments/claims.py "$CLAIMS" --runs "$W/claims" --report-only 2>&1
  fi
  if [ -d "$W/hard" ]; then
    echo "== hard protocol"
    $PY experiments/finetune.py "$HARD" --runs "$W/hard" --report-only 2>&1
  fi
  echo "== lane tails"
  tail -n 3 "$W"/claims_*.out "$W"/hard_*.out 2>/dev/null
  echo "== wall $((SECONDS - START)) s"
} > "$OUT/summary.txt" 2>&1
cp "$W/scratch.out" "$W/scratch_out/" 2>/dev/null
(cd "$W" && find . \( -name checkpoints -o -name data -o -name _prepared -o -name corpus \) -prune \
  -o -type f ! -name 'spm.*' ! -name '*.safetensors' -print0 | tar czf "$OUT/evidence.tar.gz" --null -T -)
cat "$OUT/summary.txt"
exit "$(cat "$W/scratch.rc" 2>/dev/null || echo 1)"
