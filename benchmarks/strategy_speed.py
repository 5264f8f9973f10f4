"""Training-step time and peak memory per strategy, as ratios to a teacher-forcing step.

The real step (``gapless.training.criterion.Criterion`` + the trainer's Adam + autocast) on
the same Multi30k batches for every strategy. Time: all strategies in *one* process, interleaved step by step (round r runs
every strategy once on batch r, in a rotating order), so machine drift hits all alike; the
ratio of a round is its step time over the teacher-forcing step of the same round, and the
figures are the median over rounds and the ratio of mean step times (amortised: the cached
oracle's steps differ by design). Beside them, each strategy's matrix-product FLOPs per step
(counted, ``torch.utils.flop_counter``) as a ratio to teacher forcing: the arithmetic floor.
Memory: each strategy in a fresh process (its own peak RSS). Prints one JSON document.

The batches cycle through ``--cycle`` distinct batches (an "epoch" of that many updates) so the
cached sentence oracle (``oracle_refresh``) meets its sentences again: refreshed every
``4 x cycle`` updates, a quarter of the measured steps search.

    python -m benchmarks.strategy_speed --run runs/NAME   # a prepared run directory

``--set section.key=VALUE`` (repeatable) changes the run's config for every strategy, e.g. the
model size: ``--set model.d_model=512 --set model.n_heads=8 --set model.ffn_dim=2048
--set model.enc_layers=6 --set model.dec_layers=6`` is Transformer-base (Vaswani et al. 2017,
table 3), the size of OR-NMT's step-cost figure. The weights are fresh (seed 1): step time
does not depend on what the model has learnt, except the search's n-best bookkeeping and the
length of sampled candidates: minimum risk training samples until EOS, which fresh weights
rarely emit, so ``--weights best`` (or ``last``, a checkpoint folder) starts every strategy from
the run's trained weights instead.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import yaml

from benchmarks.common import (
    child_json,
    emit,
    finish,
    machine,
    peak_rss_mb,
    relpath,
    reply,
    rotated,
    run_config,
    say,
    train_step,
    trainee,
    training_batches,
)

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
# the powered comparison's second family at its spec's settings; neither has a p, so MIXING
# does not apply to them
NO_P = ("minimum_risk", "confidence_aware")
AFTER_ORNMT = Path(__file__).parents[1] / "configs/finetune/after_ornmt_multi30k_de_en.yaml"
STRATEGIES.update({name: yaml.safe_load(AFTER_ORNMT.read_text())["methods"][name]
                   for name in NO_P})
# every strategy mixes (p < 1), so the first pass / oracle search always runs
MIXING = {"strategy.schedule": "constant", "strategy.constant_p": 0.5}


def _setup(run: str, names: list[str], cycle: int, changes: list[str] = (), weights: str = ""):
    """(prepared data, batches, {name: Trainee}), every model from seed 1, or from the run's
    checkpoint ``weights`` (best, last, a folder) when given."""
    from gapless.checkpoint import RunDir

    steps = {}
    for name in names:
        # "--section.key=VALUE" strings, as the CLI takes them: the --set changes, then the
        # strategy's own settings
        cfg = run_config(run, [f"--{c}" for c in changes] + [
            f"--{key}={value}" for key, value in overrides(name, cycle).items()])
        steps[name] = trainee(cfg)
        if weights:  # in place: the optimizer keeps pointing at the same parameters
            RunDir(run).load_weights(steps[name].model, weights)
    data, batches = training_batches(run, cfg, cycle)
    return data, batches, steps


def _step(t, batch, update: int, dtype: str) -> float:
    return train_step(t.criterion, t.optimizer, batch, update, dtype)


def overrides(name: str, cycle: int) -> dict:
    over = STRATEGIES[name]
    mixing = over and over["strategy.name"] not in NO_P
    out = {**over, **(MIXING if mixing else {})}
    if out.get("strategy.oracle_refresh") == -1:  # search every 4th visit
        out["strategy.oracle_refresh"] = 4 * cycle
    return out


def interleaved(run: str, steps: int, warmup: int, dtype: str, cycle: int,
                changes: list[str] = (), weights: str = "") -> dict:
    """Step times of every strategy, interleaved round by round in this process."""
    from gapless.data import collate

    names = list(STRATEGIES)
    data, batches, modules = _setup(run, names, cycle, changes, weights)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + steps):
        batch = collate(data, batches[i % cycle])
        for name in rotated(names, i):  # who runs first changes every round
            t = _step(modules[name], batch, i, dtype)
            if i >= warmup:
                times[name].append(t)
    tf = times["teacher_forcing"]
    out = {}
    for name in names:
        ratios = [t / b for t, b in zip(times[name], tf)]
        out[name] = {
            "s_per_step_median": statistics.median(times[name]),
            "s_per_step_mean": statistics.fmean(times[name]),
            "s_per_step": times[name],
            "step_ratio_to_tf": round(statistics.median(ratios), 3),
            # the middle half of the rounds' ratios: how far one run's median can move
            "step_ratio_quartiles": [round(q, 3) for q in statistics.quantiles(ratios, n=4)[::2]],
            "mean_step_ratio_to_tf": round(statistics.fmean(times[name]) / statistics.fmean(tf), 3),
            "stats": modules[name].strategy.stats(),
        }
    flops = counted_flops(modules, data, batches[:cycle], dtype)
    for name in names:
        out[name]["gflop_per_step"] = flops.get(name)
        out[name]["flop_ratio_to_tf"] = (round(flops[name] / flops["teacher_forcing"], 3)
                                         if name in flops else None)
    return out


def counted_flops(modules: dict, data, batches: list, dtype: str) -> dict[str, float]:
    """GFLOP of matrix products (forward + backward, ``torch.utils.flop_counter``) per step,
    the mean over ``batches``, per strategy: the arithmetic floor of each step ratio. Not for
    the sentence oracle and minimum risk training, whose searches run prepacked oneDNN linears
    the counter does not see."""
    from torch.utils.flop_counter import FlopCounterMode

    from gapless.data import collate

    out = {}
    for name, t in modules.items():
        if t.strategy.cfg.name in ("sentence_oracle", "minimum_risk"):
            continue
        counter = FlopCounterMode(display=False)
        with counter:
            for i, ids in enumerate(batches):
                _step(t, collate(data, ids), i, dtype)
        out[name] = round(counter.get_total_flops() / len(batches) / 1e9, 2)
    return out


def memory(run: str, name: str, steps: int, dtype: str, cycle: int,
           changes: list[str] = (), weights: str = "") -> float:
    """Peak RSS (MB) of a fresh process running ``steps`` steps of one strategy."""
    from gapless.data import collate

    data, batches, modules = _setup(run, [name], cycle, changes, weights)
    for i in range(steps):
        _step(modules[name], collate(data, batches[i % cycle]), i, dtype)
    return peak_rss_mb()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run", required=True, help="a prepared run directory (config.yaml, data/)")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--cycle", type=int, default=4, help="distinct batches, cycled")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--memory-steps", type=int, default=4)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="change the run's config for every strategy (repeatable)")
    p.add_argument("--weights", default="", metavar="best|last|DIR",
                   help="start from the run's checkpoint instead of fresh weights (seed 1)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    changes = args.set
    if args.worker:  # one strategy's peak memory, in a fresh process
        reply(memory(args.run, args.worker, args.memory_steps, args.dtype, args.cycle, changes,
                     args.weights))
        return
    info = machine(2)
    peaks = {}
    for name in STRATEGIES:
        say("strategy_speed", f"memory of {name} ...")
        peaks[name] = child_json("benchmarks.strategy_speed", [
            "--run", str(Path(args.run).resolve()), "--dtype", args.dtype,
            "--cycle", str(args.cycle), "--memory-steps", str(args.memory_steps),
            *[f"--set={item}" for item in args.set], "--weights", args.weights,
            "--worker", name])
    say("strategy_speed", "timing, interleaved ...")
    results = interleaved(args.run, args.steps, args.warmup, args.dtype, args.cycle, changes,
                          args.weights)
    for name, peak in peaks.items():
        results[name]["peak_rss_mb"] = peak
    base = results["teacher_forcing"]["peak_rss_mb"]
    for r in results.values():
        r["rss_ratio_to_tf"] = round(r["peak_rss_mb"] / base, 3)
    emit({"benchmark": "strategy_speed", "run": relpath(args.run), "machine": finish(info),
          "dtype": args.dtype, "config_changes": changes,
          "weights": args.weights or "fresh (seed 1)",
          "steps": args.steps, "warmup": args.warmup, "mixing": MIXING,
          "cycle": args.cycle, "timing": "interleaved, one process",
          "targets": {"two_pass_and_word_oracle": 1.25, "sentence_oracle_beam4": 2.5,
                      "sentence_oracle_beam4_cached (mean)": 1.5},
          "results": results})


if __name__ == "__main__":
    main()
