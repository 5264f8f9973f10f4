"""Schedules of p, the probability of feeding the *gold* token (methods.md 3-5).

Each schedule is a small pure function ``f(i, cfg) -> p`` of training progress ``i`` (updates or
epochs, ``cfg.schedule_unit``); ``gold_probability`` applies the floor ``p_min``, clips to [0, 1]
and optionally composes a decoding-step schedule, which makes p a vector over target slots [T].
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import StrategyConfig, register_choices


@dataclass(frozen=True)
class Progress:
    """Where training is: the schedules' argument (updates done, current epoch from 1)."""

    update: int
    epoch: int


def _exp(x: float) -> float:
    return math.exp(min(x, 700.0))  # exp(700) ~ 1e304: p is 0 to double precision long before


@functools.lru_cache(maxsize=64)
def k_for_half(n: float) -> float:
    """k of the inverse sigmoid k / (k + exp(i/k)) that gives p = 0.5 at i = n, i.e. the root of
    k ln k = n (k > 1), by bisection. ``n`` is in the schedule's unit (updates or epochs)."""
    if n <= 0:
        raise ValueError(f"p = 0.5 needs a positive progress, got {n}")
    lo, hi = 1.0, max(2.0, float(n))  # k ln k is increasing for k > 1; at k = max(2, n) >= n
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid * math.log(mid) < n:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


def constant(i: float, cfg: StrategyConfig) -> float:
    """p = constant_p at every step."""
    return cfg.constant_p


def linear(i: float, cfg: StrategyConfig) -> float:
    """p = linear_start - linear_slope * i (Bengio et al. 2015, sec. 2.4; the floor p_min is
    applied by the caller)."""
    return cfg.linear_start - cfg.linear_slope * i


def exponential(i: float, cfg: StrategyConfig) -> float:
    """p = exp_base ** i, exp_base < 1 (Bengio et al. 2015)."""
    return cfg.exp_base**i


def inverse_sigmoid(i: float, cfg: StrategyConfig) -> float:
    """p = k / (k + exp(i / k)), k = sigmoid_k >= 1 (Bengio et al. 2015); p = 0.5 at
    i = k ln k. ``cfg.half_at > 0`` gives k from that point instead."""
    k = k_for_half(cfg.half_at) if cfg.half_at > 0 else cfg.sigmoid_k
    return k / (k + _exp(i / k))


def or_nmt(i: float, cfg: StrategyConfig) -> float:
    """p = mu / (mu + exp(e / mu)), mu = or_nmt_mu, OR-NMT's decay (Zhang et al. 2019),
    e = epoch."""
    mu = cfg.or_nmt_mu
    return mu / (mu + _exp(i / mu))


SCHEDULES: dict[str, Callable[[float, StrategyConfig], float]] = {
    "constant": constant,
    "linear": linear,
    "exponential": exponential,
    "inverse_sigmoid": inverse_sigmoid,
    "or_nmt": or_nmt,
}


register_choices("strategy.schedule", SCHEDULES, extra=("auto",))


def resolve(cfg: StrategyConfig, default: str) -> tuple[str, str]:
    """(schedule name, unit): ``auto`` means the strategy's ``default`` schedule, and epochs for
    OR-NMT's schedule (as in the paper), updates otherwise."""
    name = default if cfg.schedule == "auto" else cfg.schedule
    unit = cfg.schedule_unit
    if unit == "auto":
        unit = "epoch" if name == "or_nmt" else "update"
    return name, unit


def gold_probability(
    cfg: StrategyConfig, progress: Progress, default: str = "inverse_sigmoid"
) -> float:
    """f(i): the training schedule at ``progress``, floored at p_min and clipped to [0, 1]."""
    name, unit = resolve(cfg, default)
    i = progress.update if unit == "update" else progress.epoch
    return min(1.0, max(cfg.p_min, SCHEDULES[name](float(i), cfg)))


def step_probability(
    f: float, eps: float, length: int, p_min: float = 0.0, device=None
) -> torch.Tensor:
    """Decoding-step schedule composed with the training schedule: p_t = eps ** (t (1 - f)),
    t = 0..length-1 (Liu et al., EMNLP 2021). f = 1 -> all gold; f = 0 -> eps ** t.  -> [T]"""
    t = torch.arange(length, dtype=torch.float32, device=device)
    return (eps ** (t * (1.0 - f))).clamp(min=p_min, max=1.0)
