"""Exposure-bias measurements (methods.md 6): how a trained model does on its own output compared
with the gold prefix it was trained on.

Every measurement asks the model through a ``Probe`` (``gapless.analysis.probe``), so tests can
script a "model" whose answers are known exactly.

Positions are 1-based: position t holds reference token y_t, predicted from the source x and
the prefix y_<t. Lengths are counted in target subword tokens, without EOS. The definitions
behind every number are in ``DEFINITIONS`` (written into diagnose.json and the report).
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..data import BOS, EOS, PAD, UNK, pad_sequences
from ..metrics import corpus_scores
from .probe import Probe

log = logging.getLogger(__name__)

BEAMS = (1, 4, 10, 50)
PROTOCOL_BEAMS = (1, 5, 10, 50, 100)  # docs/protocols/powered_comparison.md section 3
BUCKET_EDGES = (10, 15, 20, 30)  # reference length buckets 1-10, 11-15, 16-20, 21-30, 31+
WORD_EDGES = (10, 20, 30)  # reference words: 1-10, 11-20, 21-30, 31+ (the long sentences)
CUTS = (0.25, 0.5, 0.75)  # prefix-swap cut points, as fractions of the reference length
HALLUCINATION_CHRF = 20.0  # sentence chrF below this = "hallucination" (see DEFINITIONS)
SPECIALS = (PAD, UNK, BOS, EOS)
TF_BATCH = 64  # sentences (or probe variants) per teacher-forced pass

DEFINITIONS = {
    "tf_acc": "teacher-forced token accuracy at position t: argmax p(. | x, y_<t) == y_t",
    "free_acc": "free-running accuracy at position t: y_t is matched in a longest common "
    "subsequence alignment of the model's greedy output with the reference (order kept, "
    "so an inserted or dropped word does not turn every later token into an error)",
    "free_pos_acc": "the stricter position-aligned variant: the greedy output token at "
    "position t == y_t (an output shorter than t counts as wrong); one inserted or dropped "
    "token shifts everything after it, so this also counts misalignment",
    "gap": "tf_acc - free_acc (token-weighted over positions, sentences or buckets; gap_pos "
    "likewise with free_pos_acc); zero for "
    "a model whose greedy output is the reference",
    "distractor": "for each sentence, the next sentence (in corpus order, cyclically) of the "
    "evaluated set whose reference has the same number of tokens; per-step log-prob "
    "log p(z_t | x, z_<t) of that distractor z under the sentence's own source x vs "
    "log p(y_t | x, y_<t) of the reference (Wang & Sennrich 2020); sentences without a "
    "same-length partner are left out; ref_wins = share of sentences whose reference "
    "log-prob (EOS included) is above the distractor's",
    "hallucination": f"share of outputs whose sentence chrF (sacreBLEU defaults) against the "
    f"reference is below {HALLUCINATION_CHRF:g}; unrelated_below_threshold gives the same share "
    "for distractor references scored against the reference (what unrelated in-domain "
    "sentences score), as calibration",
    "repetition": "share of outputs in which some whitespace-word trigram occurs more than once "
    "and more often than in the reference (looping output)",
    "length_ratio": "sacreBLEU corpus sys_len / ref_len",
    "buckets": "reference length in target subword tokens (without EOS)",
    "word_buckets": "reference length in whitespace-separated words of the raw reference "
    "(by_word_bucket; the same for every run whatever its subword vocabulary)",
    "prefix_swap": "He et al. 2021: at cut c the prefix has k = floor(c * n) tokens (sentences "
    "with 1 <= k < n whose greedy output has >= k tokens); 'gold' continues greedily from "
    "y_<=k, 'model' is the model's own greedy output after its first k tokens (greedy is "
    "deterministic, so continuing from its own prefix is exactly that); both continuations are "
    "scored against the reference suffix y_>k: corpus BLEU and chrF on detokenised pieces "
    "(short suffixes have few 4-grams: chrF is the steadier of the two) and position-aligned "
    "token accuracy; same_prefix = share where the model's k-token prefix "
    "equals the gold one",
    "overcorrection": "at every position t < n: a = the top-scoring non-gold, non-special "
    "token of p(. | x, y_<t); feed y_<t + a and take the argmax c at t + 1. follow_gold: "
    "c == y_{t+1} (continues as if the substitution had not happened: 'abide with'); "
    "restate_gold: c == y_t (repeats the gold word it was moved away from); other: anything "
    "else (a continuation that takes the substitution into account, or an error); "
    "tf_next_acc: argmax p(. | x, y_<=t) == y_{t+1} on the same positions (the rate with the "
    "gold token in place); 'model_error' keeps only positions where the model's teacher-forced "
    "argmax was not y_t, i.e. a is the model's own first choice (the notes' example)",
}



# ----------------------------------------------------------------------------------------------
# small helpers


def bucket_names(edges: Sequence[int] = BUCKET_EDGES) -> list[str]:
    lows = [1] + [e + 1 for e in edges]
    return [f"{lo}-{hi}" for lo, hi in zip(lows, edges)] + [f"{lows[-1]}+"]


def bucket_of(length: int, edges: Sequence[int] = BUCKET_EDGES) -> int:
    return bisect.bisect_left(list(edges), length)


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def _rate(hits: float, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def same_length_distractors(refs: list[list[int]]) -> list[int | None]:
    """Index of each sentence's distractor: the next sentence (cyclically, in order) whose
    reference has the same length; None when it is the only one of its length."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(refs):
        groups[len(r)].append(i)
    out: list[int | None] = [None] * len(refs)
    for members in groups.values():
        if len(members) > 1:
            for j, i in enumerate(members):
                out[i] = members[(j + 1) % len(members)]
    return out


