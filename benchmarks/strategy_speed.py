"""Training-step time and peak memory per strategy, as ratios to a teacher-forcing step.

The real step (gapless.train.LossModule + Adam + autocast) on the same Multi30k batches for
every strategy, each strategy in a fresh process (its own peak RSS). Prints one JSON document.

The batches cycle through ``--cycle`` distinct batches (an "epoch" of that many updates) so the
cached sentence oracle (``oracle_refresh``) meets its sentences again: refreshed every
``4 x cycle`` updates, a quarter of the measured steps search (amortised cost: the *mean* step
time, since the steps differ by design; the other ratios use medians).

    .venv/bin/python benchmarks/strategy_speed.py --run runs/NAME   # a prepared run directory
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

STRATEGIES = {
    "teacher_forcing": {},
    "scheduled_sampling_argmax": {"strategy.name": "scheduled_sampling",
                                  "strategy.predicted": "argmax"},
    "scheduled_sampling_sample": {"strategy.name": "scheduled_sampling",
                                  "strategy.predicted": "sample"},
    "scheduled_sampling_soft": {"strategy.name": "scheduled_sampling",
                                "strategy.predicted": "soft"},
    "word_oracle": {"strategy.name": "word_oracle"},
    "sentence_oracle_beam4": {"strategy.name": "sentence_oracle", "strategy.oracle_beam": 4},
    "sentence_oracle_beam4_cached": {"strategy.name": "sentence_oracle",
                                     "strategy.oracle_beam": 4, "strategy.oracle_refresh": -1},
}
# every strategy mixes (p < 1), so the first pass / oracle search always runs
MIXING = {"strategy.schedule": "constant", "strategy.k": 0.5}


def worker(run: str, overrides: dict, steps: int, warmup: int, dtype: str, cycle: int) -> dict:
    import torch

    from gapless import config as config_mod
    from gapless.data import collate, token_batches
    from gapless.evaluate import autocast, build_model
    from gapless.prepare import prepare
    from gapless.schedules import Progress
    from gapless.strategies import build_strategy
    from gapless.train import LossModule

    cfg = config_mod.load(f"{run}/config.yaml", overrides)
    prep = prepare(cfg, run)
    torch.manual_seed(1)
    model = build_model(cfg).train()
    loss_module = LossModule(model, build_strategy(cfg.strategy), cfg.train.label_smoothing)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    data = prep.train
    batches = token_batches(data.src_lens, data.tgt_lens, cfg.train.max_tokens, 1, 1)[:cycle]
    device = torch.device("cpu")
    times = []
    for i in range(warmup + steps):
        batch = collate(data, batches[i % cycle])
        start = time.perf_counter()
        with autocast(device, dtype):
            loss, _ = loss_module(batch, Progress(i, 10))
        (loss / batch.n_tokens).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {"s_per_step_median": statistics.median(times),
            "s_per_step_mean": statistics.fmean(times), "s_per_step": times,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "stats": {k: v for k, v in loss_module.strategy.stats().items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run", required=True, help="a prepared run directory (config.yaml, data/)")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--cycle", type=int, default=4, help="distinct batches, cycled")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.run, json.loads(args.worker), args.steps, args.warmup,
                                args.dtype, args.cycle)))
        return
    results = {}
    for name, over in STRATEGIES.items():
        overrides = {**over, **(MIXING if over else {})}
        if overrides.get("strategy.oracle_refresh") == -1:  # search every 4th visit
            overrides["strategy.oracle_refresh"] = 4 * args.cycle
        print(f"[strategy_speed] {name} ...", file=sys.stderr)
        out = subprocess.run(
            [sys.executable, __file__, "--run", args.run, "--steps", str(args.steps),
             "--warmup", str(args.warmup), "--dtype", args.dtype, "--cycle", str(args.cycle),
             "--worker", json.dumps(overrides)],
            check=True, capture_output=True, text=True,
        ).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
    base = results["teacher_forcing"]
    for r in results.values():
        r["step_ratio_to_tf"] = round(r["s_per_step_median"] / base["s_per_step_median"], 3)
        r["mean_step_ratio_to_tf"] = round(r["s_per_step_mean"] / base["s_per_step_mean"], 3)
        r["rss_ratio_to_tf"] = round(r["peak_rss_mb"] / base["peak_rss_mb"], 3)
    print(json.dumps({"benchmark": "strategy_speed", "run": args.run, "dtype": args.dtype,
                      "steps": args.steps, "warmup": args.warmup, "mixing": MIXING,
                      "cycle": args.cycle,
                      "targets": {"two_pass_and_word_oracle": 1.25, "sentence_oracle_beam4": 2.5,
                                  "sentence_oracle_beam4_cached (mean)": 1.5},
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
