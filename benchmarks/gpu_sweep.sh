#!/usr/bin/env bash
# First GPU session (H200): a recipe sweep at the update budget the 2-core CPU reaches in
# 20 minutes (~1300 updates of 4096 tokens, ~2600 of 2048) and 60 minutes (~3900), selected on
# valid BLEU (test sets reported, never used to choose); plus Transformer-base for 4 minutes.
# Usage (device machine, repo root): GAPLESS_DATA=DIR OUT=DIR bash benchmarks/gpu_sweep.sh
source "$(dirname "$0")/gpu_common.sh"
run s20_post_lr1e3_w800      de-en --train.max_updates 1300 --train.lr 1e-3 --train.warmup 800 &
run s20_post_lr1e3_w500_d2   de-en --train.max_updates 1300 --train.lr 1e-3 --train.warmup 500 --model.dropout 0.2 &
run s20_pre_lr2e3_w500       de-en --train.max_updates 1300 --train.lr 2e-3 --train.warmup 500 --model.norm_position pre &
run s20_pre_lr2e3_w500_d2    de-en --train.max_updates 1300 --train.lr 2e-3 --train.warmup 500 --model.norm_position pre --model.dropout 0.2 &
run s20_post_2k_lr1e3_w800   de-en --train.max_updates 2600 --train.max_tokens 2048 --train.lr 1e-3 --train.warmup 800 &
run s20_pre_2k_lr15e3_w800_d2 de-en --train.max_updates 2600 --train.max_tokens 2048 --train.lr 1.5e-3 --train.warmup 800 --model.norm_position pre --model.dropout 0.2 &
run s20_post_lr15e3_w500_d3  de-en --train.max_updates 1300 --train.lr 1.5e-3 --train.warmup 500 --model.dropout 0.3 &
run s60_post_lr1e3_w800_d2   de-en --train.max_updates 3900 --train.lr 1e-3 --train.warmup 800 --model.dropout 0.2 &
run s60_pre_lr2e3_w500_d3    de-en --train.max_updates 3900 --train.lr 2e-3 --train.warmup 500 --model.norm_position pre --model.dropout 0.3 &
run s60en_post_lr1e3_w800_d2 en-de --train.max_updates 3900 --train.lr 1e-3 --train.warmup 800 --model.dropout 0.2 &
run s60en_pre_lr2e3_w500_d3  en-de --train.max_updates 3900 --train.lr 2e-3 --train.warmup 500 --model.norm_position pre --model.dropout 0.3 &
base base_de_en 4 &
wait
collect
