# Shared by gpu_sweep.sh, gpu_seeds.sh and gpu_from_scratch.sh (sourced): many short trainings
# at once on one GPU.
# run NAME DIRECTION OVERRIDES...   peers' model size, trained then scored (valid + 3 tests, beam 5)
# base NAME MINUTES                 Transformer-base (6+6, d512) for a fixed wall-clock
# collect                           one JSON of all runs into $OUT/sweep.json, a summary on stdout
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
R=${RUNS_DIR:-/tmp/gruns}; mkdir -p "$R"  # RUNS_DIR: where the runs go
M="--model.d_model 256 --model.n_heads 4 --model.ffn_dim 1024 --model.enc_layers 3 --model.dec_layers 3"
T="--train.progress false --train.valid_every 100000 --train.save_every 100000 --train.max_minutes 5"
EVAL="--checkpoint last --split valid --split test2016 --split test2017 --split mscoco2017 --beam 5"

run() {
  local name=$1 dir=$2; shift 2
  local src=${dir%-*} tgt=${dir#*-}
  python3 -m gapless train multi30k_de_en --run-dir $R/$name $M $T \
    --data.src_lang $src --data.tgt_lang $tgt "$@" > $R/$name.out 2>&1
  python3 -m gapless evaluate $R/$name $EVAL >> $R/$name.out 2>&1
}

base() {
  local name=$1 minutes=$2
  python3 -m gapless train multi30k_de_en --run-dir $R/$name --train.progress false \
    --train.max_minutes $minutes --train.max_updates 100000 --train.valid_every 100000 \
    --train.save_every 100000 --train.lr 7e-4 --train.warmup 1000 --model.dropout 0.3 \
    > $R/$name.out 2>&1
  python3 -m gapless evaluate $R/$name $EVAL >> $R/$name.out 2>&1
}

collect() {
  nvidia-smi --query-gpu=name,memory.used --format=csv > $OUT/gpu.txt 2>&1
  python3 - "$R" > $OUT/sweep.json <<'PY'
import json, sys, pathlib
R = pathlib.Path(sys.argv[1]); rows = {}
for run in sorted(p for p in R.iterdir() if p.is_dir()):
    row = {}
    for f in (run / "eval").glob("*.json"):
        d = json.loads(f.read_text())
        row[d["split"]] = {k: d[k] for k in ("bleu", "chrf", "sentences_per_second", "bleu_signature")}
    log_file = run / "log.jsonl"
    log = [json.loads(x) for x in log_file.read_text().splitlines()] if log_file.exists() else []
    end = [r for r in log if r.get("kind") == "end"]
    tr = [r for r in log if r.get("kind") == "train"]
    row["end"] = end[-1] if end else None
    row["last_train"] = tr[-1] if tr else None
    rows[run.name] = row
print(json.dumps(rows, indent=1))
PY
  tail -n 3 $R/*.out > $OUT/tails.txt 2>&1
  python3 -c "
import json; d = json.load(open('$OUT/sweep.json'))
for k, r in d.items():
    bleu = {s: v['bleu'] for s, v in r.items() if isinstance(v, dict) and 'bleu' in v}
    print(k, bleu, (r.get('end') or {}).get('update'), (r.get('end') or {}).get('elapsed_s'))"
}