def _repeats(hyp: str, ref: str) -> bool:
    """Some word trigram occurs more than once, and more often than in the reference."""
    def trigrams(text: str) -> Counter:
        w = text.split()
        return Counter(zip(w, w[1:], w[2:]))

    h, r = trigrams(hyp), trigrams(ref)
    return any(c > 1 and c > r[g] for g, c in h.items())


def _sentence_chrf(hyps: list[str], refs: list[str]) -> list[float]:
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    return [chrf.sentence_score(h, [r]).score for h, r in zip(hyps, refs)]


def _position_table(correct: dict[str, list[list[bool]]]) -> list[dict]:
    """Per-position accuracy of several aligned 0/1 lists (same lengths per sentence)."""
    first = next(iter(correct.values()))
    longest = max((len(c) for c in first), default=0)
    rows = []
    for t in range(longest):
        have = [i for i, c in enumerate(first) if len(c) > t]
        row: dict = {"position": t + 1, "tokens": len(have)}
        for name, lists in correct.items():
            row[name] = _rate(sum(lists[i][t] for i in have), len(have))
        if "tf_acc" in row and "free_acc" in row:
            row["gap"] = round(row["tf_acc"] - row["free_acc"], 4)
        if "tf_acc" in row and "free_pos_acc" in row:
            row["gap_pos"] = round(row["tf_acc"] - row["free_pos_acc"], 4)
        rows.append(row)
    return rows


def _accuracy_summary(tf: list[list[bool]], free: list[list[bool]],
                      free_pos: list[list[bool]]) -> dict:
    tokens = sum(len(c) for c in tf)
    tf_acc = _rate(sum(map(sum, tf)), tokens)
    free_acc = _rate(sum(map(sum, free)), tokens)
    free_pos_acc = _rate(sum(map(sum, free_pos)), tokens)
    gap = round(tf_acc - free_acc, 4) if tokens else None
    gap_pos = round(tf_acc - free_pos_acc, 4) if tokens else None
    return {"sentences": len(tf), "tokens": tokens, "tf_acc": tf_acc, "free_acc": free_acc,
            "gap": gap, "free_pos_acc": free_pos_acc, "gap_pos": gap_pos}


