"""``gapless explain``: the notes' Transformer claims (methods.md 7) as experiments.

One ``Claim`` object per claim, in the registry ``CLAIMS``. Each measures numbers (small random
tensors where the claim is arithmetic, a trained run or tiny training runs on the generated
``synthetic`` corpus where it is about training), decides by a stated rule whether the claim
held, and draws one figure. ``explain`` runs a selection and writes ``explain.json``,
``explain.md`` and ``<claim>.png`` into the output directory (default: ``RUN/explain`` with
``--run``, else ``docs/explain``). Everything runs on the CPU.

Shapes: B batch, S/T sequence length, D model dim, H heads, Dh head dim, V vocab.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import config as config_mod
from .checkpoint import RunDir, atomic_write_text
from .config import ConfigError, ModelConfig
from .data import EOS, PAD, ParallelData, pad_sequences
from .model import SCORES, Attention, Transformer, count_parameters, sinusoidal_table

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("docs") / "explain"


def default_out(run: str | Path | None) -> Path:
    """``RUN/explain`` for a run (the run directory is the interface), else ``docs/explain``."""
    return Path(run) / "explain" if run else DEFAULT_OUT


# ----------------------------------------------------------------------------------------------
# what a claim gets and gives


@dataclass
class Context:
    out: Path  # figures go here
    work: Path  # scratch directory for tiny training runs (deleted afterwards)
    run: Path | None = None  # a trained run for the claims about trained models
    quick: bool = False  # fewer samples, repetitions and updates
    seed: int = 0
    runs: dict = field(default_factory=dict)  # tiny runs already trained (shared by claims)
    trainer: Callable | None = None  # gapless.train.train, handed in (a sibling layer)

    def pick(self, full, quick):
        return quick if self.quick else full


@dataclass
class Measured:
    numbers: dict  # printed and checked
    series: dict = field(default_factory=dict)  # curves for the figure (saved in the JSON too)
    note: str = ""  # e.g. where the trained model came from


@dataclass
class Result:
    claim: str
    statement: str
    rule: str
    numbers: dict
    checks: dict[str, bool]
    held: bool
    plot: str
    note: str
    seconds: float  # wall clock
    cpu_seconds: float  # this process (other load on the machine does not count)
    command: str
    series: dict = field(default_factory=dict)


class Claim:
    """One claim of methods.md 7: ``measure`` -> numbers, ``checks`` -> the rule, ``plot``."""

    id: str = ""
    statement: str = ""
    rule: str = ""
    uses_run: bool = False  # measured on ``--run`` when one is given

    def measure(self, ctx: Context) -> Measured:
        raise NotImplementedError

    def checks(self, numbers: dict) -> dict[str, bool]:
        raise NotImplementedError

    def plot(self, m: Measured, path: Path) -> None:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# measurements shared by the claims (public: the tests call them)


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


def attention_scores(attn: Attention, x: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """Self-attention scores scale * q k^T [B,H,T,T] of ``attn`` for x [B,T,D], before masking.
    ``exact``: as elementwise products summed in one fixed order, so that (i,j) and (j,i) are
    the same floating-point sum (BLAS matmul may accumulate them in different orders)."""
    with torch.no_grad():
        q, k, _ = (attn._heads(t) for t in attn.proj.self_qkv(x))
        q, k, scale = attn.score(q, k)
        if exact:
            return (q[..., :, None, :] * k[..., None, :, :]).sum(-1) * scale
        return torch.matmul(q, k.transpose(-1, -2)) * scale


def attention_probs(attn: Attention, x: torch.Tensor, key_mask: torch.Tensor | None = None):
    """softmax of the masked scores [B,H,T,S]; key_mask [B,1,1,S] may attend."""
    scores = attention_scores(attn, x)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, float("-inf"))
    return scores.softmax(-1)


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


def embedding_parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    """Exact parameter counts of the model under the four tying choices."""
    counts = {}
    for name, (enc_dec, output) in TYINGS.items():
        c = ModelConfig(**{**asdict(cfg), "tie_encoder_decoder": enc_dec, "tie_output": output})
        counts[name] = count_parameters(Transformer(c))
    return counts


TYINGS = {"untied": (False, False), "tie_encoder_decoder": (True, False),
          "tie_output": (False, True), "tie_both": (True, True)}


def _time_interleaved(fns: dict[str, Callable], reps: int) -> dict[str, float]:
    """Median CPU seconds of this process per call (the work, not the wall clock: other
    processes on a busy machine do not count); the candidates alternate, so cache and frequency
    changes hit all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for f in fns.values():
            f()  # burn-in
        for _ in range(reps):
            for name, f in fns.items():
                start = time.process_time()
                f()
                times[name].append(time.process_time() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _flops(fn: Callable) -> int:
    """Matmul FLOPs of one call, counted by torch (elementwise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _r(x: float, digits: int = 4) -> float:
    """Round to ``digits`` significant digits (JSON readability)."""
    return float(f"{x:.{digits}g}") if math.isfinite(x) else x


# ----------------------------------------------------------------------------------------------
# tiny training runs on the generated corpus (claims about training)

# configs/tiny.yaml, repeated here so an installed package does not need the repository
TINY = {
    "model": {"d_model": 32, "n_heads": 2, "ffn_dim": 64, "enc_layers": 1, "dec_layers": 1,
              "dropout": 0.0, "max_positions": 128},
    "data": {"corpus": "synthetic", "vocab_size": 120, "max_len": 64},
    "train": {"max_tokens": 512, "lr": 3.0e-3, "warmup": 20, "valid_max_sentences": 100,
              "progress": False, "device": "cpu", "dtype": "fp32"},
}


def train_tiny(ctx: Context, updates: int, seed: int = 1, **model) -> tuple[Path, list[dict]]:
    """Train configs/tiny.yaml (with ``model`` overrides) for ``updates`` updates in the scratch
    directory; returns the run directory and its validation records. The same settings are
    trained once per ``explain`` call (LN-vs-BN and tying share the default model)."""
    if ctx.trainer is None:
        raise ValueError("this claim trains tiny models: pass trainer=gapless.train.train")
    model = {**TINY["model"], **model}
    key = json.dumps([updates, seed, asdict(ModelConfig(**model))], sort_keys=True)
    if key not in ctx.runs:
        every = max(updates // 10, 5)
        cfg = config_mod.from_dict({
            "name": "tiny", "model": model, "data": TINY["data"],
            "train": {**TINY["train"], "max_updates": updates, "valid_every": every,
                      "save_every": updates, "log_every": every, "seed": seed},
        })
        run_dir = ctx.work / f"tiny_{len(ctx.runs)}"
        ctx.trainer(cfg, run_dir)
        ctx.runs[key] = run_dir, [r for r in RunDir(run_dir).read_log() if r["kind"] == "valid"]
    return ctx.runs[key]


def train_seeds(ctx: Context, **model) -> dict[str, list[dict]]:
    """Validation records of tiny runs with ``model`` overrides, one per training seed."""
    updates = ctx.pick(200, 60)
    return {str(seed): train_tiny(ctx, updates, seed, **model)[1]
            for seed in ctx.pick((1, 2), (1,))}


def _curve(records: list[dict], key: str = "valid_nll") -> dict[str, list]:
    return {"update": [r["update"] for r in records], key: [r[key] for r in records]}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log2_ticks(ax, values: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(values, [str(v) for v in values])
    ax.minorticks_off()


def _flat(values, tolerance: float) -> bool:
    """All values within ``tolerance`` (relative) of their mean."""
    values = list(values)
    mean = statistics.mean(values)
    return all(abs(v / mean - 1) <= tolerance for v in values)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


# ----------------------------------------------------------------------------------------------
# 7.1 scaling by 1/sqrt(d_k); LayerNorm on q and k as the alternative


class Scaling(Claim):
    id = "scaling"
    statement = ("Unscaled q·k has variance d_k for unit-variance q, k; softmax saturates and its "
                 "gradient vanishes; 1/sqrt(d_k) keeps variance 1. LayerNorm on q and k also "
                 "works, at extra cost.")
    rule = ("held if: unscaled variance / d_k is within 0.85-1.15 at every d_k (least-squares "
            "slope 0.9-1.1); scaled variance within 0.85-1.15; qk_norm variance within 0.7-1.4; "
            "at the largest d_k the unscaled softmax puts > 0.9 on its top key and its Jacobian "
            "norm falls towards 0 like d_k^-1/2 (log-log slope over the three largest d_k at most "
            "-0.4) while the scaled one stays within 10% of its mean; an attention forward with "
            "qk_norm takes more CPU time than with 1/sqrt(d_k) (median of interleaved "
            "repetitions)")
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
        secs = _time_interleaved({s: (lambda a=a: a(x)) for s, a in layers.items()},
                                 ctx.pick(60, 15))
        extra_params = count_parameters(layers["qk_norm"]) - count_parameters(layers["sqrt"])
        # LayerNorm ~ 8 flops per element (mean, centre, square, sum, rsqrt, scale, gain, bias)
        ln_flops = 2 * 8 * b * t * d
        matmul_flops = _flops(lambda: layers["sqrt"](x))

        # how the gradient factor decays at large d_k: slope of log(norm) over log(d_k)
        jac_slope = float(np.polyfit(np.log(self.D_KS[-3:]),
                                     np.log(series["jacobian_norm_none"][-3:]), 1)[0])

        def per_dk(key: str) -> dict[str, float]:
            return {str(dk): _r(v) for dk, v in zip(self.D_KS, series[key])}

        numbers = {
            "variance_unscaled_over_dk": {str(dk): _r(v / dk) for dk, v in
                                          zip(self.D_KS, var_none)},
            "variance_unscaled_slope": _r(slope),
            "variance_scaled": per_dk("variance_sqrt"),
            "variance_qk_norm": per_dk("variance_qk_norm"),
            "max_prob_unscaled": per_dk("max_prob_none"),
            "max_prob_scaled": per_dk("max_prob_sqrt"),
            "jacobian_norm_unscaled": per_dk("jacobian_norm_none"),
            "jacobian_norm_scaled": per_dk("jacobian_norm_sqrt"),
            "jacobian_norm_qk_norm": per_dk("jacobian_norm_qk_norm"),
            "jacobian_norm_unscaled_loglog_slope": _r(jac_slope),
            "jacobian_norm_uniform": _r(math.sqrt(1 / 32 - 1 / 32**2)),
            "largest_d_k": max(self.D_KS),
            "forward_cpu_ms_sqrt": _r(secs["sqrt"] * 1e3),
            "forward_cpu_ms_qk_norm": _r(secs["qk_norm"] * 1e3),
            "qk_norm_time_ratio": _r(secs["qk_norm"] / secs["sqrt"]),
            "qk_norm_extra_params_per_layer": extra_params,
            "qk_norm_extra_flops_fraction_approx": _r(ln_flops / matmul_flops),
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
                and _flat(n["jacobian_norm_scaled"].values(), 0.1),
            "qk_norm costs extra time": n["qk_norm_time_ratio"] > 1.0,
        }

    def plot(self, m: Measured, path: Path) -> None:
        plt = _pyplot()
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
            _log2_ticks(ax, s["d_k"])
        for ax in axes:
            ax.legend()
            ax.grid(alpha=0.3)
        _save(fig, path)


# ----------------------------------------------------------------------------------------------
# 7.2 LayerNorm vs BatchNorm on padded, variable-length batches


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
    statement = "LayerNorm beats BatchNorm for variable-length, padded text batches."
    rule = ("held if: in training mode a sentence's encoder output changes by < 1e-4 (relative) "
            "with LayerNorm but by > 1e-2 with BatchNorm when other sentences join its batch; "
            "BatchNorm whose statistics include the padding also changes (> 1e-2) when only "
            "padding columns are added; and the LayerNorm model reaches a lower validation NLL "
            "than the BatchNorm model after the same number of updates")
    NORMS = ("layer", "batch")

    def measure(self, ctx: Context) -> Measured:
        from .evaluate import load

        curves = {norm: train_seeds(ctx, norm=norm) for norm in self.NORMS}
        updates = ctx.pick(200, 60)
        runs = {norm: train_tiny(ctx, updates, 1, norm=norm)[0] for norm in self.NORMS}
        data = ParallelData.load(RunDir(runs["layer"]).data / "valid.safetensors")
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
            numbers[f"train_eval_change_{norm}"] = _r(_rel_change(eval_out[real], train_out[real]))
            alone = sentence_output(model, target, [])
            series[f"companions_{norm}"] = [
                _rel_change(alone, sentence_output(model, target, pool[:c])) for c in companions]
            numbers[f"batch_change_{norm}"] = _r(max(series[f"companions_{norm}"]))
            for mask_norm, tag in ((True, "masked"), (False, "unmasked")):
                same = sentence_output(model, target, pool[:3], 0, mask_norm)
                series[f"pads_{norm}_{tag}"] = [_rel_change(
                    same, sentence_output(model, target, pool[:3], p, mask_norm)) for p in pads]
                numbers[f"pad_change_{norm}_{tag}"] = _r(max(series[f"pads_{norm}_{tag}"]))
        for norm, by_seed in curves.items():
            series[f"valid_{norm}"] = {seed: _curve(r) for seed, r in by_seed.items()}
            numbers[f"final_valid_nll_{norm}"] = {seed: r[-1]["valid_nll"]
                                                  for seed, r in by_seed.items()}
            numbers[f"final_valid_bleu_{norm}"] = {seed: r[-1]["valid_bleu"]
                                                   for seed, r in by_seed.items()}
        numbers["updates"] = updates
        return Measured(numbers, series, f"tiny models (configs/tiny.yaml: post-norm, d_model "
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
        plt = _pyplot()
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
        _log2_ticks(axes[0], s["companions"])
        axes[1].set(yscale="log", xlabel="padding columns added to a batch of 4 (tokens)",
                    ylabel=ylabel, title="Same batch, more padding")
        axes[2].set(xlabel="update", ylabel="validation NLL (nats/token)",
                    title="Tiny models on the synthetic corpus")
        for ax in axes:
            ax.legend()
            ax.grid(alpha=0.3)
        _save(fig, path)


# ----------------------------------------------------------------------------------------------
# 7.3 heads capture different relations


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
    statement = ("Multiple heads capture different relations (per-head attention "
                 "entropy/distance differ).")
    rule = ("held if: in every encoder layer of the trained model the per-head means (over "
            "sentences) of attention entropy or of attention distance span more than 4 standard "
            "errors of those means, and the spread of head entropies after training is more "
            "than twice the spread in the same model at initialisation")

    def measure(self, ctx: Context) -> Measured:
        from .evaluate import load

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
        data = ParallelData.load(RunDir(run_dir).data / "valid.safetensors")
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
                per_head[f"L{li}H{hi + 1}"] = {k: _r(float(v[hi]), 3) for k, v in means.items()}
            layers[f"L{li}"] = {
                "entropy_range": _r(float(means["entropy"].max() - means["entropy"].min())),
                "entropy_se": _r(float(se["entropy"].max())),
                "distance_range": _r(float(means["distance"].max() - means["distance"].min())),
                "distance_se": _r(float(se["distance"].max())),
                "entropy_range_at_init": _r(float(st0["entropy"].mean(0).max()
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
            "uniform_entropy_nats": _r(float(lengths.log().mean())),
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
        plt = _pyplot()
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
        _save(fig, path)


# ----------------------------------------------------------------------------------------------
# 7.4 per-head dimension reduction: h heads of d_model/h cost one full head


class HeadSize(Claim):
    id = "head_size"
    statement = ("Reducing each head to d_model/h keeps cost equal to one full head while adding "
                 "subspaces.")
    rule = ("held if: h heads of d_model/h have exactly the parameters and matmul FLOPs of one "
            "head of d_model, and their measured CPU time is within 1.5x of it, while giving h "
            "attention distributions per token instead of 1; full-size heads (head_dim = "
            "d_model) cost h x the parameters and FLOPs (within 10%) and more than h/2 x the "
            "CPU time")

    def measure(self, ctx: Context) -> Measured:
        d, h, b, t = 256, 8, 8, 32
        variants = {"h_reduced_heads": {"n_heads": h}, "one_full_head": {"n_heads": 1},
                    "h_full_heads": {"n_heads": h, "head_dim": d}}
        torch.manual_seed(ctx.seed)
        layers = {k: Attention(ModelConfig(d_model=d, **kw), cross=False).eval()
                  for k, kw in variants.items()}
        x = torch.randn(b, t, d, generator=torch.Generator().manual_seed(ctx.seed))
        calls = {k: (lambda a=a: a(x)) for k, a in layers.items()}
        secs = _time_interleaved(calls, ctx.pick(30, 8))
        params = {k: count_parameters(a) for k, a in layers.items()}
        flops = {k: _flops(f) for k, f in calls.items()}
        base = "one_full_head"
        numbers = {
            "d_model": d, "heads": h, "batch_tokens": b * t,
            "params": params, "matmul_flops": flops,
            "forward_cpu_ms": {k: _r(v * 1e3) for k, v in secs.items()},
            "param_ratio": {k: _r(v / params[base]) for k, v in params.items()},
            "flop_ratio": {k: _r(v / flops[base]) for k, v in flops.items()},
            "time_ratio": {k: _r(v / secs[base]) for k, v in secs.items()},
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
        plt = _pyplot()
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
        _save(fig, path)


# ----------------------------------------------------------------------------------------------
# 7.5 W_q = W_k gives symmetric scores


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
    statement = "W_q = W_k gives symmetric score matrices (less expressive)."
    rule = ("held if: with W_q = W_k the score matrix equals its transpose exactly (elementwise "
            "product sums; BLAS matmul within 1e-5 of it), with separate W_q, W_k it does not "
            "(relative asymmetry ||S - S^T|| / ||S|| > 0.1), and a head with W_q = W_k learns a "
            "directed relation (attend to the previous token, with token content as noise on "
            "the positions) worse than separate projections")
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
            numbers[f"max_asymmetry_matmul_{proj}"] = _r(float(
                (fast - fast.transpose(-1, -2)).abs().max()))
            numbers[f"relative_asymmetry_{proj}"] = _r(float(
                (exact - exact.transpose(-1, -2)).norm() / exact.norm()))
            numbers[f"previous_token_prob_{proj}"] = _r(
                previous_token_fit(proj, 0.2, steps=ctx.pick(600, 200), seed=ctx.seed), 3)
            numbers[f"previous_token_prob_{proj}_positions_only"] = _r(
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
        plt = _pyplot()
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
        _save(fig, path)


# ----------------------------------------------------------------------------------------------
# 7.6 sharing embeddings


class Tying(Claim):
    id = "tying"
    uses_run = True
    statement = ("Sharing embeddings (encoder/decoder, and with the output layer) cuts parameters "
                 "and speeds convergence.")
    rule = ("held if: tying the encoder/decoder tables and the output layer removes exactly "
            "V x D parameters each (2 V x D together) and, after the same number of updates on "
            "the synthetic corpus, the fully tied tiny model has the lower validation NLL for "
            "every training seed")

    def measure(self, ctx: Context) -> Measured:
        if ctx.run is not None:
            cfg = config_mod.load(RunDir(ctx.run).config).model
            where = f"the architecture of {ctx.run}"
        else:
            cfg = ModelConfig(d_model=256, n_heads=4, ffn_dim=1024, enc_layers=3, dec_layers=3,
                              vocab_size=8000)
            where = "the peer model size (configs/multi30k_de_en.yaml, V=8000)"
        counts = embedding_parameter_counts(cfg)
        runs = {name: train_seeds(ctx, tie_encoder_decoder=TYINGS[name][0],
                                  tie_output=TYINGS[name][1]) for name in ("tie_both", "untied")}
        numbers = {
            "vocab": cfg.vocab_size, "d_model": cfg.d_model, "params": counts,
            "params_saved": {k: counts["untied"] - v for k, v in counts.items()},
            "updates": ctx.pick(200, 60),
            "final_valid_nll": {f"{k} seed {seed}": r[-1]["valid_nll"]
                                for k, by_seed in runs.items() for seed, r in by_seed.items()},
            "mean_valid_nll_over_curve": {
                f"{k} seed {seed}": _r(statistics.mean(x["valid_nll"] for x in r))
                for k, by_seed in runs.items() for seed, r in by_seed.items()},
        }
        curves = {f"{k} seed {seed}": _curve(r) for k, by_seed in runs.items()
                  for seed, r in by_seed.items()}
        return Measured(numbers, {"valid": curves}, f"parameter counts for {where}; training: "
                        f"tiny models (configs/tiny.yaml, V={TINY['data']['vocab_size']}, "
                        f"d_model 32), {numbers['updates']} updates on the synthetic corpus, "
                        f"training seeds {', '.join(runs['untied'])}")

    def checks(self, n: dict) -> dict[str, bool]:
        vd, saved = n["vocab"] * n["d_model"], n["params_saved"]
        return {
            "tying removes exactly V x D per shared table":
                saved["tie_encoder_decoder"] == vd and saved["tie_output"] == vd
                and saved["tie_both"] == 2 * vd,
            "tied model converges faster (every seed)": all(
                nll < n["final_valid_nll"][key.replace("tie_both", "untied")]
                for key, nll in n["final_valid_nll"].items() if key.startswith("tie_both")),
        }

    def plot(self, m: Measured, path: Path) -> None:
        plt = _pyplot()
        n = m.numbers
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        names = list(n["params"])
        axes[0].bar(names, [n["params"][k] / 1e6 for k in names], color="C0",
                    label=f"V={n['vocab']}, D={n['d_model']}")
        axes[0].set(ylabel="parameters (millions)", title="Parameters by tying choice")
        axes[0].tick_params(axis="x", labelrotation=15)
        for name, curve in m.series["valid"].items():
            axes[1].plot(curve["update"], curve["valid_nll"], marker="o", label=name,
                         color="C0" if name.startswith("tie_both") else "C3",
                         ls="--" if name.endswith("2") else "-")
        axes[1].set(xlabel="update", ylabel="validation NLL (nats/token)",
                    title="Tiny models on the synthetic corpus")
        for ax in axes:
            ax.legend()
            ax.grid(alpha=0.3)
        _save(fig, path)


# ----------------------------------------------------------------------------------------------
# 7.7 no Q/K/V projections: a token attends to itself


class NoProjection(Claim):
    id = "no_projection"
    statement = ("Without Q/K/V projections a token's score with itself dominates (for equal "
                 "norms, q_i·k_i is the largest), so attention mostly copies the token itself.")
    rule = ("held if: for equal-norm tokens without projections every row's largest score is "
            "its own (fraction 1.0, Cauchy-Schwarz), the mean weight on itself exceeds 0.5 at "
            "d_k = 64 (the paper's head size), and with separate projections fewer than half the "
            "rows pick themselves")
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
        numbers = {f"{key}_{proj}": {str(d): _r(v, 3) for d, v in
                                     zip(self.D, series[f"{key}_{proj}"])}
                   for key in ("diag_argmax_fraction", "mean_diag_weight") for proj in self.PROJ}
        numbers["chance"] = _r(1 / t, 3)
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
        plt = _pyplot()
        s = m.series
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for proj in self.PROJ:
            axes[0].plot(s["d_k"], s[f"diag_argmax_fraction_{proj}"], "o-", label=proj)
            axes[1].plot(s["d_k"], s[f"mean_diag_weight_{proj}"], "o-", label=proj)
        for ax in axes:
            ax.axhline(m.numbers["chance"], color="grey", ls=":", label="chance (1/T)")
            ax.set(xlabel="d_k = d_model (dimensions, one head)", ylim=(0, 1.05))
            _log2_ticks(ax, s["d_k"])
            ax.legend(title="projections")
            ax.grid(alpha=0.3)
        axes[0].set(ylabel="rows whose argmax is the token itself (fraction)",
                    title="Does a token attend most to itself?")
        axes[1].set(ylabel="mean attention weight on itself (probability)",
                    title="How much of the output is the token itself?")
        _save(fig, path)


CLAIMS: dict[str, Claim] = {c.id: c for c in (Scaling(), LayerVsBatchNorm(), Heads(), HeadSize(),
                                               SharedQK(), Tying(), NoProjection())}


# ----------------------------------------------------------------------------------------------
# running and reporting


def run_claim(claim: Claim, ctx: Context, command: str = "") -> Result:
    start, cpu_start = time.perf_counter(), time.process_time()
    m = claim.measure(ctx)
    checks = claim.checks(m.numbers)
    path = ctx.out / f"{claim.id}.png"
    claim.plot(m, path)
    return Result(claim.id, claim.statement, claim.rule, m.numbers, checks, all(checks.values()),
                  path.name, m.note, round(time.perf_counter() - start, 1),
                  round(time.process_time() - cpu_start, 1), command, m.series)


def _command(claim: Claim, run, out: Path, quick: bool) -> str:
    parts = ["gapless explain", claim.id]
    if run and claim.uses_run:
        parts.append(f"--run {run}")
    if out.resolve().is_relative_to(Path.cwd()):  # a folder of the repository: say it so
        out = out.resolve().relative_to(Path.cwd())
    parts.append(f"--out {out}")
    if quick:
        parts.append("--quick")
    return " ".join(parts)


def _fmt(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_result(r: Result) -> str:
    """Console text of one result: numbers, checks, verdict."""
    lines = [f"[{r.claim}] {r.statement}", f"  setup: {r.note}"]
    for key, value in r.numbers.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            lines.append(f"  {key}:")
            lines += [f"    {k}: {_fmt(v)}" for k, v in value.items()]
        else:
            lines.append(f"  {key}: {_fmt(value)}")
    lines += [f"  [{'x' if ok else ' '}] {name}" for name, ok in r.checks.items()]
    verdict = "HELD" if r.held else "NOT HELD"
    lines.append(f"  verdict: {verdict}   plot: {r.plot}   ({r.seconds} s, "
                 f"{r.cpu_seconds} CPU s)")
    return "\n".join(lines)


def _markdown(results: dict[str, dict]) -> str:
    intro = ("Generated by `gapless explain` (gapless/explain.py) from methods.md section 7. "
             "Each claim: the numbers measured, the rule that turns them into a verdict, the "
             "figure, and the command that regenerates it. Seconds: wall clock and CPU time "
             "of this process on the machine that ran it (the wall clock includes waiting for "
             "other work on a busy machine).")
    lines = ["# The notes' Transformer claims, measured", "", intro, "",
             "| # | claim | verdict | seconds (wall / CPU) |", "|---|---|---|---|"]
    order = [k for k in CLAIMS if k in results]
    for i, key in enumerate(order, 1):
        r = results[key]
        lines.append(f"| {i} | [{key}](#{key.replace('_', '-')}) | "
                     f"{'held' if r['held'] else '**not held**'} | "
                     f"{r['seconds']} / {r.get('cpu_seconds', '-')} |")
    for key in order:
        r = results[key]
        lines += ["", f"## {key}", "", f"> {r['statement']}", "",
                  f"**Verdict: {'held' if r['held'] else 'not held'}.** Rule: {r['rule']}.", "",
                  f"Setup: {r['note']}.", ""]
        lines += [f"- {'✔' if ok else '✘'} {name}" for name, ok in r["checks"].items()]
        lines += ["", "| number | value |", "|---|---|"]
        for k, v in r["numbers"].items():
            if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
                lines += [f"| {k} {sub} | {_fmt(x)} |" for sub, x in v.items()]
            else:
                lines.append(f"| {k} | {_fmt(v)} |")
        regenerate = (f"Regenerate: `{r['command']}` ({r['seconds']} s wall, "
                      f"{r.get('cpu_seconds', '-')} s CPU, {r['date']})")
        lines += ["", f"![{key}]({r['plot']})", "", regenerate]
    return "\n".join(lines) + "\n"


def explain(
    names: list[str] | None = None,
    run: str | Path | None = None,
    out: str | Path | None = None,
    quick: bool = False,
    echo: Callable[[str], None] | None = None,
    seed: int = 0,
    trainer: Callable | None = None,
) -> list[Result]:
    """Run the claims ``names`` (default: all, in methods.md order); write ``<claim>.png``,
    ``explain.json`` and ``explain.md`` into ``out`` (default: ``default_out(run)``). Results of
    claims run earlier into the same directory are kept in the JSON and the summary.
    ``trainer``: ``gapless.train.train(cfg, run_dir)``, for the claims that train tiny models
    (train is explain's sibling in the layering, so the caller hands it in)."""
    names = list(names) if names else list(CLAIMS)
    unknown = [n for n in names if n not in CLAIMS]
    if unknown:
        raise ConfigError(f"unknown claim(s) {', '.join(unknown)} (known: {', '.join(CLAIMS)})")
    if run is not None and not RunDir(run).config.is_file():
        raise FileNotFoundError(f"{run}: not a run directory (no config.yaml)")
    out = Path(out) if out else default_out(run)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "explain.json"
    saved = json.loads(json_path.read_text()) if json_path.is_file() else {}
    results = []
    work = Path(tempfile.mkdtemp(prefix="gapless-explain-"))
    try:
        ctx = Context(out, work, Path(run) if run else None, quick, seed, trainer=trainer)
        for name in names:
            log.info("explain: %s", name)
            result = run_claim(CLAIMS[name], ctx, _command(CLAIMS[name], run, out, quick))
            results.append(result)
            saved[name] = {**asdict(result), "date": datetime.date.today().isoformat()}
            atomic_write_text(json_path, json.dumps(saved, indent=1))
            atomic_write_text(out / "explain.md", _markdown(saved))
            if echo is not None:
                echo(format_result(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results
