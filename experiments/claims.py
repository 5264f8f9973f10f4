"""The two claims of docs/protocols/powered_comparison.md section 5 at the peers' size:
``layernorm`` (LayerNorm vs BatchNorm, both post-norm) and ``tying`` (all tables tied vs
untied), trained from scratch for a fixed number of updates, judged on valid BLEU.

    python experiments/claims.py configs/claims/layernorm_tying.yaml --runs runs/claims \
        [--claims layernorm] [--seeds 1]
    python experiments/claims.py configs/claims/layernorm_tying.yaml --runs runs/claims \
        --report-only

Every arm x seed trains the spec's preset with the spec's common overrides and the arm's, from
one shared preparation (``RUNS/_prepared``: the same vocabulary and encoded corpus for all), and
is scored at its *last* checkpoint (beam 5) on the spec's splits. A finished run
(``RUNS/CLAIM-ARM-sSEED/claim.json``) is not retrained and a killed one resumes from its last
checkpoint, so an interrupted sweep is resumed by running the same command again.

Report (``RUNS/report.md``, every number in ``RUNS/report.json``): per claim, the protocol's
verdict from the valid BLEU of each seed, and the test splits beside it, never used by the
verdict. ``--claims`` / ``--seeds`` run part of the spec; the report always covers all of it and
names the runs still missing (a verdict then "cannot be applied").
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gapless import config as config_mod
from gapless.checkpoint import atomic_write_text
from gapless.evaluate import evaluate
from gapless.inference import load
from gapless.prepare import prepare
from gapless.textio import relative_path
from gapless.training import train

PROTOCOL = "docs/protocols/powered_comparison.md, section 5"
LAYERNORM_MARGIN = 0.5  # the protocol's: LayerNorm ahead by >= 0.5 in each seed
TYING_MARGIN = 0.3  # the protocol's non-inferiority margin for the tied model
HOLDS, FAILS, UNDECIDED, NOT_APPLIED = "holds", "fails", "undecided", "cannot be applied"


# ---------------------------------------------------------------- the verdict rules
def _diffs(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per-seed a - b rounded to 1e-6: BLEU has 2 decimals, so a margin's worth of difference
    is the margin itself, not 0.49999999999999645."""
    if len(a) != len(b):
        raise ValueError(f"unpaired seeds: {len(a)} against {len(b)} figures")
    return [round(x - y, 6) for x, y in zip(a, b)]


def layernorm_verdict(layer: Sequence[float], batch: Sequence[float]) -> tuple[str, str]:
    """Section 5's layernorm rule on per-seed valid BLEU: holds if LN is ahead by >= 0.5 in
    each seed, fails if BN is ahead by >= 0.5 in either seed, else undecided; (verdict, why)."""
    d = _diffs(layer, batch)
    if not d:
        return NOT_APPLIED, "no paired seed"
    shown = ", ".join(f"{x:+.2f}" for x in d)
    if all(x >= LAYERNORM_MARGIN for x in d):
        return HOLDS, f"LayerNorm - BatchNorm = {shown}: >= +{LAYERNORM_MARGIN} in every seed"
    if any(x <= -LAYERNORM_MARGIN for x in d):
        return FAILS, (f"LayerNorm - BatchNorm = {shown}: BatchNorm ahead by >= "
                       f"{LAYERNORM_MARGIN} in a seed")
    return UNDECIDED, f"LayerNorm - BatchNorm = {shown}: neither rule's condition is met"


def tying_verdict(tied: Sequence[float], untied: Sequence[float]) -> tuple[str, str]:
    """Section 5's tying rule on per-seed valid BLEU (as amended before the runs): holds if
    tied >= untied - 0.3 in each seed, fails if more than 0.3 below in both, else undecided."""
    d = _diffs(tied, untied)
    if not d:
        return NOT_APPLIED, "no paired seed"
    shown = ", ".join(f"{x:+.2f}" for x in d)
    if all(x >= -TYING_MARGIN for x in d):
        return HOLDS, f"tied - untied = {shown}: >= -{TYING_MARGIN} in every seed"
    if all(x < -TYING_MARGIN for x in d):
        return FAILS, f"tied - untied = {shown}: more than {TYING_MARGIN} below in every seed"
    return UNDECIDED, f"tied - untied = {shown}: neither rule's condition is met"


# rule name -> (function, its two arms in the order it takes them)
RULES: dict[str, tuple[Callable[[Sequence[float], Sequence[float]], tuple[str, str]],
                       tuple[str, str]]] = {
    "layernorm": (layernorm_verdict, ("layer", "batch")),
    "tying": (tying_verdict, ("tied", "untied")),
}


# ---------------------------------------------------------------- the spec
@dataclass
class Claim:
    """One claim: the protocol's rule that judges it and its two arms' dotted overrides."""

    rule: str
    arms: dict[str, dict[str, Any]]


