"""Claim 7.3: the heads of a trained model capture different relations."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ...checkpoint import RunDir
from ...data import EOS, PAD, load_split, pad_sequences
from ...inference import load
from ...model import Transformer
from ..figures import pyplot, save
from .core import Claim, Context, Measured, attention_probs, prose, rounded, train_tiny


def encoder_attention(model: Transformer, src: torch.Tensor) -> list[torch.Tensor]:
    """Self-attention probabilities [B,H,S,S] of every encoder layer for src [B,S] (eval)."""
    maps: list[torch.Tensor] = []

    def hook(module, args, kwargs, output):
        maps.append(attention_probs(module, args[0], kwargs.get("key_mask")))

    handles = [layer.attn.register_forward_hook(hook, with_kwargs=True)
               for layer in model.encoder]
    model.eval()
    try:
        with torch.no_grad():
            model.encode(src)
    finally:
        for handle in handles:
            handle.remove()
    return maps


def head_statistics(probs: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per sentence and head [B,H], averaged over real query tokens: entropy (nats), mean
    distance sum_j p_ij |i - j| (tokens), and the mass on the previous, same and next token."""
    s = probs.shape[-1]
    pos = torch.arange(s)
    dist = (pos[:, None] - pos[None, :]).abs().float()  # [S,S]
    p = probs.clamp_min(0)
    per_query = {
        "entropy": -(p * p.clamp_min(1e-30).log()).sum(-1),
        "distance": (p * dist).sum(-1),
        "prev": F.pad(p.diagonal(offset=-1, dim1=-2, dim2=-1), (1, 0)),
        "self": p.diagonal(dim1=-2, dim2=-1),
        "next": F.pad(p.diagonal(offset=1, dim1=-2, dim2=-1), (0, 1)),
    }  # each [B,H,S]
    w = mask[:, None, :].float()  # [B,1,S] real queries
    return {k: (v * w).sum(-1) / w.sum(-1) for k, v in per_query.items()}


