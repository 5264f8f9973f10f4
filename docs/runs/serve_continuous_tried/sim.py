"""Model-free count of the work of the two serving modes (no timing): per sentence, decoder
row-steps, self-attention cache columns copied/attended (rows x cache width, summed over
steps), and cross-cache copies (sentences x source columns, per prune and per join).
Lengths: test2016 offline beam-5 hypotheses (pieces + EOS), sources in pieces."""
import random, statistics, sys
# run from the repository root
from gapless.data import Vocab
v = Vocab("runs/m30k_de_en/spm.model")
hyp = [l.rstrip("\n") for l in open("runs/m30k_de_en/eval/test2016.hyp")]
src = [l.rstrip("\n") for l in open("../shared/data/multi30k/test2016.de")]
T = [len(x) + 1 for x in v.encode(hyp)]  # steps each sentence runs (approx.: best hyp + EOS)
S = [len(x) + 1 for x in v.encode(src)]
K, INFLIGHT = 5, 96
rng = random.Random(1)
def draw():
    i = rng.randrange(len(T)); return T[i], S[i]
def old(batches=200):
    rows = copy = cross = 0; n_sent = 0
    for _ in range(batches):
        b = [draw() for _ in range(INFLIGHT)]
        Smax = max(s for _, s in b)
        for t in range(max(x for x, _ in b)):
            alive = sum(x > t for x, _ in b)
            rows += alive * K; copy += alive * K * (t + 1)
            if any(x == t + 1 for x, _ in b) and alive:  # a prune copies the cross cache
                cross += sum(x > t + 1 for x, _ in b) * Smax
        n_sent += len(b)
    return rows / n_sent, copy / n_sent, cross / n_sent
def cont(steps=20000):
    act = [(draw(), 0) for _ in range(INFLIGHT)]  # ((steps, src), age)
    rows = copy = cross = 0; n_sent = 0
    for _ in range(steps):
        W = max(a for _, a in act) + 1
        rows += len(act) * K; copy += len(act) * K * W
        act = [(d, a + 1) for d, a in act]
        done = [x for x in act if x[1] >= x[0][0]]
        act = [x for x in act if x[1] < x[0][0]]
        n_sent += len(done)
        Smax = max(s for (_, s), _ in act) if act else 0
        if done:
            cross += len(act) * Smax  # prune
            act += [(draw(), 0) for _ in done]  # the callers' next requests join
            cross += len(act) * max(s for (_, s), _ in act)  # join: the whole cross cache
    return rows / n_sent, copy / n_sent, cross / n_sent
o, c = old(), cont()
print("mean steps %.1f, max %d; mean source %.1f" % (statistics.mean(T), max(T), statistics.mean(S)))
for name, a, b in zip(("row-steps", "self-cache cols", "cross-cache copies"), o, c):
    print(f"{name:20s} per sentence: batch {a:8.0f}  continuous {b:8.0f}  ratio {b / a:.2f}")
