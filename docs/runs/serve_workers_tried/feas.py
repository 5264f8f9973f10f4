"""Feasibility: 1 thread x 2 torch threads vs 2 Python threads x 1 torch thread, one process."""
import json, os, queue, resource, sys, threading, time
# run from the repository root with PYTHONPATH=.
import torch
from benchmarks.common import split_lines
from gapless.serve.server import load_model, pad_sources, prepare_runtime

prepare_runtime()
torch.set_num_threads(2)
RUN = "runs/m30k_de_en"
engine = load_model(RUN, "best", "cpu", "bf16", "gapless")
pad_sources(engine, 8)
src, _, _ = split_lines(RUN, "test2016")
lines = src[:600]
CALL = 94
calls = [lines[i:i + CALL] for i in range(0, len(lines), CALL)]
engine.translate(lines[:8], beam=5)

def one_by_two():
    torch.set_num_threads(2)
    out = []
    t0, c0 = time.perf_counter(), time.process_time()
    for c in calls:
        out += engine.translate(c, beam=5, batch_size=CALL)
    return time.perf_counter() - t0, time.process_time() - c0, out, [torch.get_num_threads()]

def two_by_one():
    q = queue.SimpleQueue()
    for i, c in enumerate(calls):
        q.put((i, c))
    res = {}
    info = []
    ready = threading.Barrier(3)
    def worker():
        torch.set_num_threads(1)
        engine.translate(lines[:4], beam=5)  # this thread's warm-up
        ready.wait()
        tc = time.thread_time()
        while True:
            try:
                i, c = q.get_nowait()
            except queue.Empty:
                break
            res[i] = engine.translate(c, beam=5, batch_size=CALL)
        info.append((torch.get_num_threads(), round(time.thread_time() - tc, 2)))
    ts = [threading.Thread(target=worker) for _ in range(2)]
    for t in ts: t.start()
    ready.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    for t in ts: t.join()
    out = [x for i in sorted(res) for x in res[i]]
    return time.perf_counter() - t0, time.process_time() - c0, out, info

ref = None
rows = []
for mode in ["1x2", "2x1", "1x2", "2x1", "1x2", "2x1"]:
    wall, cpu, out, info = (one_by_two if mode == "1x2" else two_by_one)()
    same = None if ref is None else sum(a == b for a, b in zip(ref, out))
    if mode == "1x2" and ref is None:
        ref = out
    row = {"mode": mode, "seconds": round(wall, 2), "sent_per_s": round(len(out) / wall, 1),
           "process_cpu_s": round(cpu, 2), "cpu_per_wall": round(cpu / wall, 2),
           "threads_info": info, "identical_to_first_1x2": same}
    rows.append(row)
    print(json.dumps(row), flush=True)
print("max RSS MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