def _aligned(hyp: list[int], ref: list[int]) -> list[bool]:
    """Position-aligned: hyp[t] == ref[t]."""
    return [t < len(hyp) and hyp[t] == y for t, y in enumerate(ref)]


def _lcs_matched(hyp: list[int], ref: list[int]) -> list[bool]:
    """Per reference token: matched in a longest common subsequence of hyp and ref."""
    n, m = len(ref), len(hyp)
    table = [[0] * (m + 1) for _ in range(n + 1)]  # LCS length of ref[i:], hyp[j:]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            table[i][j] = (table[i + 1][j + 1] + 1 if ref[i] == hyp[j]
                           else max(table[i + 1][j], table[i][j + 1]))
    matched, i, j = [False] * n, 0, 0
    while i < n and j < m:
        if ref[i] == hyp[j]:
            matched[i] = True
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return matched


# ----------------------------------------------------------------------------------------------
# the measurements


def teacher_forced(probe: Probe, src: list[list[int]], tgt: list[list[int]]) -> dict:
    """One teacher-forced pass: per sentence, lists over positions 1..n of the argmax, the
    gold log-prob, the top non-gold non-special token and its log-prob; plus the EOS log-prob."""
    out: dict[str, list] = {k: [] for k in ("pred", "gold_lp", "alt", "alt_lp", "eos_lp")}
    for rows in _chunks(len(src), TF_BATCH):
        seqs = [tgt[i] for i in rows]
        lp = probe.log_probs([src[i] for i in rows], seqs)  # [B,T+1,V]
        gold = pad_sequences(seqs, suffix=EOS)  # [B,T+1] y_1..y_n EOS
        gold_lp = lp.gather(2, gold[:, :, None]).squeeze(2)  # [B,T+1]
        masked = lp.clone()
        masked[:, :, list(SPECIALS)] = -math.inf
        masked.scatter_(2, gold[:, :, None], -math.inf)
        alt_lp, alt = masked.max(dim=2)  # [B,T+1]
        pred = lp.argmax(dim=2)
        for b, seq in enumerate(seqs):
            n = len(seq)
            out["pred"].append(pred[b, :n].tolist())
            out["gold_lp"].append(gold_lp[b, :n].tolist())
            out["alt"].append(alt[b, :n].tolist())
            out["alt_lp"].append(alt_lp[b, :n].tolist())
            out["eos_lp"].append(float(gold_lp[b, n]))
    return out


def _bucketed(lengths: list[int], edges: Sequence[int]) -> list[tuple[str, list[int]]]:
    """(bucket name, indices of its sentences) of every non-empty bucket, shortest first."""
    keys = [bucket_of(n, edges) for n in lengths]
    groups = [(name, [i for i, k in enumerate(keys) if k == b])
              for b, name in enumerate(bucket_names(edges))]
    return [(name, idx) for name, idx in groups if idx]


def exposure_gap(refs: list[list[int]], tf_pred: list[list[int]], greedy: list[list[int]],
                 edges: Sequence[int] = BUCKET_EDGES, word_lengths: list[int] | None = None,
                 word_edges: Sequence[int] = WORD_EDGES) -> dict:
    """Teacher-forced vs free-running token accuracy by position, overall, by subword-length
    bucket and (given each reference's ``word_lengths``) by word-length bucket."""
    tf = [[p == y for p, y in zip(pred, ref)] for pred, ref in zip(tf_pred, refs)]
    free = [_lcs_matched(h, ref) for h, ref in zip(greedy, refs)]
    free_pos = [_aligned(h, ref) for h, ref in zip(greedy, refs)]
    result = {**_accuracy_summary(tf, free, free_pos),
              "by_position": _position_table({"tf_acc": tf, "free_acc": free,
                                              "free_pos_acc": free_pos}),
              "by_bucket": []}
    for name, idx in _bucketed([len(r) for r in refs], edges):
        sub = [[lists[i] for i in idx] for lists in (tf, free, free_pos)]
        result["by_bucket"].append({
            "bucket": name, **_accuracy_summary(*sub),
            "by_position": _position_table({"tf_acc": sub[0], "free_acc": sub[1],
                                            "free_pos_acc": sub[2]})})
    if word_lengths is not None:
        result["by_word_bucket"] = [
            {"bucket": name, **_accuracy_summary(*[[lists[i] for i in idx]
                                                    for lists in (tf, free, free_pos)])}
            for name, idx in _bucketed(word_lengths, word_edges)]
    return result


