"""A/B of gapless's CPU tweaks, each against its baseline in the same run; one JSON.

* ``dropout``: training steps (Criterion + Adam, bf16 autocast, 4,096-token batches, dropout
  0.1, post-norm: the peers' training protocol) alternating gapless's dropout
  (``gapless/dropout.py``) and ``torch.nn.functional.dropout`` step by step in one process, in
  a rotating order; the ratio of each pair, median over pairs.
* ``malloc``: beam-5 bf16 decoding of test2016 through ``gapless.inference.load`` in fresh
  processes alternating ``GAPLESS_MALLOC=1`` (``gapless/runtime.py``) and ``=0``; sentences/s
  per process (median of its passes), ratio per pair.
* ``packing``: beam-5 bf16 decoding of test2016 by two ``gapless.inference.load`` models in one
  process, with prepacked linears (``pack=True``, ``gapless/packing.py``) and without, passes
  alternating in a rotating order; sentences/s per pass, ratio per pair, median.
* ``kernels``: ``row_argmax`` / ``row_topk`` (``gapless/decode.py``) against ``argmax`` /
  ``topk`` on [N, V] logits, ``categorical_sample`` (``gapless/strategies.py``) against
  Gumbel-max sampling and against one [N, V] float32 CDF, and ``PackedLinear`` against
  ``F.linear`` at the decoder's shapes, interleaved.
* ``sampling``: training steps of scheduled sampling's ``sample`` input alternating
  ``categorical_sample`` and its one-block predecessor (the sampling call's time in the steps).
* ``adam``: teacher-forced training steps alternating the trainer's fused Adam and PyTorch's
  default loop over the tensors (the optimizer step's time in the steps).

    python -m benchmarks.cpu_tweaks --run runs/m30k_de_en
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from benchmarks.common import (
    child_json,
    emit,
    finish,
    machine,
    median_ms,
    relpath,
    reply,
    rotated,
    run_config,
    split_lines,
    timed,
    train_step,
    trainee,
    training_batches,
)


def _alternating_steps(install: dict, data, batches, pairs: int,
                       warmup: int) -> dict[str, list[float]]:
    """Training steps (bf16 autocast) alternating variants on the same batches, in an order
    that flips every pair; ``install[name]()`` switches to a variant and returns the
    (criterion, optimizer) to step. -> {name: step seconds after ``warmup`` pairs}."""
    from gapless.data import collate

    times: dict[str, list[float]] = {name: [] for name in install}
    for i in range(warmup + pairs):
        batch = collate(data, batches[i % len(batches)])
        for name in rotated(list(install), i):  # both variants on the same batch
            seconds = train_step(*install[name](), batch, i, "bf16")
            if i >= warmup:
                times[name].append(seconds)
    return times


def _ab_setup(run: str, overrides: dict | None = None):
    """(config, training data, batches, make) for a training-step A/B on the run: ``make()``
    -> a fresh ``Trainee`` (trainer's optimizer at lr 1e-4) from seed 1."""
    cfg = run_config(run, overrides)
    data, batches = training_batches(run, cfg)
    return cfg, data, batches, lambda: trainee(cfg)


def _ab_summary(times: dict[str, list[float]], a: str, b: str, pairs: int) -> dict:
    """Median step times and the median over pairs of the step ratio ``a`` / ``b``."""
    ratios = [x / y for x, y in zip(times[a], times[b])]
    return {"s_per_step_median": {k: round(statistics.median(v), 4) for k, v in times.items()},
            f"step_ratio_{a}_to_{b}_median": round(statistics.median(ratios), 3),
            "pairs": pairs, "per_pair_ratio": [round(r, 3) for r in ratios]}


def dropout_ab(run: str, pairs: int, warmup: int) -> dict:
    import torch.nn.functional as F

    import gapless.dropout as gd

    variants = {"gapless": gd.dropout, "torch": lambda x, p, training=True: F.dropout(x, p, training)}
    _, data, batches, make = _ab_setup(run, {"model.dropout": 0.1, "model.norm_position": "post",
                                             "train.max_tokens": 4096})
    t = make()
    install = {name: (lambda f=f: setattr(gd, "dropout", f) or (t.criterion, t.optimizer))
               for name, f in variants.items()}
    try:
        times = _alternating_steps(install, data, batches, pairs, warmup)
    finally:
        gd.dropout = variants["gapless"]
    return _ab_summary(times, "gapless", "torch", pairs)


def sampling_ab(run: str, pairs: int, warmup: int) -> dict:
    """Training steps of two-pass scheduled sampling with the ``sample`` input (p = 0.5, the
    run's config, bf16 autocast) alternating ``categorical_sample`` (128 rows at a time) and
    the one-block version it replaced, step by step in one process: the step ratio per pair,
    and the sampling call's own time inside the steps."""
    import gapless.strategies as gs

    calls: dict[str, list[float]] = {"blocks": [], "one_block": []}
    variants = {
        "blocks": timed(lambda x, table, cfg: gs.categorical_sample(x, cfg.temperature),
                        calls["blocks"]),
        "one_block": timed(lambda x, table, cfg: _one_block_sample(x / cfg.temperature),
                           calls["one_block"])}
    _, data, batches, make = _ab_setup(run, {
        "strategy.name": "scheduled_sampling", "strategy.predicted": "sample",
        "strategy.schedule": "constant", "strategy.constant_p": 0.5})
    t = make()
    install = {name: (lambda f=f: gs.PREDICTED.__setitem__("sample", f)
                      or (t.criterion, t.optimizer))
               for name, f in variants.items()}
    original = gs.PREDICTED["sample"]
    try:
        times = _alternating_steps(install, data, batches, pairs, warmup)
    finally:
        gs.PREDICTED["sample"] = original
    return {**_ab_summary(times, "blocks", "one_block", pairs),
            "sample_call_ms_median": median_ms(calls, warmup)}


def adam_ab(run: str, pairs: int, warmup: int) -> dict:
    """Teacher-forced training steps (the run's config, bf16 autocast) of two copies of one
    model, one with the trainer's fused Adam (``gapless.training.optim.build_optimizer``), one
    with PyTorch's default (a loop over the tensors on CPU), alternating on the same batches;
    and the optimizer step alone, timed inside those steps."""
    import torch

    cfg, data, batches, make = _ab_setup(run)
    t = cfg.train
    calls: dict[str, list[float]] = {"fused": [], "loop": []}
    fused, loop = make(), make()
    steps = {"fused": (fused.criterion, fused.optimizer),
             "loop": (loop.criterion, torch.optim.Adam(loop.model.parameters(), lr=1e-4,
                                                       betas=tuple(t.betas), eps=t.adam_eps))}
    for name, (_, opt) in steps.items():
        opt.step = timed(opt.step, calls[name])
    install = {name: (lambda pair=pair: pair) for name, pair in steps.items()}
    times = _alternating_steps(install, data, batches, pairs, warmup)
    return {"fused": steps["fused"][1].defaults["fused"],
            **_ab_summary(times, "fused", "loop", pairs),
            "optimizer_step_ms_median": median_ms(calls, warmup)}


def _test2016_ids(run: str, translator) -> list[list[int]]:
    """The run's test2016 sources as SentencePiece ids (the decoding A/Bs' input)."""
    return translator.vocab.encode(split_lines(run, "test2016")[0])


def _timed_pass(translator, ids) -> tuple[float, list[list[int]]]:
    """(sentences/s, hypotheses) of one beam-5 pass over ``ids``."""
    start = time.perf_counter()
    hyps = translator.translate_ids(ids, beam=5)
    return len(ids) / (time.perf_counter() - start), hyps


def decode_child(run: str, passes: int) -> list[float]:
    import torch

    from gapless.inference import load

    torch.set_num_threads(2)
    translator = load(run, "best", "cpu", "bf16")
    ids = _test2016_ids(run, translator)
    translator.translate_ids(ids[:64], beam=5)
    return [_timed_pass(translator, ids)[0] for _ in range(passes)]


def packing_ab(run: str, pairs: int) -> dict:
    import torch

    from gapless.inference import load

    models = {"packed": load(run, "best", "cpu", "bf16", pack=True),
              "plain": load(run, "best", "cpu", "bf16", pack=False)}
    ids = _test2016_ids(run, models["packed"])
    hyps = {k: m.translate_ids(ids[:64], beam=5) for k, m in models.items()}  # warm-up
    speed: dict[str, list[float]] = {k: [] for k in models}
    for i in range(pairs):
        for k in rotated(["packed", "plain"], i):
            sent_s, hyps[k] = _timed_pass(models[k], ids)
            speed[k].append(sent_s)
    ratios = [a / b for a, b in zip(speed["packed"], speed["plain"])]
    return {"sent_s_per_pass": {k: [round(x, 1) for x in v] for k, v in speed.items()},
            "sent_s_median": {k: round(statistics.median(v), 1) for k, v in speed.items()},
            "ratio_packed_to_plain_median": round(statistics.median(ratios), 3),
            "same_hypotheses": hyps["packed"] == hyps["plain"], "pairs": pairs,
            "threads": torch.get_num_threads()}


def malloc_ab(run: str, pairs: int, passes: int) -> dict:
    runs: dict[str, list[float]] = {"1": [], "0": []}
    for i in range(pairs):
        for flag in rotated(["1", "0"], i):
            passes_s = child_json("benchmarks.cpu_tweaks",
                                  ["--run", run, "--decode-child", str(passes)],
                                  env={**os.environ, "GAPLESS_MALLOC": flag})
            runs[flag].append(statistics.median(passes_s))
    ratios = [a / b for a, b in zip(runs["1"], runs["0"])]
    return {"sent_s_per_process": {"tuned": [round(x, 1) for x in runs["1"]],
                                   "untuned": [round(x, 1) for x in runs["0"]]},
            "sent_s_median": {"tuned": round(statistics.median(runs["1"]), 1),
                              "untuned": round(statistics.median(runs["0"]), 1)},
            "ratio_tuned_to_untuned_median": round(statistics.median(ratios), 3),
            "pairs": pairs, "passes_per_process": passes}


def _one_block_sample(logits):
    """The one-block ``categorical_sample`` at tau = 1: one [N,V] float32 CDF for all rows."""
    import torch

    cdf = torch.softmax(logits, -1, dtype=torch.float32).cumsum_(-1)
    total = cdf[..., -1:]
    u = torch.rand(*cdf.shape[:-1], 1) * total
    u = torch.minimum(u, total.nextafter(torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)


def kernels_ab(reps: int) -> dict:
    import torch
    import torch.nn.functional as F

    from gapless.decode import row_argmax, row_topk
    from gapless.packing import PackedLinear, packing_available
    from gapless.strategies import categorical_sample, gumbel_noise

    torch.manual_seed(0)
    cases = {
        "argmax [1000,8000] bf16": ((1000, 8000), torch.bfloat16, row_argmax,
                                    lambda x: x.argmax(-1)),
        "argmax [1000,8000] fp32": ((1000, 8000), torch.float32, row_argmax,
                                    lambda x: x.argmax(-1)),
        "top-10 [320,8000] fp32": ((320, 8000), torch.float32, lambda x: row_topk(x, 10),
                                   lambda x: x.topk(10, dim=1)),
        # the sample / word-oracle input: inverse CDF vs the Gumbel-max it replaced
        "categorical sample [700,8000] fp32": ((700, 8000), torch.float32, categorical_sample,
                                               lambda x: (x + gumbel_noise(x)).argmax(-1)),
        # ... and, on a training step's bf16 first-pass logits, 128 rows at a time vs all rows
        # at once (the previous version)
        "categorical sample [900,8000] bf16, blocks vs one": (
            (900, 8000), torch.bfloat16, categorical_sample, _one_block_sample),
    }
    if packing_available():  # the decoder's linears on a beam step's 320 rows (and 5)
        for rows, d_in, d_out in ((320, 256, 768), (320, 256, 1024), (320, 1024, 256),
                                  (320, 256, 8000), (5, 256, 1024)):
            lin = torch.nn.Linear(d_in, d_out, bias=d_out != 8000).to(torch.bfloat16)
            packed = PackedLinear(lin)
            cases[f"linear [{rows},{d_in}]x[{d_in},{d_out}] bf16"] = (
                (rows, d_in), torch.bfloat16, packed,
                lambda x, lin=lin: F.linear(x, lin.weight, lin.bias))
    out = {}
    for name, (shape, dtype, new, old) in cases.items():
        x = (torch.randn(*shape) * 3).to(dtype)
        times: dict[str, list[float]] = {"gapless": [], "torch": []}
        for i in range(reps + 3):
            for label, f in (("gapless", new), ("torch", old)):
                start = time.perf_counter()
                with torch.no_grad():
                    f(x)
                if i >= 3:
                    times[label].append(time.perf_counter() - start)
        out[name] = {k: round(statistics.median(v) * 1e3, 3) for k, v in times.items()}
        out[name]["unit"] = "ms"
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a prepared, trained run (runs/NAME)")
    p.add_argument("--dropout-pairs", type=int, default=20)
    p.add_argument("--malloc-pairs", type=int, default=3)
    p.add_argument("--passes", type=int, default=3, help="decoding passes per process")
    p.add_argument("--kernel-reps", type=int, default=50)
    p.add_argument("--packing-pairs", type=int, default=6)
    p.add_argument("--sampling-pairs", type=int, default=16)
    p.add_argument("--adam-pairs", type=int, default=16)
    p.add_argument("--only", default="kernels,packing,dropout,sampling,adam,malloc")
    p.add_argument("--decode-child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    run = str(Path(args.run).resolve())  # children run from the repository root
    if args.decode_child:
        reply(decode_child(run, args.decode_child))
        return
    import torch

    torch.set_num_threads(2)
    info = machine(2)
    parts = args.only.split(",")
    result = {}
    if "kernels" in parts:
        result["kernels"] = kernels_ab(args.kernel_reps)
    if "packing" in parts:
        result["packing"] = packing_ab(run, args.packing_pairs)
    if "dropout" in parts:
        result["dropout"] = dropout_ab(run, args.dropout_pairs, 3)
    if "sampling" in parts:
        result["sampling"] = sampling_ab(run, args.sampling_pairs, 3)
    if "adam" in parts:
        result["adam"] = adam_ab(run, args.adam_pairs, 3)
    if "malloc" in parts:
        result["malloc"] = malloc_ab(run, args.malloc_pairs, args.passes)
    emit({"benchmark": "cpu_tweaks", "run": relpath(run), "machine": finish(info), **result})


if __name__ == "__main__":
    main()