class Heads(Claim):
    id = "heads"
    uses_run = True
    statement = prose("""
        Multiple heads capture different relations (per-head attention entropy/distance differ).""")
    rule = prose("""
        held if: in every encoder layer of the trained model the per-head means (over sentences)
        of attention entropy or of attention distance span more than 4 standard errors of those
        means, and the spread of head entropies after training is more than twice the spread in
        the same model at initialisation""")

    def measure(self, ctx: Context) -> Measured:
        if ctx.run is not None:
            run_dir, note = ctx.run, f"trained run {ctx.run}"
        else:
            updates = ctx.pick(300, 80)
            run_dir, _ = train_tiny(ctx, updates, 1, d_model=64, n_heads=4, enc_layers=2,
                                    ffn_dim=128)
            note = (f"no --run given: a tiny model (d_model 64, 4 heads, 2 encoder layers) "
                    f"trained {updates} updates on the synthetic corpus")
        translator = load(run_dir, "best", device="cpu")
        model = translator.model
        data = load_split(RunDir(run_dir).data, "valid")
        n = ctx.pick(64, 16)
        sents = [s.tolist() for s in data.src[:n]]
        src = pad_sequences(sents, suffix=EOS)
        mask = src.ne(PAD)
        torch.manual_seed(ctx.seed)
        init = Transformer(model.cfg).eval()
        stats = [head_statistics(p, mask) for p in encoder_attention(model, src)]
        init_stats = [head_statistics(p, mask) for p in encoder_attention(init, src)]
        per_head, layers = {}, {}
        for li, (st, st0) in enumerate(zip(stats, init_stats), 1):
            means = {k: v.mean(0) for k, v in st.items()}  # [H]
            se = {k: v.std(0) / math.sqrt(v.shape[0]) for k, v in st.items()}
            for hi in range(means["entropy"].shape[0]):
                per_head[f"L{li}H{hi + 1}"] = {k: rounded(float(v[hi]), 3)
                                               for k, v in means.items()}
            layers[f"L{li}"] = {
                "entropy_range": rounded(float(means["entropy"].max() - means["entropy"].min())),
                "entropy_se": rounded(float(se["entropy"].max())),
                "distance_range": rounded(float(means["distance"].max() - means["distance"].min())),
                "distance_se": rounded(float(se["distance"].max())),
                "entropy_range_at_init": rounded(float(st0["entropy"].mean(0).max()
                                                  - st0["entropy"].mean(0).min())),
            }
        lengths = mask.sum(1).float()
        # an example sentence of moderate length for the attention maps of the last layer
        pick = int((lengths - 12).abs().argmin())
        length = int(lengths[pick])
        pieces = [translator.vocab.sp.id_to_piece(int(i)) for i in src[pick, :length]]
        last = encoder_attention(model, src[pick : pick + 1, :length])[-1][0]
        numbers = {
            "sentences": n,
            "uniform_entropy_nats": rounded(float(lengths.log().mean())),
            "per_head": per_head,
            "layers": layers,
        }
        series = {
            "per_head_init": {f"L{li}H{hi + 1}": [float(st0["distance"].mean(0)[hi]),
                                                  float(st0["entropy"].mean(0)[hi])]
                              for li, st0 in enumerate(init_stats, 1)
                              for hi in range(st0["entropy"].shape[1])},
            "example_pieces": pieces,
            "example_maps": [[[round(float(v), 3) for v in row] for row in head]
                             for head in last],
        }
        return Measured(numbers, series, f"{note}; encoder self-attention on {n} valid sentences")

    def checks(self, n: dict) -> dict[str, bool]:
        layers = n["layers"].values()
        spread = sum(v["entropy_range"] for v in layers)
        spread_init = sum(v["entropy_range_at_init"] for v in layers)
        return {
            "heads differ in every layer": all(
                v["entropy_range"] > 4 * v["entropy_se"]
                or v["distance_range"] > 4 * v["distance_se"]
                for v in layers),
            "training made heads differ": spread > 2 * spread_init,
        }

    def plot(self, m: Measured, path: Path) -> None:
        plt = pyplot()
        maps = m.series["example_maps"]
        h = len(maps)
        fig = plt.figure(figsize=(5 + 3.2 * h, 4.8))
        grid = fig.add_gridspec(1, h + 2, width_ratios=[1.6] + [1] * h + [0.06])
        ax = fig.add_subplot(grid[0])
        per_head = m.numbers["per_head"]
        layers = sorted({k.split("H")[0] for k in per_head})
        for i, layer in enumerate(layers):
            keys = [k for k in per_head if k.split("H")[0] == layer]
            ax.scatter([per_head[k]["distance"] for k in keys],
                       [per_head[k]["entropy"] for k in keys], s=60, color=f"C{i}",
                       label=f"layer {layer[1:]} (trained)")
            for k in keys:
                ax.annotate(k, (per_head[k]["distance"], per_head[k]["entropy"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        init = m.series["per_head_init"]
        ax.scatter([v[0] for v in init.values()], [v[1] for v in init.values()], marker="x",
                   color="grey", label="same model at initialisation")
        ax.axhline(m.numbers["uniform_entropy_nats"], color="grey", ls=":",
                   label="uniform attention")
        ax.set(xlabel="mean attention distance (tokens)", ylabel="mean attention entropy (nats)",
               title="Encoder self-attention heads")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        pieces = m.series["example_pieces"]
        for hi, head in enumerate(maps):
            ax = fig.add_subplot(grid[hi + 1])
            im = ax.imshow(head, cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(len(pieces)), pieces, rotation=90, fontsize=7)
            ax.set_yticks(range(len(pieces)), pieces, fontsize=7)
            ax.set(title=f"last layer, head {hi + 1}", xlabel="key token", ylabel="query token")
        fig.colorbar(im, cax=fig.add_subplot(grid[-1]), label="attention weight (probability)")
        save(fig, path)
