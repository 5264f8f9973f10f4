#!/usr/bin/env bash
# Second GPU session: more seeds of the recipes chosen from gpu_sweep.sh (by valid BLEU).
#  1. a recipe sweep at the update budget the 2-core CPU reaches in 20 minutes (~1300 updates of
#     4096 tokens) and 60 minutes (~3900), selected on valid BLEU, test2016 reported;
#  2. the full-size Transformer-base on Multi30k De->En for a few minutes.
# Usage (device machine): GAPLESS_DATA=DIR OUT=DIR bash benchmarks/gpu_sweep.sh
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
R=/tmp/gruns; mkdir -p $R
M="--model.d_model 256 --model.n_heads 4 --model.ffn_dim 1024 --model.enc_layers 3 --model.dec_layers 3"
T="--train.progress false --train.valid_every 100000 --train.save_every 100000 --train.max_minutes 5"
run() {  # name, direction, overrides...
  local name=$1 dir=$2; shift 2
  local src=${dir%-*} tgt=${dir#*-}
  python3 -m gapless train configs/multi30k_de_en.yaml --run-dir $R/$name $M $T \
    --data.src_lang $src --data.tgt_lang $tgt "$@" > $R/$name.out 2>&1
  python3 -m gapless evaluate $R/$name --checkpoint last --split valid --split test2016 \
    --split test2017 --split mscoco2017 --beam 5 >> $R/$name.out 2>&1
}
# seeds of the chosen CPU recipes (configs/multi30k_{de_en,en_de}.yaml and the _60min variant)
P20="--train.max_updates 2600 --train.max_tokens 2048 --train.lr 1.5e-3 --train.warmup 800 --model.norm_position pre --model.dropout 0.2"
P60="--train.max_updates 3900 --train.lr 2e-3 --train.warmup 500 --model.norm_position pre --model.dropout 0.3"
for seed in 2 3; do
  run r20_de_en_s$seed de-en $P20 --train.seed $seed &
  run r60_de_en_s$seed de-en $P60 --train.seed $seed &
  run r60_en_de_s$seed en-de $P60 --train.seed $seed &
done
run r20_en_de_s1 en-de $P20 --train.seed 1 &
run r20_en_de_s2 en-de $P20 --train.seed 2 &
python3 -m gapless train configs/multi30k_de_en.yaml --run-dir $R/base6_de_en --train.progress false \
  --train.max_minutes 5 --train.max_updates 100000 --train.valid_every 100000 --train.save_every 100000 \
  --train.lr 7e-4 --train.warmup 1000 --model.dropout 0.3 > $R/base6_de_en.out 2>&1 &&
  python3 -m gapless evaluate $R/base6_de_en --checkpoint last --split valid --split test2016 \
  --split test2017 --split mscoco2017 --beam 5 >> $R/base6_de_en.out 2>&1 &
wait
nvidia-smi --query-gpu=name,memory.used --format=csv > $OUT/gpu.txt 2>&1
python3 - "$R" > $OUT/sweep.json <<'PY'
import json, sys, pathlib
R = pathlib.Path(sys.argv[1]); rows = {}
for run in sorted(p for p in R.iterdir() if p.is_dir()):
    row = {}
    for f in (run / "eval").glob("*.json"):
        d = json.loads(f.read_text()); row[d["split"]] = {k: d[k] for k in ("bleu", "chrf", "sentences_per_second", "bleu_signature")}
    log = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()] if (run / "log.jsonl").exists() else []
    end = [r for r in log if r.get("kind") == "end"]
    tr = [r for r in log if r.get("kind") == "train"]
    row["end"] = end[-1] if end else None
    row["last_train"] = tr[-1] if tr else None
    rows[run.name] = row
print(json.dumps(rows, indent=1))
PY
tail -n 3 $R/*.out > $OUT/tails.txt 2>&1
cat $OUT/sweep.json | python3 -c "import json,sys; d=json.load(sys.stdin); [print(k, {s: v.get('bleu') for s, v in r.items() if isinstance(v, dict) and 'bleu' in v}, (r.get('end') or {}).get('update'), (r.get('end') or {}).get('elapsed_s')) for k, r in d.items()]"
