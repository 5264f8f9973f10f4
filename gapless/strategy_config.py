"""The strategy section of the configuration: what the decoder sees while training (methods.md
2-5), its settings and their consistency checks (``gapless.config`` holds the whole schema)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StrategyConfig:
    """What the decoder sees while training (methods.md 2-5). Defaults leave teacher forcing
    unchanged; the other fields matter only for the strategy they name."""

    name: str = "teacher_forcing"  # a key of gapless.strategies.STRATEGIES
    # predicted input per slot (scheduled_sampling; word_oracle always samples)
    predicted: str = "argmax"  # a key of gapless.strategies.PREDICTED
    temperature: float = 1.0  # tau of sample / gumbel_soft (applied before the noise)
    alpha: float = 1.0  # soft / topk_soft: softmax(alpha * logits)
    topk: int = 5  # topk_soft: the k largest logits
    first_pass_grad: bool = False  # backpropagate through the first pass (soft kinds carry it)
    mle_weight: float = 0.0  # > 0: add this x the first (teacher-forced) pass's loss
    mix_unit: str = "token"  # one gold/predicted draw per token, sentence or batch
    # schedule of p = probability of the gold token (gapless.schedules.SCHEDULES); auto:
    # inverse_sigmoid, or or_nmt for the oracles
    schedule: str = "auto"
    schedule_unit: str = "auto"  # auto: epoch for or_nmt, else update
    constant_p: float = 1.0  # constant: p
    linear_start: float = 1.0  # linear: p at 0
    linear_slope: float = 0.0  # linear: p falls by this per unit
    exp_base: float = 1.0  # exponential: p = exp_base ** i
    sigmoid_k: float = 1000.0  # inverse_sigmoid: k / (k + exp(i / k))
    half_at: float = 0.0  # > 0: inverse_sigmoid's k such that p = 0.5 at this progress
    p_min: float = 0.0  # floor of p
    or_nmt_mu: float = 15.0  # or_nmt: mu / (mu + exp(i / mu)); OR-NMT used 15 or 50 per epoch
    step_eps: float = 0.0  # > 0: decoding-step schedule p_t = step_eps ** (t * (1 - f(i)))
    # sentence_oracle
    oracle_beam: int = 4  # length-constrained beam size
    oracle_noise: bool = False  # Gumbel noise (at temperature) on the beam's log-probs
    oracle_refresh: int = 0  # > 0: cache each sentence's oracle, search again after N updates
    # minimum_risk: Shen et al. 2016; the defaults are Wang & Sennrich 2020's released setup
    mrt_samples: int = 4  # candidates sampled per sentence (duplicates count once)
    mrt_alpha: float = 0.005  # sharpness: Q(c) ~ p(c|x) ** mrt_alpha over the candidates
    mrt_weight: float = 1.0  # loss = (1 - w) x token-level loss + w x expected risk
    mrt_reference: bool = False  # the reference joins the candidates
    mrt_max_len_a: float = 1.5  # a candidate: at most a x (source tokens + EOS) + b tokens
    mrt_max_len_b: int = 5
    # confidence_aware (Liu et al. 2021), by p(gold): <= low gold, > high random, else predicted
    cass_low: float = 0.9  # the paper's t_golden
    cass_high: float = 0.95  # the paper's t_rand
    cass_random: bool = True  # the "w/ random" variant (off: predicted above cass_low too)


def strategy_problems(s: StrategyConfig) -> list[str]:
    """What the types and ``gapless.config.RANGES`` cannot say about the strategy settings."""
    problems = []
    for key in ("temperature", "alpha", "or_nmt_mu"):
        if not getattr(s, key) > 0:
            problems.append(f"strategy.{key} must be > 0")
    if s.topk < 1 or s.oracle_beam < 1:
        problems.append("strategy.topk and strategy.oracle_beam must be >= 1")
    for key in ("mle_weight", "half_at", "linear_slope"):
        if getattr(s, key) < 0:
            problems.append(f"strategy.{key} must be >= 0")
    for key in ("p_min", "step_eps", "constant_p", "exp_base"):
        if not 0 <= getattr(s, key) <= 1:
            problems.append(f"strategy.{key} must be in [0, 1]")
    if s.half_at == 0 and s.sigmoid_k < 1:
        problems.append(f"strategy.sigmoid_k of the inverse sigmoid must be >= 1, got "
                        f"{s.sigmoid_k}")
    if s.oracle_refresh < 0:
        problems.append("strategy.oracle_refresh must be >= 0 (0: search every update)")
    if s.mle_weight > 0 and s.name in ("sentence_oracle", "minimum_risk"):
        problems.append("strategy.mle_weight needs a first pass (scheduled_sampling, "
                        "word_oracle, confidence_aware)")
    return problems
