#!/usr/bin/env bash
# One prepared GPU session, one call: benchmarks/gpu_speed.py (Transformer-base and -big
# training, 8k and 25k tokens, bf16, eager and compiled: tokens/s, MFU, peak memory; beam-5
# decoding at batch 64 and 256). With OUT set (the device tool's output folder) the JSON goes
# to $OUT/gpu_speed.json, rewritten after every row ("complete": true at the end), with
# nvidia-smi and the progress log beside it and a summary on stdout; without OUT, to stdout.
# Rows not started by --budget-s (default 480 s) are skipped, and a 570 s timeout bounds the
# whole call. Usage (device machine, repo root): bash benchmarks/gpu_speed.sh [options]
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ -z "${OUT:-}" ]; then
  exec timeout 570 "$PY" -m benchmarks.gpu_speed "$@"
fi
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
timeout 570 "$PY" -m benchmarks.gpu_speed --out "$OUT/gpu_speed.json" "$@" \
  > /dev/null 2> "$OUT/gpu_speed.log"
status=$?
tail -n 30 "$OUT/gpu_speed.log"
"$PY" - "$OUT/gpu_speed.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
print("complete", doc.get("complete"), "| device", doc["machine"]["cuda"], "| peak TFLOP/s",
      doc["peak_tflops_bf16_dense"], "| fused kernels", doc["fused_kernels"])
for r in doc["train"]:
    print(r["model"], r["max_tokens"], "compiled" if r["compile"] else "eager",
          r.get("tgt_tokens_per_s"), "tok/s, MFU", r.get("mfu"), ", GiB", r.get("peak_memory_gib"),
          r.get("skipped") or r.get("error") or "")
for r in doc["decode"]:
    print("decode batch", r["batch_size"], r.get("sentences_per_s"), "sent/s", r.get("error") or "")
PY
exit $status
