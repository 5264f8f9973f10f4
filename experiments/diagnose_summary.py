"""Section 3 of docs/protocols/powered_comparison.md over seeds: each method's beam curve, length
(the beam's own ratio, and the length settings chosen on valid) and exposure gap by reference
length, as means over the seeds of ``gapless diagnose RUN --protocol``, with each figure's
paired difference to the reference method (95% t-interval over seeds; descriptive, no claim).

    python experiments/diagnose_summary.py configs/finetune/powered_multi30k_de_en.yaml \
        --runs runs/powered_de_en --seeds 1,2,3 --out docs/diagnose_powered

Reads ``RUNS/METHOD-sSEED/diagnose/SPLIT/diagnose.json``; writes ``OUT/summary.md`` with its two
figures (``beam_curve.png``, ``gap_by_length.png``) and every number in ``OUT/summary.json``. A run without its diagnose.json is named as missing and left
out of the means.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml

from gapless.analysis.paired import paired_interval
from gapless.checkpoint import atomic_write_text
from gapless.textio import relative_path

REFERENCE = "teacher_forcing"
BUCKETS = ("1-10", "11-15", "16-20", "21-30", "31+")
LONG = "21-30"  # the longest bucket with enough sentences on test2016 (84; 31+ has 11)


def per_run(diag: dict) -> dict:
    """The figures of one run's diagnose.json that section 3 asks for (BLEU, %, pp)."""
    beams = {b["beam"]: b for b in diag["beam_sweep"]["beams"]}
    gap = diag["gap"]
    out = {
        "bleu_by_beam": {str(k): b["bleu"] for k, b in sorted(beams.items())},
        "ratio_by_beam": {str(k): b["length_ratio"] for k, b in sorted(beams.items())},
        "gap_pp": round(100 * gap["gap"], 3),
        "gap_pp_by_bucket": {b["bucket"]: round(100 * b["gap"], 3) for b in gap["by_bucket"]},
        "bucket_sentences": {b["bucket"]: b.get("sentences") for b in gap["by_bucket"]},
        "bleu_by_bucket": {b["bucket"]: b["bleu"] for b in beams[5]["by_bucket"]},
    }
    if 100 in beams:
        out["beam100_minus_beam5"] = round(beams[100]["bleu"] - beams[5]["bleu"], 3)
    grid = diag.get("length_grid")
    if grid:
        default = next(c for c in grid["choices"] if c["choice"] == "default")
        out["length_choices"] = {
            c["choice"]: {"label": c["label"], "valid_bleu": c["valid"]["bleu"],
                          "test_bleu": c["test"]["bleu"], "test_ratio": c["test"]["length_ratio"],
                          "test_gain": round(c["test"]["bleu"] - default["test"]["bleu"], 3)}
            for c in grid["choices"]}
    return out


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def summarise(figures: dict[tuple[str, int], dict], methods: list[str],
              seeds: list[int]) -> dict:
    """Per method: the mean of every figure over its seeds, and the paired difference to the
    reference of the headline ones (seeds that both have)."""
    def collect(method: str, get) -> dict[int, float]:
        out = {}
        for s in seeds:
            value = get(figures[method, s]) if (method, s) in figures else None
            if value is not None:
                out[s] = value
        return out

    headline = {
        "beam100_minus_beam5": lambda f: f.get("beam100_minus_beam5"),
        "length_pct_beam5": lambda f: None if f["ratio_by_beam"].get("5") is None else round(
            100 * f["ratio_by_beam"]["5"], 3),
        "gap_pp": lambda f: f["gap_pp"],
        f"gap_pp_{LONG}": lambda f: f["gap_pp_by_bucket"].get(LONG),
        "length_joint_gain": lambda f: (f.get("length_choices") or {}).get(
            "joint", {}).get("test_gain"),
    }
    def mean_of(method: str, table: str, keys) -> dict:
        """{key: mean over the method's seeds of figure[table][key]}."""
        return {k: _mean(list(collect(method, lambda f, k=k: f[table].get(k)).values()))
                for k in keys}

    beams = sorted({k for f in figures.values() for k in f["bleu_by_beam"]}, key=int)
    choices = sorted({c for f in figures.values() for c in f.get("length_choices", {})})
    result = {}
    for m in methods:
        row = {"seeds": sorted(s for s in seeds if (m, s) in figures)}
        row["bleu_by_beam"] = mean_of(m, "bleu_by_beam", beams)
        row["ratio_by_beam"] = mean_of(m, "ratio_by_beam", beams)
        row["gap_pp_by_bucket"] = mean_of(m, "gap_pp_by_bucket", BUCKETS)
        row["bleu_by_bucket"] = mean_of(m, "bleu_by_bucket", BUCKETS)
        row["length_choices"] = {}
        for c in choices:
            got = collect(m, lambda f, c=c: (f.get("length_choices") or {}).get(c))
            row["length_choices"][c] = {
                "labels": {str(s): v["label"] for s, v in got.items()},
                **{k: _mean([v[k] for v in got.values()])
                   for k in ("valid_bleu", "test_bleu", "test_ratio", "test_gain")}}
        row["headline"] = {}
        for name, get in headline.items():
            mine, ref = collect(m, get), collect(REFERENCE, get)
            both = [s for s in seeds if s in mine and s in ref]
            row["headline"][name] = {
                "mean": _mean(list(mine.values())),
                "vs_reference": None if m == REFERENCE else paired_interval(
                    [mine[s] - ref[s] for s in both])}
        result[m] = row
    return result


