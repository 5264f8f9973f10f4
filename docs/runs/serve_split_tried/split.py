"""Offline, the served sentences in merged batches of 94 in request order: one search per batch
(as gapless serve runs it) vs the batch split into 2 or 3 length-sorted searches."""
import json, os, sys, time
# run from the repository root: PYTHONPATH=. python docs/runs/serve_split_tried/split.py
import torch
from benchmarks.serve_load import draw_requests, split_lines
from gapless.serve.schema import ServeSettings
from gapless.serve.server import load_model, pad_sources, prepare_runtime, settings_from_env
prepare_runtime(); torch.set_num_threads(2)
run = "runs/m30k_de_en"
src, _, _ = split_lines(run, "test2016")
reqs = draw_requests(src, 2000, 1)
lines = [l for r in reqs for l in r]
engine = load_model(run, "best", "cpu", "bf16", "auto")
pad_sources(engine, 8)
engine.translate(lines[:8], beam=5)
out = {}
def run_pass(per_search, chunk=94):
    t = time.perf_counter(); hyps = []
    for i in range(0, len(lines), chunk):
        hyps += engine.translate(lines[i:i + chunk], beam=5, batch_size=per_search)
    return len(lines) / (time.perf_counter() - t), hyps
ref = None
for rep in range(2):
    for per in (94, 47, 32):
        rate, hyps = run_pass(per)
        same = None if ref is None else sum(a == b for a, b in zip(ref, hyps))
        if per == 94 and ref is None: ref = hyps
        out.setdefault(str(per), []).append(round(rate, 1))
        print(rep, per, round(rate, 1), same, flush=True)
print(json.dumps(out))
