"""Claim 7.4: h heads of d_model/h cost what one full head costs."""

from __future__ import annotations

from pathlib import Path

import torch

from ...config import ModelConfig
from ...layers import Attention
from ...model import count_parameters
from ..figures import pyplot, save
from .core import Claim, Context, Measured, count_flops, prose, rounded, time_interleaved


class HeadSize(Claim):
    id = "head_size"
    statement = prose("""
        Reducing each head to d_model/h keeps cost equal to one full head while adding
        subspaces.""")
    rule = prose("""
        held if: h heads of d_model/h have exactly the parameters and matmul FLOPs of one head
        of d_model, and their measured CPU time is within 1.5x of it, while giving h attention
        distributions per token instead of 1; full-size heads (head_dim = d_model) cost h x the
        parameters and FLOPs (within 10%) and more than h/2 x the CPU time""")

    def measure(self, ctx: Context) -> Measured:
        d, h, b, t = 256, 8, 8, 32
        variants = {"h_reduced_heads": {"n_heads": h}, "one_full_head": {"n_heads": 1},
                    "h_full_heads": {"n_heads": h, "head_dim": d}}
        torch.manual_seed(ctx.seed)
        layers = {k: Attention(ModelConfig(d_model=d, **kw), cross=False).eval()
                  for k, kw in variants.items()}
        x = torch.randn(b, t, d, generator=torch.Generator().manual_seed(ctx.seed))
        calls = {k: (lambda a=a: a(x)) for k, a in layers.items()}
        secs = time_interleaved(calls, ctx.pick(30, 8))
        params = {k: count_parameters(a) for k, a in layers.items()}
        flops = {k: count_flops(f) for k, f in calls.items()}
        base = "one_full_head"
        numbers = {
            "d_model": d, "heads": h, "batch_tokens": b * t,
            "params": params, "matmul_flops": flops,
            "forward_cpu_ms": {k: rounded(v * 1e3) for k, v in secs.items()},
            "param_ratio": {k: rounded(v / params[base]) for k, v in params.items()},
            "flop_ratio": {k: rounded(v / flops[base]) for k, v in flops.items()},
            "time_ratio": {k: rounded(v / secs[base]) for k, v in secs.items()},
            "attention_maps_per_token": {"h_reduced_heads": h, "one_full_head": 1,
                                         "h_full_heads": h},
        }
        return Measured(numbers, {}, f"one self-attention layer, B={b} T={t} D={d} h={h}, CPU")

    def checks(self, n: dict) -> dict[str, bool]:
        h = n["heads"]
        return {
            "reduced heads: same parameters as one full head":
                n["params"]["h_reduced_heads"] == n["params"]["one_full_head"],
            "reduced heads: same matmul FLOPs as one full head":
                n["matmul_flops"]["h_reduced_heads"] == n["matmul_flops"]["one_full_head"],
            "reduced heads: time within 1.5x of one full head":
                n["time_ratio"]["h_reduced_heads"] <= 1.5,
            "full-size heads cost h x":
                abs(n["param_ratio"]["h_full_heads"] / h - 1) <= 0.1
                and abs(n["flop_ratio"]["h_full_heads"] / h - 1) <= 0.1
                and n["time_ratio"]["h_full_heads"] > h / 2,
        }

    def plot(self, m: Measured, path: Path) -> None:
        plt = pyplot()
        n = m.numbers
        names = list(n["params"])
        labels = {"h_reduced_heads": f"{n['heads']} heads x {n['d_model'] // n['heads']}",
                  "one_full_head": f"1 head x {n['d_model']}",
                  "h_full_heads": f"{n['heads']} heads x {n['d_model']}"}
        fig, ax = plt.subplots(figsize=(9, 4.8))
        width = 0.27
        for i, (key, label) in enumerate((("param_ratio", "parameters"),
                                          ("flop_ratio", "matmul FLOPs"),
                                          ("time_ratio", "measured CPU time"))):
            xs = [j + (i - 1) * width for j in range(len(names))]
            ax.bar(xs, [n[key][k] for k in names], width, label=label)
        ax.axhline(n["heads"], color="grey", ls=":", label=f"h = {n['heads']}")
        ax.set_xticks(range(len(names)), [labels[k] for k in names])
        ax.set(ylabel="cost relative to one full head (x)",
               title=f"Attention layer cost, d_model={n['d_model']}")
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
        save(fig, path)
