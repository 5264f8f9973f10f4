"""Claim 7.5: W_q = W_k gives symmetric score matrices (less expressive)."""

from __future__ import annotations

from pathlib import Path

import torch

from ...config import ModelConfig
from ...layers import Attention
from ...model import sinusoidal_table
from ..figures import pyplot, save
from .core import Claim, Context, Measured, attention_scores, prose, rounded


def previous_token_fit(projections: str, noise: float = 0.2, d: int = 32, t: int = 16,
                       steps: int = 600, seed: int = 0) -> float:
    """Train one attention head to attend from each token to the previous one (a directed
    relation) on inputs = positions + ``noise`` x N(0, 1) token content; returns the final mean
    probability on the previous token. Symmetric scores s_ij = s_ji make directed relations
    harder to express (a fixed chain of positions alone can still be ordered: noise 0)."""
    torch.manual_seed(seed)
    attn = Attention(ModelConfig(d_model=d, n_heads=1, projections=projections), cross=False)
    opt = torch.optim.Adam(attn.parameters(), lr=1e-2)
    pos = sinusoidal_table(t, d)
    i = torch.arange(1, t)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, t, d, generator=g) * noise + pos
        q, k, _ = (attn._heads(v) for v in attn.proj.self_qkv(x))
        q, k, scale = attn.score(q, k)
        log_probs = (torch.matmul(q, k.transpose(-1, -2)) * scale).log_softmax(-1)
        loss = -log_probs[:, 0, i, i - 1].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(log_probs.detach().exp()[:, 0, i, i - 1].mean())


class SharedQK(Claim):
    id = "shared_qk"
    statement = prose("""
        W_q = W_k gives symmetric score matrices (less expressive).""")
    rule = prose("""
        held if: with W_q = W_k the score matrix equals its transpose exactly (elementwise
        product sums; BLAS matmul within 1e-5 of it), with separate W_q, W_k it does not
        (relative asymmetry ||S - S^T|| / ||S|| > 0.1), and a head with W_q = W_k learns a
        directed relation (attend to the previous token, with token content as noise on the
        positions) worse than separate projections""")
    PROJ = ("shared_qk", "separate")

    def measure(self, ctx: Context) -> Measured:
        d, h, t = 64, 4, 12
        x = torch.randn(2, t, d, generator=torch.Generator().manual_seed(ctx.seed))
        numbers: dict = {}
        series: dict = {}
        for proj in self.PROJ:
            torch.manual_seed(ctx.seed)
            attn = Attention(ModelConfig(d_model=d, n_heads=h, projections=proj), cross=False)
            exact = attention_scores(attn, x, exact=True)
            fast = attention_scores(attn, x)
            numbers[f"max_asymmetry_exact_{proj}"] = float(
                (exact - exact.transpose(-1, -2)).abs().max())
            numbers[f"max_asymmetry_matmul_{proj}"] = rounded(float(
                (fast - fast.transpose(-1, -2)).abs().max()))
            numbers[f"relative_asymmetry_{proj}"] = rounded(float(
                (exact - exact.transpose(-1, -2)).norm() / exact.norm()))
            numbers[f"previous_token_prob_{proj}"] = rounded(
                previous_token_fit(proj, 0.2, steps=ctx.pick(600, 200), seed=ctx.seed), 3)
            numbers[f"previous_token_prob_{proj}_positions_only"] = rounded(
                previous_token_fit(proj, 0.0, steps=ctx.pick(300, 100), seed=ctx.seed), 3)
            series[f"scores_{proj}"] = exact[0, 0].tolist()
        return Measured(numbers, series, f"random init, d_model={d}, {h} heads, {t} tokens; "
                        "previous-token fit: one head, d_model 32, 16 positions + 0.2 x N(0,1) "
                        "content (positions_only: no content)")

    def checks(self, n: dict) -> dict[str, bool]:
        return {
            "W_q = W_k: exactly symmetric": n["max_asymmetry_exact_shared_qk"] == 0.0
                and n["max_asymmetry_matmul_shared_qk"] <= 1e-5,
            "separate W_q, W_k: not symmetric": n["relative_asymmetry_separate"] > 0.1,
            "W_q = W_k: directed relation learned worse":
                n["previous_token_prob_shared_qk"] < n["previous_token_prob_separate"],
        }

    def plot(self, m: Measured, path: Path) -> None:
        plt = pyplot()
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.5))
        for ax, proj in zip(axes, self.PROJ):
            s = torch.tensor(m.series[f"scores_{proj}"])
            lim = float(s.abs().max())
            im = ax.imshow(s, cmap="coolwarm", vmin=-lim, vmax=lim)
            ax.set(title=f"{proj}: ||S-S^T||/||S|| = "
                         f"{m.numbers[f'relative_asymmetry_{proj}']:.3g}",
                   xlabel="key position j (token)", ylabel="query position i (token)")
            fig.colorbar(im, ax=ax, label="score s_ij (unitless)")
        probs = [m.numbers[f"previous_token_prob_{p}"] for p in self.PROJ]
        axes[2].bar(list(self.PROJ), probs, color=["C0", "C1"], label="after training one head")
        axes[2].set(ylim=(0, 1), ylabel="mean attention on the previous token (probability)",
                    title="Learning a directed relation (i attends to i-1)")
        axes[2].legend()
        axes[2].grid(alpha=0.3, axis="y")
        save(fig, path)