def distractor_logprobs(probe: Probe, src: list[list[int]], refs: list[list[int]],
                        ref_tf: dict) -> dict:
    """Per-step log-prob of the reference vs a same-length distractor under the same source."""
    partner = same_length_distractors(refs)
    idx = [i for i, p in enumerate(partner) if p is not None]
    if not idx:
        return {"sentences": 0, "by_position": []}
    dis = teacher_forced(probe, [src[i] for i in idx], [refs[partner[i]] for i in idx])
    ref_lp = [ref_tf["gold_lp"][i] for i in idx]
    ref_total = [sum(ref_tf["gold_lp"][i]) + ref_tf["eos_lp"][i] for i in idx]
    dis_total = [sum(d) + e for d, e in zip(dis["gold_lp"], dis["eos_lp"])]
    longest = max(len(r) for r in ref_lp)
    by_pos = []
    for t in range(longest):
        have = [j for j, r in enumerate(ref_lp) if len(r) > t]
        r = float(np.mean([ref_lp[j][t] for j in have]))
        d = float(np.mean([dis["gold_lp"][j][t] for j in have]))
        by_pos.append({"position": t + 1, "tokens": len(have), "ref_logprob": round(r, 4),
                       "distractor_logprob": round(d, 4), "margin": round(r - d, 4)})
    tokens = sum(len(r) for r in ref_lp)
    ref_mean = sum(map(sum, ref_lp)) / tokens
    dis_mean = sum(map(sum, dis["gold_lp"])) / tokens
    return {
        "sentences": len(idx),
        "tokens": tokens,
        "ref_logprob": round(ref_mean, 4),  # mean per token, nats
        "distractor_logprob": round(dis_mean, 4),
        "margin": round(ref_mean - dis_mean, 4),
        "ref_wins": _rate(sum(r > d for r, d in zip(ref_total, dis_total)), len(idx)),
        "by_position": by_pos,
    }


