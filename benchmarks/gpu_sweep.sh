#!/usr/bin/env bash
# One prepared GPU session (H200): runs many short trainings at once on the one GPU.
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
# 20-minute-equivalent budget
run s20_post_lr1e3_w800      de-en --train.max_updates 1300 --train.lr 1e-3 --train.warmup 800 &
run s20_post_lr1e3_w500_d2   de-en --train.max_updates 1300 --train.lr 1e-3 --train.warmup 500 --model.dropout 0.2 &
run s20_pre_lr2e3_w500       de-en --train.max_updates 1300 --train.lr 2e-3 --train.warmup 500 --model.norm_position pre &
run s20_pre_lr2e3_w500_d2    de-en --train.max_updates 1300 --train.lr 2e-3 --train.warmup 500 --model.norm_position pre --model.dropout 0.2 &
run s20_post_2k_lr1e3_w800   de-en --train.max_updates 2600 --train.max_tokens 2048 --train.lr 1e-3 --train.warmup 800 &
run s20_pre_2k_lr15e3_w800_d2 de-en --train.max_updates 2600 --train.max_tokens 2048 --train.lr 1.5e-3 --train.warmup 800 --model.norm_position pre --model.dropout 0.2 &
run s20_post_lr15e3_w500_d3  de-en --train.max_updates 1300 --train.lr 1.5e-3 --train.warmup 500 --model.dropout 0.3 &
# 60-minute-equivalent budget, both directions
run s60_post_lr1e3_w800_d2   de-en --train.max_updates 3900 --train.lr 1e-3 --train.warmup 800 --model.dropout 0.2 &
run s60_pre_lr2e3_w500_d3    de-en --train.max_updates 3900 --train.lr 2e-3 --train.warmup 500 --model.norm_position pre --model.dropout 0.3 &
run s60en_post_lr1e3_w800_d2 en-de --train.max_updates 3900 --train.lr 1e-3 --train.warmup 800 --model.dropout 0.2 &
run s60en_pre_lr2e3_w500_d3  en-de --train.max_updates 3900 --train.lr 2e-3 --train.warmup 500 --model.norm_position pre --model.dropout 0.3 &
# full size (Vaswani base) for 5 minutes
python3 -m gapless train configs/multi30k_de_en.yaml --run-dir $R/base_de_en --train.progress false \
  --train.max_minutes 4 --train.max_updates 100000 --train.valid_every 100000 --train.save_every 100000 \
  --train.lr 7e-4 --train.warmup 1000 --model.dropout 0.3 > $R/base_de_en.out 2>&1 &&
  python3 -m gapless evaluate $R/base_de_en --checkpoint last --split valid --split test2016 \
  --split test2017 --split mscoco2017 --beam 5 >> $R/base_de_en.out 2>&1 &
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
