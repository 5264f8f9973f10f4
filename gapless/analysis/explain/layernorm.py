"""Claim 7.2: LayerNorm beats BatchNorm on padded, variable-length text batches."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...checkpoint import RunDir
from ...data import EOS, PAD, load_split, pad_sequences
from ...inference import load
from ...model import Transformer
from ..figures import finish, log2_ticks, pyplot, save
from .core import Claim, Context, Measured, prose, rounded, train_seeds, train_tiny, valid_curve


def _eval_dropout(model: nn.Module) -> None:
    """Training mode (BatchNorm on batch statistics) without dropout noise."""
    model.train()
    for mod in model.modules():
        if isinstance(mod, nn.Dropout):
            mod.eval()


def encoder_output(model: Transformer, src: torch.Tensor, mask_norm: bool = True):
    """Encoder output [B,S,D] for src [B,S]. ``mask_norm=False`` hands the norms no mask, so a
    BatchNorm takes its statistics over the padding too (plain BatchNorm on padded batches)."""
    with torch.no_grad():
        if mask_norm:
            return model.encode(src)[0]
        src_mask = src.ne(model.pad_id)
        x = model.src_embed(src) * model.embed_scale + model.src_pos(0, src.shape[1])
        for layer in model.encoder:
            x = layer(x, src_mask[:, None, None, :], None)
        return x if model.enc_norm is None else model.enc_norm(x, None)


def _rel_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().mean().clamp_min(1e-12))


def sentence_output(model: Transformer, sentence: list[int], others: list[list[int]],
                    pad_columns: int = 0, mask_norm: bool = True) -> torch.Tensor:
    """Training-mode (no dropout) encoder output [n,D] of ``sentence`` (+ EOS) encoded in one
    batch with ``others`` and ``pad_columns`` extra padding columns."""
    _eval_dropout(model)
    batch = F.pad(pad_sequences([sentence, *others], suffix=EOS), (0, pad_columns), value=PAD)
    return encoder_output(model, batch, mask_norm)[0, : len(sentence) + 1]


class LayerVsBatchNorm(Claim):
    id = "layernorm"
    statement = prose("""
        LayerNorm beats BatchNorm for variable-length, padded text batches.""")
    rule = prose("""
        held if: in training mode a sentence's encoder output changes by < 1e-4 (relative) with
        LayerNorm but by > 1e-2 with BatchNorm when other sentences join its batch; BatchNorm
        whose statistics include the padding also changes (> 1e-2) when only padding columns are
        added; and the LayerNorm model reaches a lower validation NLL than the BatchNorm model
        after the same number of updates""")
    NORMS = ("layer", "batch")

    def measure(self, ctx: Context) -> Measured:
        curves = {norm: train_seeds(ctx, norm=norm) for norm in self.NORMS}
        updates = ctx.pick(200, 60)
        runs = {norm: train_tiny(ctx, updates, 1, norm=norm)[0] for norm in self.NORMS}
        data = load_split(RunDir(runs["layer"]).data, "valid")
        sentences = [s.tolist() for s in data.src[:40]]
        target, pool = sentences[0], sentences[1:]
        companions = (1, 3, 7, 15, 31)
        pads = (4, 8, 16, 32)
        series: dict = {"companions": list(companions), "pad_columns": list(pads)}
        numbers: dict = {}
        for norm, run_dir in runs.items():
            model = load(run_dir, "last", device="cpu").model
            # BatchNorm trains on batch statistics but decodes on running averages (measured
            # first: a training-mode pass moves the running averages)
            batch = pad_sequences(sentences[:16], suffix=EOS)
            real = batch.ne(PAD)
            model.eval()
            eval_out = encoder_output(model, batch)
            _eval_dropout(model)
            train_out = encoder_output(model, batch)
            numbers[f"train_eval_change_{norm}"] = rounded(_rel_change(eval_out[real],
                                                                        train_out[real]))
            alone = sentence_output(model, target, [])
            series[f"companions_{norm}"] = [
                _rel_change(alone, sentence_output(model, target, pool[:c])) for c in companions]
            numbers[f"batch_change_{norm}"] = rounded(max(series[f"companions_{norm}"]))
            for mask_norm, tag in ((True, "masked"), (False, "unmasked")):
                same = sentence_output(model, target, pool[:3], 0, mask_norm)
                series[f"pads_{norm}_{tag}"] = [_rel_change(
                    same, sentence_output(model, target, pool[:3], p, mask_norm)) for p in pads]
                numbers[f"pad_change_{norm}_{tag}"] = rounded(max(series[f"pads_{norm}_{tag}"]))
        for norm, by_seed in curves.items():
            series[f"valid_{norm}"] = {seed: valid_curve(r) for seed, r in by_seed.items()}
            numbers[f"final_valid_nll_{norm}"] = {seed: r[-1]["valid_nll"]
                                                  for seed, r in by_seed.items()}
            numbers[f"final_valid_bleu_{norm}"] = {seed: r[-1]["valid_bleu"]
                                                   for seed, r in by_seed.items()}
        numbers["updates"] = updates
        return Measured(numbers, series, f"tiny models (preset tiny: post-norm, d_model "
                        f"32) trained {updates} updates on the synthetic corpus with "
                        f"length-bucketed batches, training seeds {', '.join(curves['layer'])}; "
                        "batch and padding dependence measured on the seed-1 encoders with "
                        "valid sentences")

    def checks(self, n: dict) -> dict[str, bool]:
        return {
            "LayerNorm output independent of the batch": n["batch_change_layer"] < 1e-4,
            "BatchNorm output depends on the other sentences": n["batch_change_batch"] > 1e-2,
            "BatchNorm over padding depends on the padding": n["pad_change_batch_unmasked"] > 1e-2,
            "LayerNorm model has the lower valid NLL (every seed)": all(
                n["final_valid_nll_layer"][seed] < n["final_valid_nll_batch"][seed]
                for seed in n["final_valid_nll_layer"]),
        }

    def plot(self, m: Measured, path: Path) -> None:
        plt = pyplot()
        s = m.series
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        floor = 1e-9  # exact zeros on a log axis
        ylabel = "max change of its output (relative; 0 drawn at 1e-9)"
        for i, (norm, label) in enumerate((("layer", "LayerNorm"),
                                           ("batch", "BatchNorm (real tokens only)"))):
            axes[0].plot(s["companions"], [max(v, floor) for v in s[f"companions_{norm}"]],
                         marker="o", color=f"C{i}", label=label)
            for j, (seed, curve) in enumerate(s[f"valid_{norm}"].items()):
                axes[2].plot(curve["update"], curve["valid_nll"], marker="o", color=f"C{i}",
                             ls=["-", "--"][j % 2], label=f"{label}, seed {seed}")
        for key, label, style in (("pads_layer_masked", "LayerNorm", "s-"),
                                  ("pads_batch_masked", "BatchNorm (real tokens only)", "o--"),
                                  ("pads_batch_unmasked", "BatchNorm incl. padding", "o-")):
            axes[1].plot(s["pad_columns"], [max(v, floor) for v in s[key]], style, label=label,
                         markersize=9 if style[0] == "s" else 6)
        axes[0].set(yscale="log", xlabel="other sentences in the batch (count)", ylabel=ylabel,
                    title="One sentence's encoder output vs its batch")
        log2_ticks(axes[0], s["companions"])
        axes[1].set(yscale="log", xlabel="padding columns added to a batch of 4 (tokens)",
                    ylabel=ylabel, title="Same batch, more padding")
        axes[2].set(xlabel="update", ylabel="validation NLL (nats/token)",
                    title="Tiny models on the synthetic corpus")
        for ax in axes:
            finish(ax)
        save(fig, path)
