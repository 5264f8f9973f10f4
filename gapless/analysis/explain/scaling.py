"""Claim 7.1: scaling q·k by 1/sqrt(d_k) keeps the score variance at 1; LayerNorm on q and k
also works, at extra cost."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ...config import ModelConfig
from ...layers import SCORES, Attention
from ...model import count_parameters
from ..figures import finish, log2_ticks, pyplot, save
from .core import (
    Claim,
    Context,
    Measured,
    all_within,
    count_flops,
    prose,
    rounded,
    time_interleaved,
)


def score_variance(d_k: int, score: str = "sqrt", n: int = 10000, seed: int = 0) -> float:
    """Variance of the attention score of unit-variance q, k [n, d_k] under the model's score
    module ``score`` (``none`` | ``sqrt`` | ``qk_norm``, gapless.model.SCORES)."""
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, n, d_k, generator=g)
    with torch.no_grad():
        q, k, scale = SCORES[score](d_k)(q, k)
        return float(((q * k).sum(-1) * scale).var())


def softmax_saturation(
    d_k: int, score: str = "sqrt", n_queries: int = 500, n_keys: int = 32, seed: int = 0
) -> dict[str, float]:
    """Softmax over ``n_keys`` unit-variance keys per query: mean max probability, entropy
    (nats) and Frobenius norm of the softmax Jacobian diag(p) - p p^T, the factor every gradient
    through the scores is multiplied by: it goes to 0 as p becomes one-hot."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n_queries, 1, d_k, generator=g)
    k = torch.randn(n_queries, n_keys, d_k, generator=g)
    with torch.no_grad():
        q, k, scale = SCORES[score](d_k)(q, k)
        p = ((q * k).sum(-1) * scale).softmax(-1)  # [N,L]
    p2, p3 = (p**2).sum(-1), (p**3).sum(-1)
    jac = (p2 - 2 * p3 + p2**2).clamp_min(0).sqrt()  # ||diag(p) - pp^T||_F, expanded
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
    return {"max_prob": float(p.max(-1).values.mean()), "entropy": float(entropy.mean()),
            "jacobian_norm": float(jac.mean())}


