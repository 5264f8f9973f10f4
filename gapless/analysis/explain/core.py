"""What every claim shares: the context it runs in, what it returns, the ``Claim`` base, and
helpers for timing, FLOP counts, attention scores and tiny training runs.

Shapes: B batch, S/T sequence length, D model dim, H heads, Dh head dim, V vocab.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml

from ... import config as config_mod
from ... import presets
from ...checkpoint import RunDir
from ...config import ModelConfig
from ...layers import Attention
from ...training import train


@dataclass
class Context:
    """What a claim runs with: where to write, a scratch folder, an optional trained run."""

    out: Path  # figures go here
    work: Path  # scratch directory for tiny training runs (deleted afterwards)
    run: Path | None = None  # a trained run for the claims about trained models
    quick: bool = False  # fewer samples, repetitions and updates
    seed: int = 0
    runs: dict = field(default_factory=dict)  # tiny runs already trained (shared by claims)

    def pick(self, full, quick):
        return quick if self.quick else full


@dataclass
class Measured:
    """What ``Claim.measure`` returns."""

    numbers: dict  # printed and checked
    series: dict = field(default_factory=dict)  # curves for the figure (saved in the JSON too)
    note: str = ""  # e.g. where the trained model came from


@dataclass
class Result:
    """One claim's outcome, as written to explain.json."""

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


def prose(text: str) -> str:
    """A claim's statement or rule, written as an indented paragraph, as one line of text."""
    return " ".join(text.split())


# ----------------------------------------------------------------------------------------------
# measurements shared by the claims (public: the tests call them)


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


def time_interleaved(fns: dict[str, Callable], reps: int) -> dict[str, float]:
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


def count_flops(fn: Callable) -> int:
    """Matmul FLOPs of one call, counted by torch (elementwise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def rounded(x: float, digits: int = 4) -> float:
    """Round to ``digits`` significant digits (JSON readability)."""
    return float(f"{x:.{digits}g}") if math.isfinite(x) else x



def all_within(values, tolerance: float) -> bool:
    """All values within ``tolerance`` (relative) of their mean."""
    values = list(values)
    mean = statistics.mean(values)
    return all(abs(v / mean - 1) <= tolerance for v in values)


# ----------------------------------------------------------------------------------------------
# tiny training runs on the generated corpus (claims about training)

# explain's changes to the tiny preset: CPU, fp32, 100 validation sentences
TINY_TRAIN = {"valid_max_sentences": 100, "progress": False, "device": "cpu", "dtype": "fp32"}


def tiny() -> dict:
    """The tiny preset's model, data and train sections with ``TINY_TRAIN`` (its decode
    settings are not used: validation decodes with the defaults)."""
    preset = yaml.safe_load(presets.path("tiny").read_text(encoding="utf-8"))
    return {"model": preset["model"], "data": preset["data"],
            "train": {**preset["train"], **TINY_TRAIN}}


def train_tiny(ctx: Context, updates: int, seed: int = 1, **model) -> tuple[Path, list[dict]]:
    """Train the tiny preset (with ``model`` overrides) for ``updates`` updates in the scratch
    directory; returns the run directory and its validation records. The same settings are
    trained once per ``explain`` call (LN-vs-BN and tying share the default model)."""
    settings = tiny()
    model = {**settings["model"], **model}
    key = json.dumps([updates, seed, asdict(ModelConfig(**model))], sort_keys=True)
    if key not in ctx.runs:
        every = max(updates // 10, 5)
        cfg = config_mod.from_dict({
            "name": "tiny", "model": model, "data": settings["data"],
            "train": {**settings["train"], "max_updates": updates, "valid_every": every,
                      "save_every": updates, "log_every": every, "seed": seed},
        })
        run_dir = ctx.work / f"tiny_{len(ctx.runs)}"
        train(cfg, run_dir)
        ctx.runs[key] = run_dir, [r for r in RunDir(run_dir).read_log() if r["kind"] == "valid"]
    return ctx.runs[key]


def train_seeds(ctx: Context, **model) -> dict[str, list[dict]]:
    """Validation records of tiny runs with ``model`` overrides, one per training seed."""
    updates = ctx.pick(200, 60)
    return {str(seed): train_tiny(ctx, updates, seed, **model)[1]
            for seed in ctx.pick((1, 2), (1,))}


def valid_curve(records: list[dict], key: str = "valid_nll") -> dict[str, list]:
    return {"update": [r["update"] for r in records], key: [r[key] for r in records]}

