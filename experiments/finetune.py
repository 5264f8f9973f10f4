"""Equal-length fine-tunes of one trained base, per method and seed, evaluated on test splits,
and the paired statistics of docs/protocols/powered_comparison.md over them.

    python experiments/finetune.py configs/finetune/powered_multi30k_de_en.yaml \
        --base runs/multi30k_de_en_60min --runs runs/powered_de_en [--seeds 1-5] [--methods a,b]
    python experiments/finetune.py SPEC --runs DIR --report-only

The spec (YAML) names the seeds, the splits, dotted overrides common to every method and the
overrides of each method; each run starts from the base's best weights (``--init-from``), with
a fresh optimizer, and is evaluated at its *last* checkpoint (equal length: no selection at
all). A finished run (``finetune.json``) is skipped, so a killed sweep resumes, and its
checkpoints and encoded data are then deleted (config, log and ``eval/`` stay; the seeds of
``--keep-checkpoints`` keep theirs, for ``gapless diagnose``). ``--seeds`` / ``--methods`` run
part of the sweep; the report covers the whole spec and names the runs still missing, except
with ``--report-only``, where ``--methods`` chooses the methods reported (the reference always).
``--family REPORT.json`` adds methods reported elsewhere (a committed ``report.json``, or
``gpu_from_scratch.sh``'s JSON) to Holm's family with their raw p: a protocol amendment that
trains some of a family's methods on another device decides them in the family fixed before.

Report (``DIR/report.md``, every number in ``DIR/report.json``, the runs in
``DIR/results.json``): per method and split the seed-paired difference to the reference method
(``teacher_forcing``) with its 95% t-interval and paired t-test; Holm's correction over the
methods and the protocol's decision on the primary endpoint (``test2016``); sacreBLEU's
paired bootstrap per seed on the written hypotheses; and a reading generated from the numbers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import yaml

from gapless.analysis.paired import (
    ALPHA,
    BOOTSTRAP_SAMPLES,
    bootstrap_counts,
    decide,
    holm,
    paired_bootstrap,
    paired_interval,
)
from gapless.checkpoint import RunDir, atomic_write_text
from gapless.config import StrategyConfig
from gapless.corpora import split_paths
from gapless.data import read_lines
from gapless.evaluate import evaluate, score_split
from gapless.inference import load
from gapless.strategies import STRATEGIES, same_computation
from gapless.textio import relative_path
from gapless.training import train

REFERENCE, PRIMARY = "teacher_forcing", "test2016"
LOGGED = ("replaced", "pred_differs", "oracle_bleu", "oracle_searched", "p_gold",
          "s_per_update", "strategy_share")


def _brief(result: dict) -> dict:
    return {"bleu": result["bleu"], "chrf": result["chrf"], "signature": result["bleu_signature"]}


def run_one(spec: dict, base: Path, run_dir: Path, method: str, seed: int) -> dict:
    """Fine-tune (or resume) one method x seed, evaluate its last checkpoint; cached."""
    done = run_dir / "finetune.json"
    if done.is_file():
        return json.loads(done.read_text())
    overrides = {**spec.get("common", {}), **(spec["methods"][method] or {}), "train.seed": seed}
    cfg = RunDir(base).load_config(overrides)
    cfg.name = f"{spec.get('name', 'finetune')}-{method}-s{seed}"
    start = time.perf_counter()
    state = train(cfg, run_dir, init_from=base)
    train_s = time.perf_counter() - start
    translator = load(run_dir, "last", dtype=spec.get("dtype", "fp32"))
    scores = {}
    for split in spec["splits"]:
        r = evaluate(run_dir, split, translator=translator, beam=spec.get("beam", 5))
        scores[split] = _brief(r)
    records = [r for r in RunDir(run_dir).read_log() if r["kind"] == "train"]
    logged = {k: round(statistics.fmean(r[k] for r in records if r.get(k) is not None), 4)
              for k in LOGGED if any(r.get(k) is not None for r in records)}
    valid = [r for r in RunDir(run_dir).read_log() if r["kind"] == "valid"]
    result = {"method": method, "seed": seed, "updates": state.update,
              "train_seconds": round(train_s, 1), "valid_bleu": valid[-1]["valid_bleu"],
              "scores": scores, "logged": logged}
    atomic_write_text(done, json.dumps(result, indent=1))
    return result


def tidy(run_dir: Path) -> list[str]:
    """Delete a finished run's checkpoints and encoded training data (what fills the disk over
    many runs); its config, ``log.jsonl``, ``finetune.json`` and ``eval/`` (scores and
    hypotheses) stay. ``RunDir.discard_checkpoints`` is not used: it removes the log too.
    Returns what was deleted."""
    if not (run_dir / "finetune.json").is_file():
        raise FileNotFoundError(f"{run_dir}: not finished (no finetune.json); nothing deleted")
    run, gone = RunDir(run_dir), []
    for folder in (run.checkpoints, run.data):
        if folder.is_dir():
            shutil.rmtree(folder)
            gone.append(folder.name)
    return gone


def base_scores(spec: dict, base: Path, runs: Path) -> dict:
    """The base itself under the same decoding: the row every fine-tune is compared with."""
    done = runs / "base.json"
    if done.is_file():
        return json.loads(done.read_text())
    data = {k: v for k, v in spec.get("common", {}).items() if k.startswith("data.")}
    cfg = RunDir(base).load_config(data)  # the fine-tunes' corpus, if changed
    translator = load(base, "best", dtype=spec.get("dtype", "fp32"))
    scores = {}
    for split in spec["splits"]:  # scored, not written into the base's eval/
        scores[split] = _brief(score_split(translator, cfg.data, split,
                                           beam=spec.get("beam", 5))[0])
    result = {"method": "base (no fine-tune)", "seed": None, "scores": scores}
    atomic_write_text(done, json.dumps(result, indent=1))
    return result


def table(spec: dict, base: dict | None, results: list[dict]) -> str:
    """Markdown: one row per method, mean +- sd (n) of BLEU per split, plus the logged mixing
    figures (fraction replaced, fed predictions != gold, oracle BLEU, s/update, and the share of
    the step spent in the strategy's call); the base's row when it was scored."""
    splits = spec["splits"]
    head = ["method", "seeds"] + splits + ["valid (last)", "replaced", "pred != gold",
                                          "oracle BLEU", "s/update", "strategy share"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if base is not None:
        lines.append("| " + " | ".join([base["method"], "-"] + [
            f"{base['scores'][s]['bleu']:.2f}" for s in splits] + ["-"] * 6) + " |")
    for method in spec["methods"]:
        rows = [r for r in results if r["method"] == method]
        if not rows:
            continue

        def stat(values):
            values = list(values)
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.fmean(values):.2f} ± {sd:.2f}"

        def logged(key, rows=rows):
            vals = [r["logged"][key] for r in rows if key in r["logged"]]
            return f"{statistics.fmean(vals):.3f}" if vals else "-"

        cells = [method, str(len(rows))] + [stat(r["scores"][s]["bleu"] for r in rows)
                                            for s in splits]
        cells += [stat(r["valid_bleu"] for r in rows)] + [
            logged(k) for k in ("replaced", "pred_differs", "oracle_bleu", "s_per_update",
                                "strategy_share")]
        lines.append("| " + " | ".join(cells) + " |")
    scored = [base] if base is not None else results
    signature = next((next(iter(r["scores"].values()))["signature"] for r in scored), None)
    return "\n".join(lines) + (f"\n\nsacreBLEU signature: `{signature}`\n" if signature
                               else "\n")


# ---------------------------------------------------------------- the protocol's statistics
def parse_selection(text: str | None, allowed: list, kind: str) -> list:
    """``--seeds 1-5,8`` / ``--methods a,b`` (None: all of ``allowed``), in the spec's order;
    an entry the spec does not have is an error."""
    if text is None:
        return list(allowed)
    if kind == "seeds":
        chosen = set()
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            chosen.update(range(int(lo), int(hi or lo) + 1))
    else:
        chosen = {p.strip() for p in text.split(",") if p.strip()}
    unknown = sorted(chosen - set(allowed), key=str)
    if unknown:
        raise SystemExit(f"--{kind}: {unknown} not in the spec (has {allowed})")
    return [x for x in allowed if x in chosen]


def reported(spec: dict, methods: str | None) -> dict:
    """``spec`` with only the methods of ``--methods`` and the reference (None: all)."""
    if methods is None:
        return spec
    reference, _ = endpoints(spec)
    chosen = set(parse_selection(methods, list(spec["methods"]), "methods")) | {reference}
    return {**spec, "methods": {m: o for m, o in spec["methods"].items() if m in chosen}}


def endpoints(spec: dict) -> tuple[str, str]:
    """(reference method, primary split) of a spec (the protocol's defaults)."""
    splits = spec["splits"]
    primary = spec.get("primary", PRIMARY if PRIMARY in splits else splits[0])
    return spec.get("reference", REFERENCE), primary


def collect(spec: dict, runs: Path) -> tuple[list[dict], list[str]]:
    """The finished runs of the whole spec (seed-major) and the names of those not finished."""
    results, missing = [], []
    for seed in spec["seeds"]:
        for method in spec["methods"]:
            done = runs / f"{method}-s{seed}" / "finetune.json"
            if done.is_file():
                results.append(json.loads(done.read_text()))
            else:
                missing.append(f"{method}-s{seed}")
    return results, missing


def intervals(spec: dict, results: list[dict]) -> dict:
    """Per method (not the reference) and split: the paired differences to the reference of the
    same seed, over the seeds both finished, with their t-interval and paired t-test."""
    reference, _ = endpoints(spec)
    ref = {r["seed"]: r for r in results if r["method"] == reference}
    out = {}
    for method in spec["methods"]:
        if method == reference:
            continue
        rows = [r for r in results if r["method"] == method and r["seed"] in ref]
        out[method] = {}
        for split in spec["splits"]:
            diffs = [round(r["scores"][split]["bleu"] - ref[r["seed"]]["scores"][split]["bleu"],
                           6) for r in rows]  # BLEU is recorded to 2 decimals
            out[method][split] = {"seeds": [r["seed"] for r in rows], "diffs": diffs,
                                  **paired_interval(diffs)}
    return out


def length_ratios(spec: dict, runs: Path, results: list[dict]) -> dict:
    """Per method and split, descriptive: the mean length ratio (hypothesis / reference
    length, sacreBLEU's, from each run's ``eval/<split>.json``) of the method and of the
    reference, and the paired differences in percent of the reference length with their
    t-interval. Runs without the figure are left out."""
    reference, _ = endpoints(spec)
    ratios = {}  # (method, seed, split) -> length ratio, each eval JSON read once
    for r in results:
        for split in spec["splits"]:
            path = runs / f"{r['method']}-s{r['seed']}" / "eval" / f"{split.replace(':', '.')}.json"
            found = json.loads(path.read_text()).get("length_ratio") if path.is_file() else None
            if found is not None:
                ratios[r["method"], r["seed"], split] = found
    out: dict = {}
    for method in spec["methods"]:
        if method == reference:
            continue
        out[method] = {}
        for split in spec["splits"]:
            pairs = [(ratios[method, s, split], ratios[reference, s, split]) for s in spec["seeds"]
                     if (method, s, split) in ratios and (reference, s, split) in ratios]
            out[method][split] = {
                "mean": statistics.fmean(a for a, _ in pairs) if pairs else None,
                "reference_mean": statistics.fmean(b for _, b in pairs) if pairs else None,
                "diff_percent": paired_interval([round(100 * (a - b), 6) for a, b in pairs])}
    return out


def outside_pvalues(path: Path, spec: dict) -> dict:
    """``{"source": path, "p": {method: raw p}}``: the primary-split decisions of another
    report (``report.json``, or a JSON holding it under ``statistics``) with the same reference
    and primary split; an error naming the file otherwise."""
    doc = json.loads(Path(path).read_text())
    report = doc if "decisions" in doc else doc.get("statistics") or {}
    if "decisions" not in report:
        raise SystemExit(f"--family {path}: no 'decisions' (expected experiments/finetune.py's "
                         "report.json or a JSON with it under 'statistics')")
    reference, primary = endpoints(spec)
    if (report.get("reference"), report.get("primary")) != (reference, primary):
        raise SystemExit(f"--family {path}: reference / primary split "
                         f"{report.get('reference')} / {report.get('primary')}, this report's "
                         f"are {reference} / {primary}")
    return {"source": relative_path(Path(path)),
            "p": {m: d["p"] for m, d in report["decisions"].items()}}


def decisions(spec: dict, stats: dict, outside: dict | None = None) -> dict:
    """Holm's correction over the methods on the primary split (and ``outside``'s, methods
    reported elsewhere at their raw p), and the protocol's verdict."""
    _, primary = endpoints(spec)
    adjusted = holm({**{m: s[primary]["p"] for m, s in stats.items()}, **(outside or {})})
    return {m: {"n": s[primary]["n"], "planned": len(spec["seeds"]), "p": s[primary]["p"],
                "p_holm": adjusted[m], "decision": decide(s[primary], adjusted[m], ALPHA),
                "width": s[primary]["width"]} for m, s in stats.items()}


def _references(run_dir: Path, split: str) -> Path:
    """The reference file a run was scored against: the path its ``eval/<split>.json``
    records (relative to the directory the sweep ran in), else the run config's corpus."""
    info = run_dir / "eval" / f"{split.replace(':', '.')}.json"
    recorded = json.loads(info.read_text()).get("reference") if info.is_file() else None
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    data = RunDir(run_dir).load_config().data
    corpus, _, name = split.rpartition(":")
    return split_paths(corpus or data.corpus, name, data.src_lang, data.tgt_lang,
                       data.data_dir, download=False)[1]


def bootstrap(spec: dict, runs: Path, results: list[dict]) -> dict:
    """Per split and seed: sacreBLEU's paired bootstrap of every finished method against the
    reference of that seed, on the hypotheses in ``eval/<split>.hyp``. A run whose hypotheses
    do not reproduce its recorded BLEU is flagged (``consistent``: false)."""
    reference, _ = endpoints(spec)
    by_key = {(r["method"], r["seed"]): r for r in results}
    out: dict = {}
    for split in spec["splits"]:
        name, out[split] = split.replace(":", "."), {}
        for seed in spec["seeds"]:
            hyp = {m: runs / f"{m}-s{seed}" / "eval" / f"{name}.hyp" for m in spec["methods"]
                   if (m, seed) in by_key}
            hyp = {m: path for m, path in hyp.items() if path.is_file()}
            if reference not in hyp or len(hyp) < 2:
                continue
            refs = read_lines(_references(runs / f"{reference}-s{seed}", split))
            try:
                res = paired_bootstrap(read_lines(hyp.pop(reference)),
                                       {m: read_lines(p) for m, p in hyp.items()}, refs)
            except ValueError as exc:
                raise ValueError(f"{split}, seed {seed}: {exc}") from None
            for m, row in [(reference, res["baseline"]), *res["systems"].items()]:
                row["consistent"] = abs(row["score"] - by_key[m, seed]["scores"][split]["bleu"]
                                        ) <= 0.006
            out[split][seed] = res
    return out


# ---------------------------------------------------------------- the report
def analyse(spec: dict, runs: Path, family: dict | None = None) -> tuple[dict, list[dict]]:
    """Every number of the report, from the finished runs of the spec in ``runs``; and those
    runs. ``family`` (``outside_pvalues``): methods reported elsewhere in Holm's family."""
    reference, primary = endpoints(spec)
    results, missing = collect(spec, runs)
    stats = intervals(spec, results)
    outside = {m: p for m, p in (family or {}).get("p", {}).items() if m not in stats}
    boot = bootstrap(spec, runs, results)
    report = {
        "spec": spec.get("name"), "protocol": "docs/protocols/powered_comparison.md",
        "runs": relative_path(runs), "reference": reference, "primary": primary,
        "alpha": ALPHA, "seeds": spec["seeds"], "methods": list(spec["methods"]),
        "splits": spec["splits"],
        "planned_runs": len(spec["seeds"]) * len(spec["methods"]), "missing": missing,
        "intervals": stats, "decisions": decisions(spec, stats, outside),
        "bootstrap": {"samples": BOOTSTRAP_SAMPLES, "per_seed": boot,
                      "summary": bootstrap_counts(boot)},
    }
    if outside:
        report["family"] = {"source": family["source"], "outside": outside}
    report["length"] = length_ratios(spec, runs, results)
    report["same_computation"] = same_computation(strategy_configs(spec))
    report["reading"] = reading(report)
    return report, results


def strategy_configs(spec: dict) -> dict[str, StrategyConfig]:
    """Each method's strategy settings: the spec's common and own ``strategy.*`` overrides
    (methods naming no known strategy left out: training refuses them anyway)."""
    out = {}
    for method, own in spec["methods"].items():
        merged = {**spec.get("common", {}), **(own or {})}
        cfg = StrategyConfig(**{k.split(".", 1)[1]: v for k, v in merged.items()
                                if k.startswith("strategy.")})
        if cfg.name in STRATEGIES:
            out[method] = cfg
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _describe(method: str, d: dict, interval: dict) -> str:
    if d["decision"] == "cannot be applied":
        return f"{method}: the rule cannot be applied ({d['n']} paired seed(s))"
    return (f"{method} {interval['mean']:+.2f} BLEU (95% CI {interval['lo']:+.2f} to "
            f"{interval['hi']:+.2f}, width {d['width']:.2f}; Holm p {d['p_holm']:.3g}): "
            f"{d['decision']}")


def reading(report: dict) -> str:
    """One paragraph, every claim in it computed from the report's numbers."""
    ref, primary, dec = report["reference"], report["primary"], report["decisions"]
    parts = []
    if report["missing"]:
        shown = ", ".join(report["missing"][:6]) + (", ..." if len(report["missing"]) > 6
                                                    else "")
        parts.append(f"Provisional: {len(report['missing'])} of {report['planned_runs']} "
                     f"runs are not finished ({shown}), so this is not the protocol's result.")
    beats = [m for m, d in dec.items() if d["decision"] == "beats"]
    worse = [m for m, d in dec.items() if d["decision"] == "worse"]
    outside = report.get("family", {}).get("outside", {})
    also = (f" ({_names(sorted(outside))} at {'its' if len(outside) == 1 else 'their'} raw p "
            f"from {report['family']['source']})" if outside else "")
    head = (f"On the primary endpoint ({primary} BLEU), with Holm's correction over the "
            f"{_plural(len(dec) + len(outside), 'method')}{also}, ")
    if beats:
        parts.append(head + f"{_names(beats)} beat{'s' if len(beats) == 1 else ''} {ref}.")
    else:
        parts.append(head + f"no method beats {ref}.")
    if worse:
        parts.append(f"{_names(worse)} {'is' if len(worse) == 1 else 'are'} worse than {ref}.")
    if dec:
        parts.append("Per method: " + "; ".join(
            _describe(m, d, report["intervals"][m][primary]) for m, d in dec.items()) + ".")
    counts = report["bootstrap"]["summary"].get(primary, {}).values()
    compared = sum(c["compared"] for c in counts)
    if compared:
        sig, up = sum(c["significant"] for c in counts), sum(c["better"] for c in counts)
        parts.append(f"sacreBLEU's paired bootstrap per seed on {primary} finds {sig} of "
                     f"{compared} method-seed comparisons significant at {report['alpha']} "
                     f"({up} in the method's favour, {sig - up} against).")
    for group in report.get("same_computation", []):
        parts.append(f"{_names(group)} are one computation in this spec (equal strategy "
                     "signatures): their runs are identical for a seed, and Holm's correction "
                     "counts them more than once.")
    secondary = [s for s in report["splits"] if s != primary]
    if secondary:
        parts.append(f"The secondary splits ({', '.join(secondary)}) are reported with the "
                     "same intervals and carry no claim.")
    return " ".join(parts)


def _cell(s: dict) -> str:
    if s["lo"] is None:
        return "-" if s["mean"] is None else f"{s['mean']:+.2f} (n {s['n']})"
    return f"{s['mean']:+.2f} [{s['lo']:+.2f}, {s['hi']:+.2f}] p {s['p']:.3g} (n {s['n']})"


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def render_stats(report: dict) -> str:
    """Markdown: the decision table, the interval table per split, the per-seed bootstrap."""
    ref, primary, splits = report["reference"], report["primary"], report["splits"]
    outside = report.get("family", {}).get("outside", {})
    title = (f"## Decision on {primary} (reference: {ref}, Holm over "
             f"{_plural(len(report['decisions']) + len(outside), 'method')})\n")
    out = [title, "| method | seeds | mean d | 95% CI | width | p | Holm p | decision |",
           "|---|---|---|---|---|---|---|---|"]
    for m, d in report["decisions"].items():
        s = report["intervals"][m][primary]
        ci = "-" if s["lo"] is None else f"[{s['lo']:+.2f}, {s['hi']:+.2f}]"
        out.append(f"| {m} | {d['n']}/{d['planned']} | {_num(s['mean'], '+.2f')} | {ci} | "
                   f"{_num(d['width'], '.2f')} | {_num(d['p'], '.3g')} | "
                   f"{_num(d['p_holm'], '.3g')} | {d['decision']} |")
    if outside:
        out += ["", f"Also in Holm's family, at the raw p reported in "
                f"`{report['family']['source']}`: " + ", ".join(
                    f"{m} (p {_num(p, '.3g')})" for m, p in outside.items()) + "."]
    out += ["", f"## Paired differences to {ref} (BLEU, mean [95% t-interval], paired t-test)\n",
            "| method | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for m, per in report["intervals"].items():
        out.append(f"| {m} | " + " | ".join(_cell(per[s]) for s in splits) + " |")
    return ("\n".join(out) + "\n\n" + render_lengths(report) + "\n" + render_bootstrap(report)
            + "\n")


def render_lengths(report: dict) -> str:
    """Markdown: each method's length ratio and its paired difference to the reference."""
    ref, splits, length = report["reference"], report["splits"], report["length"]
    if not length:
        return ""
    title = (f"## Length ratio (hypothesis / reference), and its paired difference to {ref} "
             "in % of the reference length (descriptive, no claim)\n")
    out = [title, "| method | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    first = next(iter(length.values()))
    out.append(f"| {ref} | " + " | ".join(_num(first[s]["reference_mean"], ".4f")
                                           for s in splits) + " |")
    for m, per in length.items():
        cells = []
        for s in splits:
            d = per[s]["diff_percent"]
            ci = "" if d["lo"] is None else f" [{d['lo']:+.2f}, {d['hi']:+.2f}]"
            cells.append(f"{_num(per[s]['mean'], '.4f')}: {_num(d['mean'], '+.2f')}{ci}")
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _count(c: dict | None) -> str:
    if c is None:
        return "-"
    equal = f", {c['equal']} equal score" if c["equal"] else ""
    return f"{c['significant']}/{c['compared']} ({c['better']} / {c['worse']}{equal})"


def render_bootstrap(report: dict) -> str:
    """Markdown: sacreBLEU's paired bootstrap per seed on the primary split, and its counts."""
    ref, primary, boot = report["reference"], report["primary"], report["bootstrap"]
    methods = [m for m in report["methods"] if m != ref]
    per_seed = boot["per_seed"].get(primary, {})
    title = (f"## sacreBLEU paired bootstrap per seed on {primary} ({boot['samples']} "
             "resamples; mean ± 95% half-interval, p; * p < 0.05)\n")
    out = [title, "| seed | " + " | ".join([ref, *methods]) + " |", "|---|" + "---|" * (len(methods) + 1)]
    for seed, res in per_seed.items():
        cells = [f"{res['baseline']['mean']:.2f} ± {res['baseline']['ci']:.2f}"]
        for m in methods:
            r = res["systems"].get(m)
            mark = (" (equal score)" if r["delta"] == 0 else " *" if r["p"] < ALPHA else ""
                    ) if r else ""
            cells.append("-" if r is None else f"{r['mean']:.2f} ± {r['ci']:.2f}, "
                         f"p {r['p']:.3f}{mark}")
        out.append(f"| {seed} | " + " | ".join(cells) + " |")
    out += ["", "Seeds significant at 0.05 (in the method's favour / against), per split:\n",
            "| method | " + " | ".join(boot["summary"]) + " |", "|---|" + "---|" * len(
                boot["summary"])]
    for m in methods:
        cells = [_count(boot["summary"][s].get(m)) for s in boot["summary"]]
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    signature = next((r["signature"] for r in per_seed.values()), None)
    flagged = sorted({f"{m}-s{seed} ({s})" for s, seeds in boot["per_seed"].items()
                      for seed, r in seeds.items() for m, row in
                      [(ref, r["baseline"]), *r["systems"].items()] if not row["consistent"]})
    if signature:
        out.append(f"\nBootstrap signature: `{signature}`")
    if flagged:
        out.append("\nHypotheses that do not reproduce the recorded BLEU: " + ", ".join(flagged))
    return "\n".join(out) + "\n"


def render(report: dict, table_md: str) -> str:
    """The whole Markdown report."""
    head = [f"# {report['spec']}: paired comparison with {report['reference']}\n",
            f"Protocol: `{report['protocol']}`. Runs: `{report['runs']}`.\n",
            "## Reading\n", report["reading"] + "\n"]
    if report["missing"]:
        head.append("Missing runs (not finished): " + ", ".join(report["missing"]) + "\n")
    return "\n".join(head) + "\n" + render_stats(report) + "\n## Means over seeds\n\n" + table_md


def write_report(spec: dict, runs: Path, base_row: dict | None,
                 family: dict | None = None) -> str:
    """Analyse the finished runs of ``spec`` in ``runs`` (``family``: see ``analyse``) and write
    ``report.md``, ``report.json`` and ``results.json`` there (atomically); returns the
    Markdown."""
    report, results = analyse(spec, runs, family)
    md = render(report, table(spec, base_row, results))
    atomic_write_text(runs / "report.json", json.dumps(report, indent=1))
    atomic_write_text(runs / "report.md", md)
    atomic_write_text(runs / "results.json", json.dumps(
        {"spec": spec, "base_scores": base_row, "runs": results}, indent=1))
    return md


def sweep(spec: dict, args, runs: Path) -> None:
    """Fine-tune and evaluate the chosen methods x seeds (seed-major: every method has n seeds
    before any has n + 1); a finished run's checkpoints go unless its seed is kept."""
    base = Path(args.base)
    seeds = parse_selection(args.seeds, spec["seeds"], "seeds")
    methods = parse_selection(args.methods, list(spec["methods"]), "methods")
    keep = set(parse_selection(args.keep_checkpoints, spec["seeds"], "seeds")
               if args.keep_checkpoints.lower() != "none" else [])
    for group in same_computation(strategy_configs(spec)):  # said before hours of training
        print(f"finetune: warning: {_names(group)} are one computation in this spec (equal "
              "strategy signatures); their runs will be identical for a seed", file=sys.stderr)
    base_scores(spec, base, runs)
    for seed in seeds:
        for method in methods:
            run_dir = runs / f"{method}-s{seed}"
            result = run_one(spec, base, run_dir, method, seed)
            if seed not in keep:
                tidy(run_dir)
            print(json.dumps({k: result[k] for k in ("method", "seed", "scores")}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec")
    parser.add_argument("--base", help="the trained run to fine-tune (not with --report-only)")
    parser.add_argument("--runs", required=True, help="where the fine-tuned runs go")
    parser.add_argument("--markdown", help="also write the report to this file")
    parser.add_argument("--seeds", help="a subset of the spec's seeds to run: 1-5 or 1,3,7-9")
    parser.add_argument("--methods", help="a comma-separated subset of the spec's methods")
    parser.add_argument("--keep-checkpoints", default="1-3", metavar="SEEDS",
                        help="seeds whose runs keep their checkpoints (the protocol's section "
                             "3 diagnoses seeds 1 to 3); 'none' deletes all (default: 1-3)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: report on the runs already finished (of --methods "
                             "and the reference, when given)")
    parser.add_argument("--family", metavar="REPORT_JSON",
                        help="another report whose methods not reported here join Holm's "
                             "family at their raw p (a protocol amendment's runs)")
    args = parser.parse_args()
    spec = yaml.safe_load(Path(args.spec).read_text())
    runs = Path(args.runs)
    family = outside_pvalues(Path(args.family), spec) if args.family else None  # read first
    if not args.report_only:
        if not args.base:
            parser.error("--base is required unless --report-only")
        runs.mkdir(parents=True, exist_ok=True)
        sweep(spec, args, runs)
    elif not runs.is_dir():
        parser.error(f"{runs}: no such folder")
    else:
        spec = reported(spec, args.methods)
    base_file = runs / "base.json"
    base_row = json.loads(base_file.read_text()) if base_file.is_file() else None
    md = write_report(spec, runs, base_row, family)
    if args.markdown:
        atomic_write_text(Path(args.markdown), md)
    print(md)


if __name__ == "__main__":
    main()
