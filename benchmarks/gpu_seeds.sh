#!/usr/bin/env bash
# Second GPU session (H200): more seeds of the recipes chosen from gpu_sweep.sh (by valid BLEU),
# both directions, and Transformer-base for 5 minutes.
# Usage (device machine, repo root): GAPLESS_DATA=DIR OUT=DIR bash benchmarks/gpu_seeds.sh
source "$(dirname "$0")/gpu_common.sh"
# the presets multi30k_{de_en,en_de} and their _60min variants (gapless/presets/)
P20="--train.max_updates 2600 --train.max_tokens 2048 --train.lr 1.5e-3 --train.warmup 800 --model.norm_position pre --model.dropout 0.2"
P60="--train.max_updates 3900 --train.lr 2e-3 --train.warmup 500 --model.norm_position pre --model.dropout 0.3"
for seed in 2 3; do
  run r20_de_en_s$seed de-en $P20 --train.seed $seed &
  run r60_de_en_s$seed de-en $P60 --train.seed $seed &
  run r60_en_de_s$seed en-de $P60 --train.seed $seed &
done
run r20_en_de_s1 en-de $P20 --train.seed 1 &
run r20_en_de_s2 en-de $P20 --train.seed 2 &
base base6_de_en 5 &
wait
collect
