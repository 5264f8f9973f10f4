"""Paired statistics of seed-paired comparisons (docs/protocols/powered_comparison.md): the
mean paired difference with its Student-t interval and two-sided p-value, Holm's correction,
the protocol's decision rule, and sacreBLEU's own paired bootstrap resampling per seed.

The Student t distribution is computed here (the regularized incomplete beta function by its
continued fraction), so any number of seeds gets its exact quantile without SciPy.
"""

from __future__ import annotations

import math
import os
import statistics
from contextlib import contextmanager

ALPHA = 0.05
BOOTSTRAP_SAMPLES = 1000  # sacreBLEU's default number of paired bootstrap resamples
VERDICTS = ("beats", "worse", "no difference detected", "cannot be applied")


# ---------------------------------------------------------------- Student t distribution
def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for aa in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                   -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), a, b > 0, 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (bisection on the
    two-sided tail, to about 1e-12 relative)."""
    if not 0.0 < q < 1.0 or df <= 0:
        raise ValueError(f"t quantile needs 0 < q < 1 and df > 0 (got q={q}, df={df})")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    if q == 0.5:
        return 0.0
    tail = 2.0 * (1.0 - q)
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > tail:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > tail else (lo, mid)
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------- intervals and decisions
def paired_interval(diffs: list[float], level: float = 0.95) -> dict:
    """Mean of the paired differences with its ``level`` t-interval, mean +- t(1 - a/2, n - 1)
    * sd / sqrt(n), and the two-sided paired t-test's p-value. With fewer than 2 differences
    only n and the mean are given (lo, hi, p: None)."""
    n = len(diffs)
    out = {"n": n, "mean": statistics.fmean(diffs) if n else None, "sd": None, "t_crit": None,
           "lo": None, "hi": None, "width": None, "t": None, "p": None}
    if n < 2:
        return out
    mean, sd = out["mean"], statistics.stdev(diffs)
    t_crit = t_quantile(1.0 - (1.0 - level) / 2.0, n - 1)
    half = t_crit * sd / math.sqrt(n)
    if sd > 0:
        t = mean / (sd / math.sqrt(n))
    else:  # identical differences: no spread, the test is degenerate
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    out.update(sd=sd, t_crit=t_crit, lo=mean - half, hi=mean + half, width=2 * half,
               t=t, p=t_two_sided_p(t, n - 1))
    return out


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjusted p-values over the whole family ``pvalues``. A member without
    a p-value (too few seeds) still counts in the family, as if its p were 1 (conservative:
    the family is the one fixed in advance); its adjusted value is None."""
    family = len(pvalues)
    order = sorted(pvalues, key=lambda k: (1.0 if pvalues[k] is None else pvalues[k], k))
    adjusted, running = {}, 0.0
    for rank, key in enumerate(order):
        p = 1.0 if pvalues[key] is None else pvalues[key]
        running = max(running, min(1.0, (family - rank) * p))
        adjusted[key] = None if pvalues[key] is None else running
    return {k: adjusted[k] for k in pvalues}


def decide(interval: dict, p_holm: float | None, alpha: float = ALPHA) -> str:
    """The protocol's rule on the primary endpoint: "beats" when the interval's lower bound is
    above 0 and Holm's p is below ``alpha``; "worse" when the upper bound is below 0 under
    the same correction; otherwise "no difference detected"; "cannot be applied" without an
    interval (fewer than 2 paired seeds)."""
    if interval.get("lo") is None or p_holm is None:
        return "cannot be applied"
    if interval["lo"] > 0 and p_holm < alpha:
        return "beats"
    if interval["hi"] < 0 and p_holm < alpha:
        return "worse"
    return "no difference detected"


# ---------------------------------------------------------------- sacreBLEU's paired bootstrap
@contextmanager
def _default_sacrebleu_seed():
    """sacreBLEU reads its resampling seed from ``SACREBLEU_SEED``; the protocol fixes its
    default (12345), so a value set in the environment is set aside for the call."""
    saved = os.environ.pop("SACREBLEU_SEED", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["SACREBLEU_SEED"] = saved


def paired_bootstrap(baseline: list[str], systems: dict[str, list[str]], references: list[str],
                     n_samples: int = BOOTSTRAP_SAMPLES) -> dict:
    """sacreBLEU's paired bootstrap resampling (``sacrebleu.significance.PairedTest``, test
    ``bs``) of each system against ``baseline`` on the same sentences, with BLEU configured as
    ``gapless.metrics.corpus_scores`` scores (13a, mixed case, exp smoothing). Every system is
    resampled with the same indices (sacreBLEU's default seed), so one call with several
    systems gives what one call per pair gives. Returns the signature, the baseline's score,
    mean and 95% half-interval, and per system also its p-value and its difference."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    for name, hyps in (("baseline", baseline), *systems.items()):
        if len(hyps) != len(references):
            raise ValueError(f"{name}: {len(hyps)} hypotheses but {len(references)} references")
    named = [("baseline", baseline), *systems.items()]
    with _default_sacrebleu_seed():
        test = PairedTest(named, {"BLEU": BLEU()}, [references], test_type="bs",
                          n_samples=n_samples)
        signatures, scores = test()
    (key,) = signatures
    results = dict(zip(scores["System"], scores[key]))
    base = results.pop("baseline")
    row = {"score": base.score, "mean": float(base.mean), "ci": float(base.ci)}
    return {"signature": str(signatures[key]), "baseline": row,
            "systems": {name: {"score": r.score, "mean": float(r.mean), "ci": float(r.ci),
                               "p": float(r.p_value), "delta": r.score - base.score}
                        for name, r in results.items()}}


def bootstrap_counts(boot: dict, alpha: float = ALPHA) -> dict:
    """Per split and method of ``boot`` ({split: {seed: paired_bootstrap(...)}}): how many
    seeds the bootstrap found significant at ``alpha`` (and in which direction), out of how
    many compared. sacreBLEU gives identical scores its smallest p-value; such a seed is
    counted as ``equal``, not as significant."""
    out: dict = {}
    for split, seeds in boot.items():
        out[split] = {}
        for res in seeds.values():
            for m, row in res["systems"].items():
                c = out[split].setdefault(m, {"compared": 0, "significant": 0, "better": 0,
                                              "worse": 0, "equal": 0})
                c["compared"] += 1
                if row["delta"] == 0:
                    c["equal"] += 1
                elif row["p"] < alpha:
                    c["significant"] += 1
                    c["better" if row["delta"] > 0 else "worse"] += 1
    return out
