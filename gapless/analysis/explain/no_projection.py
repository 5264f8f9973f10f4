"""Claim 7.7: without Q/K/V projections a token attends mostly to itself."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ...config import ModelConfig
from ...layers import Attention
from ..figures import log2_ticks, pyplot, save
from .core import Claim, Context, Measured, attention_probs, prose, rounded


def diagonal_dominance(probs: torch.Tensor) -> dict[str, float]:
    """probs [..., T, T]: fraction of rows whose argmax is the diagonal, mean diagonal weight."""
    diag = probs.diagonal(dim1=-2, dim2=-1)  # [..., T]
    eye = torch.arange(probs.shape[-1])
    return {"diag_argmax_fraction": float((probs.argmax(-1) == eye).float().mean()),
            "mean_diag_weight": float(diag.mean())}


def equal_norm_tokens(b: int, t: int, d: int, seed: int = 0) -> torch.Tensor:
    """Random token vectors [b,t,d], every one rescaled to norm sqrt(d) (unit variance)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, d, generator=g)
    return x / x.norm(dim=-1, keepdim=True) * math.sqrt(d)


class NoProjection(Claim):
    id = "no_projection"
    statement = prose("""
        Without Q/K/V projections a token's score with itself dominates (for equal norms,
        q_i·k_i is the largest), so attention mostly copies the token itself.""")
    rule = prose("""
        held if: for equal-norm tokens without projections every row's largest score is its own
        (fraction 1.0, Cauchy-Schwarz), the mean weight on itself exceeds 0.5 at d_k = 64 (the
        paper's head size), and with separate projections fewer than half the rows pick
        themselves""")
    D = (16, 32, 64, 128, 256)
    PROJ = ("none", "shared_qk", "separate")

    def measure(self, ctx: Context) -> Measured:
        b, t = ctx.pick(64, 16), 20
        series: dict = {"d_k": list(self.D)}
        for proj in self.PROJ:
            stats = []
            for d in self.D:
                torch.manual_seed(ctx.seed)
                attn = Attention(ModelConfig(d_model=d, n_heads=1, projections=proj), cross=False)
                stats.append(diagonal_dominance(
                    attention_probs(attn, equal_norm_tokens(b, t, d, ctx.seed))))
            for key in ("diag_argmax_fraction", "mean_diag_weight"):
                series[f"{key}_{proj}"] = [s[key] for s in stats]
        numbers = {f"{key}_{proj}": {str(d): rounded(v, 3) for d, v in
                                     zip(self.D, series[f"{key}_{proj}"])}
                   for key in ("diag_argmax_fraction", "mean_diag_weight") for proj in self.PROJ}
        numbers["chance"] = rounded(1 / t, 3)
        return Measured(numbers, series, f"{b} sequences of {t} random tokens of norm sqrt(d), "
                        "one head (d_k = d_model), 1/sqrt(d_k) scaling, random init")

    def checks(self, n: dict) -> dict[str, bool]:
        return {
            "no projections: every row's argmax is itself":
                all(v == 1.0 for v in n["diag_argmax_fraction_none"].values()),
            "no projections: mostly copies itself at d_k=64":
                n["mean_diag_weight_none"]["64"] > 0.5,
            "separate projections: it does not":
                all(v < 0.5 for v in n["diag_argmax_fraction_separate"].values()),
        }

    def plot(self, m: Measured, path: Path) -> None:
        plt = pyplot()
        s = m.series
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for proj in self.PROJ:
            axes[0].plot(s["d_k"], s[f"diag_argmax_fraction_{proj}"], "o-", label=proj)
            axes[1].plot(s["d_k"], s[f"mean_diag_weight_{proj}"], "o-", label=proj)
        for ax in axes:
            ax.axhline(m.numbers["chance"], color="grey", ls=":", label="chance (1/T)")
            ax.set(xlabel="d_k = d_model (dimensions, one head)", ylim=(0, 1.05))
            log2_ticks(ax, s["d_k"])
            ax.legend(title="projections")
            ax.grid(alpha=0.3)
        axes[0].set(ylabel="rows whose argmax is the token itself (fraction)",
                    title="Does a token attend most to itself?")
        axes[1].set(ylabel="mean attention weight on itself (probability)",
                    title="How much of the output is the token itself?")
        save(fig, path)