@dataclass
class Spec:
    """A claims spec (``configs/claims/*.yaml``)."""

    name: str
    preset: str  # a shipped preset name or a config file
    seeds: list[int]
    claims: dict[str, Claim]
    splits: list[str] = field(default_factory=lambda: ["valid"])
    verdict_split: str = "valid"
    beam: int = 5
    eval_dtype: str = "bf16"
    common: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | Path) -> Spec:
        """The spec of a YAML file, checked: every claim's rule known and its arms the rule's."""
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        data["claims"] = {k: Claim(**v) for k, v in data["claims"].items()}
        spec = cls(**data)
        problems = []
        for name, claim in spec.claims.items():
            if claim.rule not in RULES:
                problems.append(f"claim {name}: unknown rule {claim.rule!r} (known: "
                                f"{', '.join(RULES)})")
            elif set(claim.arms) != set(RULES[claim.rule][1]):
                problems.append(f"claim {name}: the {claim.rule} rule needs the arms "
                                f"{list(RULES[claim.rule][1])}, got {list(claim.arms)}")
        if spec.verdict_split not in spec.splits:
            problems.append(f"verdict_split {spec.verdict_split!r} is not among the splits")
        if problems:
            raise SystemExit(f"{path}: " + "; ".join(problems))
        return spec

    def runs(self) -> list[tuple[str, str, int]]:
        """(claim, arm, seed) of every run, seed-major: every arm has seed n before n + 1."""
        return [(c, a, s) for s in self.seeds for c, claim in self.claims.items()
                for a in claim.arms]

    def config(self, claim: str, arm: str, seed: int) -> config_mod.Config:
        """The run's resolved config: preset, common overrides, the arm's, the seed."""
        cfg = config_mod.load(self.preset, {**self.common, **self.claims[claim].arms[arm],
                                            "train.seed": seed})
        cfg.name = f"{self.name}-{run_name(claim, arm, seed)}"
        return cfg


def run_name(claim: str, arm: str, seed: int) -> str:
    return f"{claim}-{arm}-s{seed}"


# ---------------------------------------------------------------- the runs
def shared_data(spec: Spec, runs: Path) -> Path:
    """One preparation for every run (``runs/_prepared``): arms differ in the model only."""
    folder = runs / "_prepared"
    prepare(config_mod.load(spec.preset, spec.common), folder)
    return folder


def run_one(spec: Spec, runs: Path, claim: str, arm: str, seed: int) -> dict:
    """Train (or resume) one arm x seed and score its last checkpoint; cached in claim.json."""
    run_dir = runs / run_name(claim, arm, seed)
    done = run_dir / "claim.json"
    if done.is_file():
        return json.loads(done.read_text())
    if not (run_dir / "data").is_dir():
        prepared = shared_data(spec, runs)
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(prepared / "data", run_dir / "data")
        for name in ("spm.model", "spm.vocab"):
            shutil.copy2(prepared / name, run_dir / name)
    cfg = spec.config(claim, arm, seed)
    start = time.perf_counter()
    state = train(cfg, run_dir)
    translator = load(run_dir, "last", dtype=spec.eval_dtype)
    scores = {}
    for split in spec.splits:
        r = evaluate(run_dir, split, translator=translator, beam=spec.beam)
        scores[split] = {"bleu": r["bleu"], "chrf": r["chrf"], "signature": r["bleu_signature"]}
    result = {"claim": claim, "arm": arm, "seed": seed, "overrides": spec.claims[claim].arms[arm],
              "updates": state.update, "stopped": state.stopped,
              "parameters": sum(p.numel() for p in translator.model.parameters()),
              "seconds": round(time.perf_counter() - start, 1),
              "scores": scores}
    atomic_write_text(done, json.dumps(result, indent=1))
    return result


# ---------------------------------------------------------------- the report
def analyse(spec: Spec, runs: Path) -> dict:
    """Every number of the report from the finished runs: per claim the figures per seed and
    the verdict from the verdict split's (the other splits only reported)."""
    results, missing = {}, []
    for claim, arm, seed in spec.runs():
        done = runs / run_name(claim, arm, seed) / "claim.json"
        if done.is_file():
            results[run_name(claim, arm, seed)] = json.loads(done.read_text())
        else:
            missing.append(run_name(claim, arm, seed))
    claims = {}
    for name, claim in spec.claims.items():
        rule, (first, second) = RULES[claim.rule]
        per_seed = {}
        for seed in spec.seeds:
            rows = {arm: results.get(run_name(name, arm, seed)) for arm in (first, second)}
            per_seed[seed] = {arm: None if r is None else {
                s: v["bleu"] for s, v in r["scores"].items()} for arm, r in rows.items()}
        paired = [s for s in spec.seeds if all(per_seed[s].values())]
        split = spec.verdict_split
        a = [per_seed[s][first][split] for s in paired]
        b = [per_seed[s][second][split] for s in paired]
        if len(paired) < len(spec.seeds):
            verdict, why = NOT_APPLIED, (f"{len(paired)} of {len(spec.seeds)} seeds have both "
                                         "arms finished")
        else:
            verdict, why = rule(a, b)
        claims[name] = {"rule": claim.rule, "arms": [first, second],
                        "overrides": claim.arms, "verdict": verdict, "why": why,
                        "verdict_split": split, "paired_seeds": paired,
                        "differences": _diffs(a, b), "per_seed": per_seed,
                        "reported_beside": [s for s in spec.splits if s != split]}
    return {"spec": spec.name, "protocol": PROTOCOL, "runs": relative_path(runs),
            "preset": spec.preset, "common": spec.common, "seeds": spec.seeds,
            "splits": spec.splits, "beam": spec.beam, "eval_dtype": spec.eval_dtype,
            "planned_runs": len(spec.runs()), "missing": missing, "claims": claims,
            "results": results}