def overcorrection(probe: Probe, src: list[list[int]], refs: list[list[int]],
                   ref_tf: dict) -> dict:
    """Substitute the model's best non-gold token a for y_t and see what follows (DEFINITIONS)."""
    variants = []  # (sentence, t) with 0-based t: prefix y[:t] + [alt[t]], compare with y[t+1]
    for i, ref in enumerate(refs):
        variants += [(i, t) for t in range(len(ref) - 1)]
    variants.sort(key=lambda v: v[1])  # similar lengths per batch
    after = []  # argmax after the substituted prefix, and log-prob of y_{t+1} there
    for rows in _chunks(len(variants), TF_BATCH):
        vs = [variants[r] for r in rows]
        seqs = [refs[i][:t] + [ref_tf["alt"][i][t]] for i, t in vs]
        lp = probe.log_probs([src[i] for i, _ in vs], seqs)  # [B,T+1,V]
        for b, (i, t) in enumerate(vs):
            row = lp[b, t + 1]
            after.append((int(row.argmax()), float(row[refs[i][t + 1]])))

    def summary(keep: Callable[[int, int], bool]) -> dict:
        counts = Counter()
        lp_gold, lp_sub = [], []
        for (i, t), (c, lp_next) in zip(variants, after):
            if not keep(i, t):
                continue
            y, y_next = refs[i][t], refs[i][t + 1]
            counts["n"] += 1
            counts["follow_gold"] += c == y_next
            counts["restate_gold"] += c == y and c != y_next
            counts["tf_next"] += ref_tf["pred"][i][t + 1] == y_next
            lp_gold.append(ref_tf["gold_lp"][i][t + 1])
            lp_sub.append(lp_next)
        n = counts["n"]
        follow, restate = _rate(counts["follow_gold"], n), _rate(counts["restate_gold"], n)
        return {
            "positions": n,
            "follow_gold": follow,
            "restate_gold": restate,
            "other": round(1 - follow - restate, 4) if n else None,
            "tf_next_acc": _rate(counts["tf_next"], n),
            # log p(y_{t+1}) with the gold token at t vs with the substitute, nats
            "next_gold_logprob": round(float(np.mean(lp_gold)), 4) if n else None,
            "next_gold_logprob_substituted": round(float(np.mean(lp_sub)), 4) if n else None,
        }

    return {
        "all": summary(lambda i, t: True),
        "model_error": summary(lambda i, t: ref_tf["pred"][i][t] != refs[i][t]),
    }


def prefix_swap(probe: Probe, src: list[list[int]], refs: list[list[int]],
                greedy: list[list[int]], cuts: Sequence[float] = CUTS) -> list[dict]:
    """Continue from the gold prefix vs the model's own greedy prefix (He et al. 2021)."""
    results = []
    for cut in cuts:
        ks = [math.floor(cut * len(r)) for r in refs]
        idx = [i for i, (k, r) in enumerate(zip(ks, refs)) if 1 <= k < len(r) and
               len(greedy[i]) >= k]
        if not idx:
            results.append({"cut": cut, "sentences": 0})
            continue
        gold_full = probe.greedy([src[i] for i in idx], [refs[i][:ks[i]] for i in idx])
        suffix = [refs[i][ks[i]:] for i in idx]
        conts = {"gold": [g[ks[i]:] for g, i in zip(gold_full, idx)],
                 "model": [greedy[i][ks[i]:] for i in idx]}
        ref_text = probe.detokenize(suffix)
        row: dict = {"cut": cut, "sentences": len(idx),
                     "same_prefix": _rate(sum(greedy[i][:ks[i]] == refs[i][:ks[i]] for i in idx),
                                          len(idx))}
        for name, cont in conts.items():
            correct = [_aligned(c, s) for c, s in zip(cont, suffix)]
            tokens = sum(len(s) for s in suffix)
            score = corpus_scores(probe.detokenize(cont), ref_text)
            row[name] = {"bleu": score.bleu, "chrf": score.chrf,
                         "acc": _rate(sum(map(sum, correct)), tokens)}
        results.append(row)
    return results


@dataclass(frozen=True)
class MeasureSettings:
    """What ``measure`` sweeps: beam sizes, length buckets, prefix-swap cuts, and how many
    sentences (the first N; None: all) the beam sweep decodes."""

    beams: Sequence[int] = BEAMS
    edges: Sequence[int] = BUCKET_EDGES
    cuts: Sequence[float] = CUTS
    sweep_sentences: int | None = None
    word_edges: Sequence[int] = WORD_EDGES


def _bleu_by_bucket(text: list[str], ref_text: list[str], lengths: list[int],
                    edges: Sequence[int]) -> list[dict]:
    """Corpus BLEU of the outputs ``text`` of each reference-length bucket (``lengths`` of the
    first ``len(text)`` references)."""
    return [{"bucket": name, "sentences": len(idx),
             "bleu": corpus_scores([text[i] for i in idx], [ref_text[i] for i in idx]).bleu}
            for name, idx in _bucketed(lengths, edges)]


