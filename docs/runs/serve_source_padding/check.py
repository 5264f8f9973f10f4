"""Source-length padding check: identity/BLEU over test2016 in 94-sentence calls (request
order), or oneDNN kernel creations over 12 calls of 94 sentences in request order."""
import functools, json, sys, time, os
import torch
from benchmarks.common import split_lines
from benchmarks.serve_load import draw_requests
from gapless.decode import ModelStepper
from gapless.serve.server import load_model, prepare_runtime

mode, multiple = sys.argv[1], int(sys.argv[2])
RUN = "runs/m30k_de_en"
prepare_runtime()
torch.set_num_threads(2)
engine = load_model(RUN, "best", "cpu", "bf16", "gapless")
src, ref, _ = split_lines(RUN, "test2016")
stream = [line for req in draw_requests(src, 2000, 1) for line in req]

def use(m):
    engine.stepper = functools.partial(ModelStepper, source_multiple=m) if m else ModelStepper

def calls(lines, n=94):
    out = []
    for i in range(0, len(lines), n):
        out += engine.translate(lines[i:i + n], beam=5, batch_size=n)
    return out

if mode == "kernels":
    use(multiple)
    print("BEGIN", flush=True)
    calls(stream[:12 * 94])
    print("END", flush=True)
else:
    seen, order = set(), []
    for line in stream + src:
        if line not in seen:
            seen.add(line); order.append(line)
    refs = dict(zip(src, ref))
    res = {}
    for m in (0, multiple):
        use(m)
        t = time.perf_counter()
        res[m] = calls(order)
        print(m, "seconds", round(time.perf_counter() - t, 1), flush=True)
    from sacrebleu.metrics import BLEU
    same = sum(a == b for a, b in zip(res[0], res[multiple]))
    bleu = {m: round(BLEU().corpus_score(res[m], [[refs[l] for l in order]]).score, 2) for m in res}
    diff = [(l, res[0][i], res[multiple][i]) for i, l in enumerate(order) if res[0][i] != res[multiple][i]]
    print(json.dumps({"sentences": len(order), "identical": same, "bleu": bleu, "diff": diff[:10]}, ensure_ascii=False, indent=1))
