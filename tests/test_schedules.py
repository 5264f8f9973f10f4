"""gapless.schedules: p of the gold token at known points, floors, units, the step schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from gapless.config import StrategyConfig
from gapless.schedules import (
    SCHEDULES,
    Progress,
    gold_probability,
    k_for_half,
    resolve,
    step_probability,
)


def _cfg(**kw) -> StrategyConfig:
    return StrategyConfig(name="scheduled_sampling", **kw)


@pytest.mark.parametrize(
    "update,expected", [(0, 1.000), (20_000, 0.995), (30_000, 0.970), (40_000, 0.854)]
)
def test_inverse_sigmoid_or_nmt_fine_tuning_points(update, expected):
    """methods.md 4.4: k = 5800 per update -> 1.000, 0.995 (20k), 0.970 (30k), 0.854 (40k)."""
    cfg = _cfg(schedule="inverse_sigmoid", sigmoid_k=5800)
    p = gold_probability(cfg, Progress(update, 1))
    assert round(p, 3) == expected
    assert SCHEDULES["inverse_sigmoid"](update, cfg) == pytest.approx(p)


@pytest.mark.parametrize("mu", [5.0, 15.0, 50.0])
def test_or_nmt_is_monotone_in_unit_interval(mu):
    cfg = _cfg(schedule="or_nmt", or_nmt_mu=mu)
    values = [gold_probability(cfg, Progress(0, e)) for e in range(2000)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(a > b for a, b in itertools.pairwise(values))  # strictly decreasing
    assert values[0] == pytest.approx(mu / (mu + 1))
    assert 0.0 <= gold_probability(cfg, Progress(0, 10**7)) < 1e-100  # exp overflow guarded


def test_or_nmt_published_settings_stay_gentle():
    """methods.md 4: mu = 15 or 50 per epoch keeps p above ~0.85 (mu = 15: 10 epochs; mu = 50:
    50 epochs); gentle mixing."""
    for mu, epochs in ((15.0, 10), (50.0, 50)):
        cfg = _cfg(schedule="or_nmt", or_nmt_mu=mu)
        assert gold_probability(cfg, Progress(0, epochs)) > 0.85
        assert gold_probability(cfg, Progress(0, 3 * epochs)) < 0.85  # not forever


@pytest.mark.parametrize("n", [10.0, 1000.0, 6_931.0, 40_000.0, 1e6])
def test_k_for_half_round_trips(n):
    k = k_for_half(n)
    assert k * math.log(k) == pytest.approx(n, rel=1e-9)
    cfg = _cfg(schedule="inverse_sigmoid", half_at=n)
    assert SCHEDULES["inverse_sigmoid"](n, cfg) == pytest.approx(0.5, abs=1e-9)
    before = SCHEDULES["inverse_sigmoid"](0.9 * n, cfg)
    after = SCHEDULES["inverse_sigmoid"](1.1 * n, cfg)
    assert before > 0.5 > after


def test_k_for_half_rejects_non_positive():
    with pytest.raises(ValueError):
        k_for_half(0.0)


def test_linear_with_floor():
    cfg = _cfg(schedule="linear", linear_start=1.0, linear_slope=1e-4, p_min=0.3)
    assert gold_probability(cfg, Progress(0, 1)) == 1.0
    assert gold_probability(cfg, Progress(2_000, 1)) == pytest.approx(0.8)
    assert gold_probability(cfg, Progress(10_000, 1)) == 0.3  # 1 - 1 = 0, floored
    # k > 1: p held at 1 for a while (clipped), then falls
    held = _cfg(schedule="linear", linear_start=1.5, linear_slope=1e-4)
    assert gold_probability(held, Progress(4_000, 1)) == 1.0
    assert gold_probability(held, Progress(6_000, 1)) == pytest.approx(0.9)


def test_exponential_halves_and_floors():
    cfg = _cfg(schedule="exponential", exp_base=0.9999)
    assert gold_probability(cfg, Progress(6_931, 1)) == pytest.approx(0.5, abs=1e-3)
    floored = _cfg(schedule="exponential", exp_base=0.9999, p_min=0.6)
    assert gold_probability(floored, Progress(6_931, 1)) == 0.6
    assert gold_probability(floored, Progress(0, 1)) == 1.0


def test_constant():
    assert gold_probability(_cfg(schedule="constant", constant_p=0.25), Progress(123, 4)) == 0.25


def test_unit_update_or_epoch():
    by_update = _cfg(schedule="inverse_sigmoid", sigmoid_k=10, schedule_unit="update")
    by_epoch = _cfg(schedule="inverse_sigmoid", sigmoid_k=10, schedule_unit="epoch")
    at = Progress(update=50, epoch=2)
    assert gold_probability(by_update, at) == pytest.approx(10 / (10 + math.exp(5.0)))
    assert gold_probability(by_epoch, at) == pytest.approx(10 / (10 + math.exp(0.2)))


def test_auto_resolution():
    assert resolve(_cfg(), "inverse_sigmoid") == ("inverse_sigmoid", "update")
    assert resolve(_cfg(), "or_nmt") == ("or_nmt", "epoch")  # OR-NMT: e = epoch
    assert resolve(_cfg(schedule_unit="update"), "or_nmt") == ("or_nmt", "update")
    assert resolve(_cfg(schedule="linear"), "or_nmt") == ("linear", "update")


def test_step_schedule_composes_with_training_schedule():
    """Liu et al. 2021: p_t = eps ** (t (1 - f(i))); f = 1 -> all gold, f = 0 -> eps ** t."""
    t = torch.arange(6, dtype=torch.float32)
    torch.testing.assert_close(step_probability(0.0, 0.9, 6), 0.9**t)
    assert torch.equal(step_probability(1.0, 0.9, 6), torch.ones(6))
    half = step_probability(0.5, 0.9, 6)
    torch.testing.assert_close(half, 0.9 ** (t * 0.5))
    assert bool((half[1:] < half[:-1]).all())  # later slots: less gold
    assert bool((step_probability(0.0, 0.5, 6, p_min=0.2) >= 0.2).all())
