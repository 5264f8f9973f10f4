"""gapless.metrics: the vectorised smoothed sentence BLEU on ids against a plain reference
implementation and sacreBLEU."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch

from gapless.metrics import sentence_bleu


def _plain_bleu(hyp: list[int], ref: list[int], max_order: int = 4) -> float:
    """BLEU+1 (Lin & Och 2004) with dictionaries: the definition the vectorised one must meet."""
    if not hyp:
        return 0.0
    log_prec = 0.0
    for n in range(1, max_order + 1):
        h = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
        r = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
        matches = sum(min(c, r[g]) for g, c in h.items())
        count = sum(h.values())
        if n == 1:
            if matches == 0:
                return 0.0
            log_prec += math.log(matches / count)
        else:
            log_prec += math.log((matches + 1) / (count + 1))
    bp = min(0.0, 1 - len(ref) / len(hyp))
    return math.exp(log_prec / max_order + bp)


def _pad(rows: list[list[int]], width: int | None = None) -> torch.Tensor:
    width = width or max(1, max(len(r) for r in rows))
    return torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long)


def _pairs(seed: int, n: int = 200) -> tuple[list[list[int]], list[list[int]]]:
    """Random pairs over a small alphabet (many repeated n-grams, so clipping matters)."""
    rng = random.Random(seed)
    hyps, refs = [], []
    for _ in range(n):
        ref = [rng.randint(4, 9) for _ in range(rng.randint(1, 12))]
        hyp = [rng.randint(4, 9) for _ in range(rng.randint(0, 12))]
        if rng.random() < 0.3:  # some near-copies
            hyp = ref[: rng.randint(1, len(ref))] + hyp[:2]
        hyps.append(hyp)
        refs.append(ref)
    return hyps, refs


def test_matches_the_plain_definition():
    hyps, refs = _pairs(0)
    got = sentence_bleu(_pad(hyps), _pad(refs))
    expected = torch.tensor([_plain_bleu(h, r) for h, r in zip(hyps, refs)])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert got.dtype == torch.float32 and got.shape == (len(hyps),)


def test_rows_are_independent_of_batch_and_padding():
    hyps, refs = _pairs(1, 30)
    batch = sentence_bleu(_pad(hyps, 20), _pad(refs, 16))
    for i, (h, r) in enumerate(zip(hyps, refs)):
        alone = sentence_bleu(_pad([h]), _pad([r]))
        torch.testing.assert_close(batch[i : i + 1], alone)


def test_known_values():
    ref = [5, 6, 7, 8, 9]
    scores = sentence_bleu(_pad([ref, [10, 11, 12, 13, 14], [], [5, 6, 7, 8]]), _pad([ref] * 4))
    assert scores[0] == pytest.approx(1.0)  # identical
    assert scores[1] == 0.0 and scores[2] == 0.0  # no unigram match / empty
    assert 0.0 < scores[3] < 1.0  # a prefix: brevity penalty
    # smoothed: no 4-gram (or even bigram) match still scores > 0
    assert float(sentence_bleu(_pad([[9, 8, 7, 6, 5]]), _pad([ref]))[0]) > 0.0
    # clipping: repeating a reference word does not earn more unigram matches
    once, many = sentence_bleu(_pad([[5, 10, 11], [5, 5, 5]]), _pad([[5, 6, 7]] * 2))
    assert float(many) == pytest.approx(float(once))


def test_agrees_with_sacrebleu_add_one_smoothing():
    from sacrebleu.metrics import BLEU

    bleu = BLEU(tokenize="none", smooth_method="add-k", smooth_value=1, effective_order=False)
    hyps, refs = _pairs(2, 100)
    keep = [i for i in range(len(hyps)) if len(hyps[i]) >= 4 and len(refs[i]) >= 4]
    got = sentence_bleu(_pad([hyps[i] for i in keep]), _pad([refs[i] for i in keep]))
    for j, i in enumerate(keep):
        text = lambda ids: " ".join(f"w{t}" for t in ids)
        expected = bleu.sentence_score(text(hyps[i]), [text(refs[i])]).score / 100
        assert float(got[j]) == pytest.approx(expected, abs=1e-4), (hyps[i], refs[i])