GRID_TEXT = ("The settings chosen on valid from the protocol's grid (beam 5; GNMT's length "
             "penalty alpha, a minimum length ratio, or both), per seed; test BLEU and its "
             "change against the default search (fairseq's length normalisation, no minimum), "
             "means over seeds:\n")
GRID_HEAD = ("| method | choice | setting per seed (chosen on valid; default: fixed) | "
             "valid BLEU | test BLEU | test length ratio | test change |")


def _f(x, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def _d(interval: dict | None) -> str:
    if not interval or interval["mean"] is None:
        return "-"
    if interval["lo"] is None:
        return f"{interval['mean']:+.2f} (n {interval['n']})"
    return f"{interval['mean']:+.2f} [{interval['lo']:+.2f}, {interval['hi']:+.2f}]"


def render(doc: dict) -> str:
    """Markdown of the summary, its reading generated from the numbers."""
    methods, rows = doc["methods"], doc["summary"]
    beams = list(next(iter(rows.values()))["bleu_by_beam"])
    out = [f"# Where exposure bias bites: {doc['split']}, seeds {doc['seeds']}\n",
           f"Protocol: `{doc['protocol']}`, section 3 (descriptive). Runs: `{doc['runs']}`. "
           "Regenerate: `" + doc["command"] + "`.\n",
           "![BLEU by beam size](beam_curve.png) ![gap by length](gap_by_length.png)\n"]
    if doc["missing"]:
        out.append(f"Missing (no diagnose.json): {', '.join(doc['missing'])}.\n")
    out.append("## Beam size: BLEU at each beam (mean over seeds)\n")
    out += ["| method | seeds | " + " | ".join(f"beam {b}" for b in beams)
            + f" | beam 100 - beam 5, d vs {REFERENCE} |",
            "|---|---|" + "---|" * (len(beams) + 1)]
    for m in methods:
        r = rows[m]
        h = r["headline"]["beam100_minus_beam5"]
        d = "" if m == REFERENCE else f"; {_d(h['vs_reference'])}"
        out.append(f"| {m} | {len(r['seeds'])} | " + " | ".join(
            _f(r["bleu_by_beam"][b]) for b in beams) + f" | {_f(h['mean'], '+.2f')}{d} |")
    out += ["", "## Length: the beam's length ratio, and what the search's settings do\n",
            "Length ratio (hypothesis / reference) at each beam, mean over seeds:\n",
            "| method | " + " | ".join(f"beam {b}" for b in beams) + " |",
            "|---|" + "---|" * len(beams)]
    for m in methods:
        out.append(f"| {m} | " + " | ".join(_f(rows[m]["ratio_by_beam"][b], ".4f")
                                            for b in beams) + " |")
    choices = list(next(iter(rows.values()))["length_choices"])
    if choices:
        out += ["", GRID_TEXT, GRID_HEAD, "|---|---|---|---|---|---|---|"]
        for m in methods:
            for c in choices:
                v = rows[m]["length_choices"][c]
                labels = "; ".join(f"s{s}: {lab}" for s, lab in v["labels"].items())
                out.append(f"| {m} | {c} | {labels} | {_f(v['valid_bleu'])} | "
                           f"{_f(v['test_bleu'])} | {_f(v['test_ratio'], '.4f')} | "
                           f"{_f(v['test_gain'], '+.2f')} |")
    out += ["", "## Long sentences: BLEU (beam 5) and the exposure gap by reference length\n",
            ("The gap: teacher-forced token accuracy minus the accuracy of the model's own "
            "greedy output (LCS-aligned), in points; mean over seeds.\n"),
            "| method | " + " | ".join(f"BLEU {k}" for k in BUCKETS) + " | "
            + " | ".join(f"gap {k}" for k in BUCKETS) + " | gap all |",
            "|---|" + "---|" * (2 * len(BUCKETS) + 1)]
    for m in methods:
        r = rows[m]
        out.append(f"| {m} | " + " | ".join(_f(r["bleu_by_bucket"][k]) for k in BUCKETS) + " | "
                   + " | ".join(_f(r["gap_pp_by_bucket"][k]) for k in BUCKETS)
                   + f" | {_f(r['headline']['gap_pp']['mean'])} |")
    out += ["", f"## Paired differences to {REFERENCE} (mean [95% t-interval] over seeds)\n",
            ("| method | beam 100 - beam 5 | length, beam 5 (% of reference) | gap all (pp) | "
            f"gap {LONG} (pp) | test change, joint length setting |"), "|---|---|---|---|---|---|"]
    for m in methods:
        if m == REFERENCE:
            continue
        h = rows[m]["headline"]
        out.append(f"| {m} | " + " | ".join(_d(h[k]["vs_reference"]) for k in (
            "beam100_minus_beam5", "length_pct_beam5", "gap_pp", f"gap_pp_{LONG}",
            "length_joint_gain")) + " |")
    out += ["", "## Reading\n", doc["reading"], ""]
    return "\n".join(out)


def reading(doc: dict) -> str:
    """One paragraph computed from the summary: which paired intervals exclude zero."""
    rows, parts, counted = doc["summary"], [], 0
    names = {"beam100_minus_beam5": "the change from beam 5 to beam 100",
             "length_pct_beam5": "the beam-5 length (% of the reference)",
             "gap_pp": "the exposure gap",
             f"gap_pp_{LONG}": f"the gap for references of {LONG} pieces",
             "length_joint_gain": "what the joint length setting adds on test"}
    for key, name in names.items():
        moved = [(m, r["headline"][key]["vs_reference"]) for m, r in rows.items()
                 if m != REFERENCE and r["headline"][key]["vs_reference"]
                 and r["headline"][key]["vs_reference"]["lo"] is not None]
        apart = [f"{m} ({_d(i)})" for m, i in moved if i["lo"] > 0 or i["hi"] < 0]
        counted += len(moved)
        if moved:
            parts.append(f"For {name}, " + (f"the 95% interval excludes zero for "
                                            f"{', '.join(apart)}" if apart else
                                            "no method's 95% interval excludes zero") + ".")
    ref = rows[REFERENCE]
    drop = ref["headline"]["beam100_minus_beam5"]["mean"]
    if drop is not None:
        parts.insert(0, f"{REFERENCE}'s BLEU changes by {drop:+.2f} from beam 5 to beam 100.")
    parts.append(f"Of these {counted} intervals at 95 %, about {0.05 * counted:.1f} would "
                 "exclude zero by chance alone; with "
                 f"{len(doc['seeds'])} seeds they are wide and descriptive: the protocol draws "
                 "no claim from section 3.")
    return " ".join(parts)


def plot(doc: dict, out: Path) -> list[Path]:
    """Two figures of the means over seeds: BLEU by beam size, and the gap by reference
    length."""
    from gapless.analysis.figures import colors, finish, log2_ticks, pyplot, save

    plt, rows, methods = pyplot(), doc["summary"], doc["methods"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for m, c in zip(methods, colors(len(methods))):
        beams = [b for b, v in rows[m]["bleu_by_beam"].items() if v is not None]
        ax.plot([int(b) for b in beams], [rows[m]["bleu_by_beam"][b] for b in beams], "o-",
                color=c, label=f"{m} ({len(rows[m]['seeds'])} seeds)")
    log2_ticks(ax, sorted({int(b) for m in methods for b in rows[m]["bleu_by_beam"]}))
    finish(ax, f"BLEU by beam size, {doc['split']} (mean over seeds)", "beam size", "BLEU",
           fontsize=7)
    paths = [save(fig, out / "beam_curve.png")]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for m, c in zip(methods, colors(len(methods))):
        gaps = rows[m]["gap_pp_by_bucket"]
        ax.plot(range(len(BUCKETS)), [gaps[k] for k in BUCKETS], "o-", color=c, label=m)
    sizes = next(iter(doc["per_run"].values()))["bucket_sentences"]
    ax.set_xticks(range(len(BUCKETS)), [f"{k}\n({sizes.get(k)} sent.)" for k in BUCKETS])
    ax.axhline(0, color="grey", lw=0.8)
    finish(ax, "exposure gap by reference length (mean over seeds)",
           "reference length (subword tokens)", "gap, points", fontsize=7)
    paths.append(save(fig, out / "gap_by_length.png"))
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="the fine-tune spec whose methods are summarised")
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--split", default="test2016")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    spec = yaml.safe_load(Path(args.spec).read_text(encoding="utf-8"))
    methods = list(spec["methods"])
    if REFERENCE not in methods:
        parser.error(f"{args.spec}: the reference method {REFERENCE} is not in its methods")
    seeds = [int(s) for s in args.seeds.split(",")]
    figures, missing = {}, []
    for m in methods:
        for s in seeds:
            path = args.runs / f"{m}-s{s}" / "diagnose" / args.split / "diagnose.json"
            if path.is_file():
                figures[m, s] = per_run(json.loads(path.read_text()))
            else:
                missing.append(f"{m}-s{s}")
    if not figures:
        parser.error(f"{args.runs}: no diagnose/{args.split}/diagnose.json in any run")
    doc = {"protocol": "docs/protocols/powered_comparison.md", "split": args.split,
           "seeds": seeds, "methods": methods, "runs": relative_path(args.runs),
           "missing": missing,
           "command": (f"python experiments/diagnose_summary.py {relative_path(args.spec)} "
                       f"--runs {relative_path(args.runs)} --seeds {args.seeds} "
                       f"--split {args.split} --out {relative_path(args.out)}"),
           "per_run": {f"{m}-s{s}": f for (m, s), f in figures.items()},
           "summary": summarise(figures, methods, seeds)}
    doc["reading"] = reading(doc)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "summary.json", json.dumps(doc, indent=1))
    plot(doc, args.out)
    md = render(doc)
    atomic_write_text(args.out / "summary.md", md)
    print(md)


if __name__ == "__main__":
    main()