def render(report: dict) -> str:
    """The Markdown report: per claim its verdict and the figures that made it."""
    setup = (f"Runs: `{report['runs']}`; preset `{report['preset']}` with "
             f"`{json.dumps(report['common'])}`; last checkpoint, beam {report['beam']} "
             f"({report['eval_dtype']}).\n")
    out = [f"# {report['spec']}: the claims of {report['protocol']}\n", setup]
    if report["missing"]:
        out.append(f"Provisional: {len(report['missing'])} of {report['planned_runs']} runs "
                   f"are not finished ({', '.join(report['missing'])}).\n")
    for name, c in report["claims"].items():
        first, second = c["arms"]
        split, beside = c["verdict_split"], c["reported_beside"]
        arms = (f"Arms: {first} `{json.dumps(c['overrides'][first])}`, {second} "
                f"`{json.dumps(c['overrides'][second])}`. The verdict uses {split} BLEU only; "
                f"{', '.join(beside) or 'no other split'} reported beside, never used.\n")
        head = " | ".join(f"{arm} {s}" for s in [split, *beside] for arm in (first, second))
        out += [f"## {name}: **{c['verdict']}**\n", f"{c['why']}.\n", arms,
                f"| seed | {head} | {split} difference |",
                "|---|" + "---|" * (2 * (1 + len(beside)) + 1)]
        for seed, rows in c["per_seed"].items():
            cells = [_bleu(rows[arm], s) for s in [split, *beside] for arm in (first, second)]
            diff = ("-" if rows[first] is None or rows[second] is None
                    else f"{rows[first][split] - rows[second][split]:+.2f}")
            out.append(f"| {seed} | " + " | ".join(cells) + f" | {diff} |")
        out.append("")
    signature = next((next(iter(r["scores"].values()))["signature"]
                      for r in report["results"].values()), None)
    if signature:
        out.append(f"sacreBLEU signature: `{signature}`")
    return "\n".join(out) + "\n"


def _bleu(row: dict | None, split: str) -> str:
    return "-" if row is None else f"{row[split]:.2f}"


def write_report(spec: Spec, runs: Path) -> str:
    """Write ``report.json`` and ``report.md`` into ``runs`` (atomically); the Markdown."""
    report = analyse(spec, runs)
    md = render(report)
    atomic_write_text(runs / "report.json", json.dumps(report, indent=1))
    atomic_write_text(runs / "report.md", md)
    return md


def _chosen(text: str | None, allowed: list, kind: str, cast=str) -> list:
    """``--claims a,b`` / ``--seeds 1,2`` (None: all), in the spec's order; unknown: an error."""
    if text is None:
        return list(allowed)
    chosen = [cast(x.strip()) for x in text.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in allowed]
    if unknown:
        raise SystemExit(f"--{kind}: {unknown} not in the spec (has {allowed})")
    return [x for x in allowed if x in chosen]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec")
    parser.add_argument("--runs", required=True, help="where the runs and the report go")
    parser.add_argument("--claims", help="a comma-separated subset of the spec's claims to run")
    parser.add_argument("--seeds", help="a comma-separated subset of the spec's seeds to run")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: report on the runs already finished")
    args = parser.parse_args(argv)
    spec, runs = Spec.read(args.spec), Path(args.runs)
    if args.report_only:
        if not runs.is_dir():
            parser.error(f"{runs}: no such folder")
    else:
        claims = _chosen(args.claims, list(spec.claims), "claims")
        seeds = _chosen(args.seeds, spec.seeds, "seeds", int)
        runs.mkdir(parents=True, exist_ok=True)
        atomic_write_text(runs / "spec.json", json.dumps(asdict(spec), indent=1))
        for claim, arm, seed in spec.runs():
            if claim in claims and seed in seeds:
                result = run_one(spec, runs, claim, arm, seed)
                print(json.dumps({k: result[k] for k in ("claim", "arm", "seed", "updates")}
                                 | {"bleu": {s: v["bleu"] for s, v in result["scores"].items()}}),
                      flush=True)
    print(write_report(spec, runs))


if __name__ == "__main__":
    main()