class Scaling(Claim):
    id = "scaling"
    statement = prose("""
        Unscaled q·k has variance d_k for unit-variance q, k; softmax saturates and its gradient
        vanishes; 1/sqrt(d_k) keeps variance 1. LayerNorm on q and k also works, at extra cost.""")
    rule = prose("""
        held if: unscaled variance / d_k is within 0.85-1.15 at every d_k (least-squares slope
        0.9-1.1); scaled variance within 0.85-1.15; qk_norm variance within 0.7-1.4; at the
        largest d_k the unscaled softmax puts > 0.9 on its top key and its Jacobian norm falls
        towards 0 like d_k^-1/2 (log-log slope over the three largest d_k at most -0.4) while
        the scaled one stays within 10% of its mean; an attention forward with qk_norm takes
        more CPU time than with 1/sqrt(d_k) (median of interleaved repetitions)""")
    D_KS = (16, 32, 64, 128, 256, 512)
    MODES = ("none", "sqrt", "qk_norm")

    def measure(self, ctx: Context) -> Measured:
        n = ctx.pick(10000, 3000)
        series: dict = {"d_k": list(self.D_KS)}
        for mode in self.MODES:
            series[f"variance_{mode}"] = [score_variance(d, mode, n, ctx.seed) for d in self.D_KS]
            sat = [softmax_saturation(d, mode, ctx.pick(500, 200), 32, ctx.seed)
                   for d in self.D_KS]
            for key in ("max_prob", "entropy", "jacobian_norm"):
                series[f"{key}_{mode}"] = [s[key] for s in sat]
        var_none = series["variance_none"]
        slope = sum(v * d for v, d in zip(var_none, self.D_KS)) / sum(d * d for d in self.D_KS)
        # the cost of qk_norm: one attention layer of the peer model size
        b, t, d, h = 8, 32, 256, 4
        x = torch.randn(b, t, d, generator=torch.Generator().manual_seed(ctx.seed))
        layers = {s: Attention(ModelConfig(d_model=d, n_heads=h, score=s), cross=False).eval()
                  for s in ("sqrt", "qk_norm")}
        secs = time_interleaved({s: (lambda a=a: a(x)) for s, a in layers.items()},
                                 ctx.pick(60, 15))
        extra_params = count_parameters(layers["qk_norm"]) - count_parameters(layers["sqrt"])
        # LayerNorm ~ 8 flops per element (mean, centre, square, sum, rsqrt, scale, gain, bias)
        ln_flops = 2 * 8 * b * t * d
        matmul_flops = count_flops(lambda: layers["sqrt"](x))

        # how the gradient factor decays at large d_k: slope of log(norm) over log(d_k)
        jac_slope = float(np.polyfit(np.log(self.D_KS[-3:]),
                                     np.log(series["jacobian_norm_none"][-3:]), 1)[0])

        def per_dk(key: str) -> dict[str, float]:
            return {str(dk): rounded(v) for dk, v in zip(self.D_KS, series[key])}

        numbers = {
            "variance_unscaled_over_dk": {str(dk): rounded(v / dk) for dk, v in
                                          zip(self.D_KS, var_none)},
            "variance_unscaled_slope": rounded(slope),
            "variance_scaled": per_dk("variance_sqrt"),
            "variance_qk_norm": per_dk("variance_qk_norm"),
            "max_prob_unscaled": per_dk("max_prob_none"),
            "max_prob_scaled": per_dk("max_prob_sqrt"),
            "jacobian_norm_unscaled": per_dk("jacobian_norm_none"),
            "jacobian_norm_scaled": per_dk("jacobian_norm_sqrt"),
            "jacobian_norm_qk_norm": per_dk("jacobian_norm_qk_norm"),
            "jacobian_norm_unscaled_loglog_slope": rounded(jac_slope),
            "jacobian_norm_uniform": rounded(math.sqrt(1 / 32 - 1 / 32**2)),
            "largest_d_k": max(self.D_KS),
            "forward_cpu_ms_sqrt": rounded(secs["sqrt"] * 1e3),
            "forward_cpu_ms_qk_norm": rounded(secs["qk_norm"] * 1e3),
            "qk_norm_time_ratio": rounded(secs["qk_norm"] / secs["sqrt"]),
            "qk_norm_extra_params_per_layer": extra_params,
            "qk_norm_extra_flops_fraction_approx": rounded(ln_flops / matmul_flops),
        }
        series["forward_cpu_ms"] = {s: secs[s] * 1e3 for s in secs}
        return Measured(numbers, series,
                        f"{n} samples per d_k; softmax over 32 keys; timing: B={b} T={t} D={d} "
                        f"H={h}, one attention layer on the CPU")

    def checks(self, n: dict) -> dict[str, bool]:
        big = str(n["largest_d_k"])
        return {
            "unscaled variance grows linearly with d_k":
                all(0.85 <= v <= 1.15 for v in n["variance_unscaled_over_dk"].values())
                and 0.9 <= n["variance_unscaled_slope"] <= 1.1,
            "scaled variance stays ~1":
                all(0.85 <= v <= 1.15 for v in n["variance_scaled"].values()),
            "qk_norm variance stays bounded":
                all(0.7 <= v <= 1.4 for v in n["variance_qk_norm"].values()),
            "unscaled softmax saturates, its gradient vanishes":
                n["max_prob_unscaled"][big] > 0.9
                and n["jacobian_norm_unscaled_loglog_slope"] <= -0.4
                and all_within(n["jacobian_norm_scaled"].values(), 0.1),
            "qk_norm costs extra time": n["qk_norm_time_ratio"] > 1.0,
        }

    def plot(self, m: Measured, path: Path) -> None:
        plt = pyplot()
        s = m.series
        labels = {"none": "unscaled q·k", "sqrt": "q·k / sqrt(d_k)",
                  "qk_norm": "LayerNorm(q)·LayerNorm(k)"}
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        for mode in self.MODES:
            axes[0].plot(s["d_k"], s[f"variance_{mode}"], "o-", label=labels[mode])
            axes[1].plot(s["d_k"], s[f"jacobian_norm_{mode}"], "o-", label=labels[mode])
        axes[0].plot(s["d_k"], s["d_k"], "k:", label="variance = d_k")
        axes[0].set(yscale="log", xlabel="d_k (dimensions per head)",
                    ylabel="variance of the score (unitless)",
                    title="Score variance, unit-variance q and k")
        axes[1].axhline(m.numbers["jacobian_norm_uniform"], color="grey", ls=":",
                        label="uniform attention")
        axes[1].set(xlabel="d_k (dimensions per head)",
                    ylabel="||softmax Jacobian||_F (unitless)",
                    title="Softmax gradient factor (32 keys)")
        names = list(s["forward_cpu_ms"])
        axes[2].bar([labels[k] for k in names], [s["forward_cpu_ms"][k] for k in names],
                    color=["C1", "C2"], label="median CPU time per forward")
        axes[2].set(ylabel="CPU time per attention forward (ms)",
                    title=f"Cost: qk_norm / sqrt = {m.numbers['qk_norm_time_ratio']:.2f}x CPU time")
        for ax in axes[:2]:
            log2_ticks(ax, s["d_k"])
        for ax in axes:
            finish(ax)
        save(fig, path)