def beam_sweep(probe: Probe, src: list[list[int]], refs: list[list[int]], ref_text: list[str],
               greedy: list[list[int]], settings: MeasureSettings = MeasureSettings()) -> dict:
    """BLEU, length ratio, hallucination and repetition per beam size, and BLEU by reference
    length bucket; beam 1 is the greedy output. ``settings.sweep_sentences``: only the first N
    (all beams)."""
    beams, edges, sentences = settings.beams, settings.edges, settings.sweep_sentences
    n = len(src) if sentences is None else min(sentences, len(src))
    partner = same_length_distractors(refs[:n])
    pairs = [(ref_text[p], ref_text[i]) for i, p in enumerate(partner) if p is not None]
    unrelated = _sentence_chrf([a for a, _ in pairs], [b for _, b in pairs])
    rows = []
    for beam in beams:
        start = time.perf_counter()
        hyps = greedy[:n] if beam == 1 else probe.search(src[:n], beam)
        seconds = time.perf_counter() - start
        text = probe.detokenize(hyps)
        score = corpus_scores(text, ref_text[:n])
        chrf = _sentence_chrf(text, ref_text[:n])
        rows.append({
            "beam": beam, "bleu": score.bleu, "chrf": score.chrf,
            "length_ratio": score.length_ratio,
            "hallucination": _rate(sum(c < HALLUCINATION_CHRF for c in chrf), n),
            "repetition": _rate(sum(_repeats(h, r) for h, r in zip(text, ref_text[:n])), n),
            "empty": _rate(sum(not h for h in hyps), n),
            "seconds": round(seconds, 2),
            "by_bucket": _bleu_by_bucket(text, ref_text, [len(r) for r in refs[:n]], edges),
            "by_word_bucket": _bleu_by_bucket(text, ref_text,
                                              [len(r.split()) for r in ref_text[:n]],
                                              settings.word_edges),
        })
        log.info("beam %d: BLEU %.2f (%.1f s)", beam, score.bleu, seconds)
    return {
        "sentences": n,
        "hallucination_chrf": HALLUCINATION_CHRF,
        "unrelated_chrf": round(float(np.mean(unrelated)), 2) if unrelated else None,
        "unrelated_below_threshold": _rate(sum(c < HALLUCINATION_CHRF for c in unrelated),
                                           len(unrelated)),
        "bleu_signature": score.bleu_signature if beams else None,
        "beams": rows,
    }


def measure(probe: Probe, src: list[list[int]], refs: list[list[int]], ref_text: list[str],
            settings: MeasureSettings = MeasureSettings()) -> dict:
    """All measurements of methods.md 6 on token ids ``src`` / ``refs`` (references also as raw
    text for BLEU). Returns the dict written to diagnose.json (without run metadata)."""
    seconds = {}

    def timed(name, fn, *args, **kwargs):
        start = time.perf_counter()
        value = fn(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - start, 2)
        log.info("%s: %.1f s", name, seconds[name])
        return value

    edges = settings.edges
    ref_tf = timed("teacher_forced", teacher_forced, probe, src, refs)
    greedy = timed("greedy", probe.greedy, src, [[] for _ in src])
    result = {
        "definitions": DEFINITIONS,
        "sentences": len(src),
        "gap": timed("gap", exposure_gap, refs, ref_tf["pred"], greedy, edges,
                     [len(r.split()) for r in ref_text], settings.word_edges),
        "distractor": timed("distractor", distractor_logprobs, probe, src, refs, ref_tf),
        "overcorrection": timed("overcorrection", overcorrection, probe, src, refs, ref_tf),
        "prefix_swap": timed("prefix_swap", prefix_swap, probe, src, refs, greedy,
                             settings.cuts),
        "beam_sweep": timed("beam_sweep", beam_sweep, probe, src, refs, ref_text, greedy,
                            settings),
    }
    result["seconds"] = seconds
    return result
