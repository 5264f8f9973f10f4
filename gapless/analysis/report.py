"""Figures and a Markdown report of diagnose results, for one run or several side by side.

``diagnose_report(folder)`` turns one ``diagnose.json`` (written by
``gapless.analysis.diagnose``) into PNG figures and ``report.md`` next to it;
``compare_report(folders, out)`` puts several models on the same figures, with one report.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from ..checkpoint import atomic_write_text
from ..textio import relative_path
from .exposure import DEFINITIONS
from .figures import colors, finish, pyplot, save, style_pair
from .lengths import CHOICES, cell_rows, choice_rows

FIGURES = {
    "gap": "gap.png",
    "gap_by_length": "gap_by_length.png",
    "distractor": "distractor.png",
    "beam_sweep": "beam_sweep.png",
    "bleu_by_length": "bleu_by_length.png",
    "prefix_swap": "prefix_swap.png",
    "overcorrection": "overcorrection.png",
}


def _label(result: dict) -> str:
    return Path(result["run"]).name


def _min_tokens(result: dict) -> int:
    """Positions held by fewer sentences than this are left out of the curves (noise)."""
    return max(1, min(20, result["sentences"] // 10))


def _curve(rows: list[dict], key: str, min_tokens: int) -> tuple[list, list]:
    keep = [r for r in rows if r["tokens"] >= min_tokens and r.get(key) is not None]
    return [r["position"] for r in keep], [r[key] for r in keep]


def _tick_labels(buckets: list[str], rows: list[dict]) -> list[str]:
    """Bucket names with the first model's sentence count under them (all models share it)."""
    count = {r["bucket"]: r["sentences"] for r in rows}
    return [f"{b}\n(n={count[b]})" if b in count else b for b in buckets]


# ----------------------------------------------------------------------------------------------
# figures: each takes a list of diagnose results (one per model) and a PNG path


def plot_gap(results: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for result, color in zip(results, colors(len(results))):
        rows, m = result["gap"]["by_position"], _min_tokens(result)
        name = _label(result)
        x, tf = _curve(rows, "tf_acc", m)
        ax1.plot(x, [100 * v for v in tf], "-o", ms=3, color=color,
                 label=f"{name}: gold prefix (teacher forced)")
        x, free = _curve(rows, "free_acc", m)
        ax1.plot(x, [100 * v for v in free], "--s", ms=3, color=color,
                 label=f"{name}: own greedy output (LCS-aligned)")
        x, gap = _curve(rows, "gap", m)
        ax2.plot(x, [100 * v for v in gap], "-o", ms=3, color=color, label=name)
    style_pair(ax1, ax2,
                ("Token accuracy by target position: gold prefix vs the model's own output",
                 "token accuracy (%)"),
                ("Exposure-bias gap (teacher-forced minus free-running accuracy)",
                 "gap (percentage points)"))
    return save(fig, path)


def _buckets(rows_per_model: list[list[dict]]) -> list[str]:
    """Bucket names in order of first appearance over several models."""
    names: list[str] = []
    for rows in rows_per_model:
        names += [r["bucket"] for r in rows if r["bucket"] not in names]
    return names


def plot_gap_by_length(results: list[dict], path: Path) -> Path:
    plt = pyplot()
    buckets = _buckets([r["gap"]["by_bucket"] for r in results])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(results)
    for k, (result, color) in enumerate(zip(results, colors(len(results)))):
        rows = {r["bucket"]: r for r in result["gap"]["by_bucket"]}
        xs = [i for i, b in enumerate(buckets) if b in rows]
        name = _label(result)
        ax1.plot(xs, [100 * rows[buckets[i]]["tf_acc"] for i in xs], "-o", color=color,
                 label=f"{name}: gold prefix")
        ax1.plot(xs, [100 * rows[buckets[i]]["free_acc"] for i in xs], "--s", color=color,
                 label=f"{name}: own prefix")
        ax2.bar([i - 0.4 + width * (k + 0.5) for i in xs],
                [100 * rows[buckets[i]]["gap"] for i in xs], width, color=color, label=name)
    for ax, title, ylabel in ((ax1, "Token accuracy by reference length", "token accuracy (%)"),
                              (ax2, "Exposure-bias gap by reference length",
                               "gap (percentage points)")):
        ax.set_xticks(range(len(buckets)), _tick_labels(buckets, results[0]["gap"]["by_bucket"]))
        finish(ax, title, "reference length (subword tokens)", ylabel, fontsize=8)
    return save(fig, path)


def plot_distractor(results: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for result, color in zip(results, colors(len(results))):
        rows, m, name = result["distractor"]["by_position"], _min_tokens(result), _label(result)
        x, ref = _curve(rows, "ref_logprob", m)
        ax1.plot(x, ref, "-o", ms=3, color=color, label=f"{name}: reference")
        x, dis = _curve(rows, "distractor_logprob", m)
        ax1.plot(x, dis, "--s", ms=3, color=color, label=f"{name}: same-length distractor")
        x, margin = _curve(rows, "margin", m)
        ax2.plot(x, margin, "-o", ms=3, color=color, label=name)
    style_pair(ax1, ax2,
                ("Per-step log-probability of the reference vs a distractor (same source)",
                 "mean log p(token | source, prefix) (nats)"),
                ("Margin: how much the source still decides the next token",
                 "reference minus distractor (nats)"))
    return save(fig, path)


def plot_beam_sweep(results: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    beams: set[int] = set()
    for result, color in zip(results, colors(len(results))):
        rows, name = result["beam_sweep"]["beams"], _label(result)
        x = [r["beam"] for r in rows]
        beams.update(x)
        axes[0].plot(x, [r["bleu"] for r in rows], "-o", color=color, label=name)
        axes[1].plot(x, [r["length_ratio"] for r in rows], "-o", color=color, label=name)
        axes[2].plot(x, [100 * r["hallucination"] for r in rows], "-o", color=color,
                     label=f"{name}: hallucination")
        axes[2].plot(x, [100 * r["repetition"] for r in rows], ":^", color=color,
                     label=f"{name}: repetition")
    axes[1].axhline(1.0, color="grey", lw=0.8)
    axes[2].set_ylim(bottom=0)
    titles = ("BLEU by beam size", "Length ratio (output / reference)",
              "Hallucination and repetition")
    ylabels = ("BLEU (sacreBLEU)", "length ratio (sys_len / ref_len)", "share of outputs (%)")
    for ax, title, ylabel in zip(axes, titles, ylabels):
        ax.set_xscale("log")
        ax.set_xticks(sorted(beams), [str(b) for b in sorted(beams)])
        ax.minorticks_off()
        finish(ax, title, "beam size (log scale)", ylabel, fontsize=8)
    return save(fig, path)


def plot_bleu_by_length(results: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    buckets = _buckets([row["by_bucket"] for r in results for row in r["beam_sweep"]["beams"]])
    for result, color in zip(results, colors(len(results))):
        rows = result["beam_sweep"]["beams"]
        if len(results) > 1 and len(rows) > 2:  # several models: smallest and largest beam
            rows = [rows[0], rows[-1]]
        for style, row in zip(["-o", "--s", "-.^", ":v", "-x", "--d"] * 4, rows):
            got = {b["bucket"]: b["bleu"] for b in row["by_bucket"]}
            xs = [i for i, b in enumerate(buckets) if b in got]
            ax.plot(xs, [got[buckets[i]] for i in xs], style,
                    color=color if len(results) > 1 else None,
                    label=f"{_label(result)}: beam {row['beam']}")
    first = results[0]["beam_sweep"]["beams"]
    ax.set_xticks(range(len(buckets)),
                  _tick_labels(buckets, first[0]["by_bucket"] if first else []))
    finish(ax, "BLEU by reference length", "reference length (subword tokens)",
           "BLEU (sacreBLEU)", fontsize=8)
    return save(fig, path)


def plot_prefix_swap(results: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for result, color in zip(results, colors(len(results))):
        rows = [r for r in result["prefix_swap"] if r["sentences"]]
        name = _label(result)
        x = [100 * r["cut"] for r in rows]
        for ax, key, scale in ((ax1, "bleu", 1), (ax2, "acc", 100)):
            ax.plot(x, [scale * r["gold"][key] for r in rows], "-o", color=color,
                    label=f"{name}: after the gold prefix")
            ax.plot(x, [scale * r["model"][key] for r in rows], "--s", color=color,
                    label=f"{name}: after its own prefix")
    for ax, title, ylabel in ((ax1, "Prefix swap: BLEU of the continuation",
                               "BLEU vs reference suffix"),
                              (ax2, "Prefix swap: token accuracy of the continuation",
                               "token accuracy vs reference suffix (%)")):
        finish(ax, title, "cut point (% of the reference length)", ylabel, fontsize=8)
    return save(fig, path)


def plot_overcorrection(results: list[dict], path: Path) -> Path:
    plt = pyplot()
    keys = ("follow_gold", "restate_gold", "other", "tf_next_acc")
    names = ("follows gold\n(ignores the swap)", "restates the\ngold word", "other",
             "gold token kept\n(baseline)")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    width = 0.8 / len(results)
    for ax, subset, title in zip(axes, ("all", "model_error"),
                                 ("All positions: y_t replaced by the runner-up",
                                  "Positions the model got wrong: y_t replaced by its choice")):
        for k, (result, color) in enumerate(zip(results, colors(len(results)))):
            row = result["overcorrection"][subset]
            if not row["positions"]:
                continue
            ax.bar([i - 0.4 + width * (k + 0.5) for i in range(len(keys))],
                   [100 * row[key] for key in keys], width, color=color,
                   label=f"{_label(result)} ({row['positions']} positions)")
        ax.set_xticks(range(len(keys)), names, fontsize=8)
        ax.set_title(title, fontsize=10)
        finish(ax, xlabel="the model's next token after the substitution",
               ylabel="share of positions (%)", fontsize=8, grid_axis="y")
    fig.suptitle("Overcorrection probe: one gold-prefix token replaced by the model's alternative")
    return save(fig, path)


PLOTS = {
    "gap": plot_gap,
    "gap_by_length": plot_gap_by_length,
    "distractor": plot_distractor,
    "beam_sweep": plot_beam_sweep,
    "bleu_by_length": plot_bleu_by_length,
    "prefix_swap": plot_prefix_swap,
    "overcorrection": plot_overcorrection,
}


# ----------------------------------------------------------------------------------------------
# the report


def _table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        if v is None:
            return "-"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(v: float | None) -> float | None:
    return None if v is None else 100 * v


def _gap_row(name: str, bucket: str, g: dict) -> list:
    return [name, bucket, g["sentences"], g["tokens"], _pct(g["tf_acc"]), _pct(g["free_acc"]),
            _pct(g["gap"]), _pct(g.get("free_pos_acc")), _pct(g.get("gap_pos"))]


def _rows(results: list[dict]) -> dict[str, list[list]]:
    """The report's tables as rows of cells, one row per model (and bucket, beam, cut...)."""
    L = _label
    gap_rows = []
    for r in results:
        gap_rows.append(_gap_row(L(r), "all", r["gap"]))
        gap_rows += [_gap_row(L(r), b["bucket"], b) for b in r["gap"]["by_bucket"]]
    dis_rows = [[L(r), r["distractor"]["sentences"], r["distractor"].get("ref_logprob"),
                 r["distractor"].get("distractor_logprob"), r["distractor"].get("margin"),
                 _pct(r["distractor"].get("ref_wins"))] for r in results]
    beam_rows, bucket_rows = [], []
    for r in results:
        s = r["beam_sweep"]
        for b in s["beams"]:
            beam_rows.append([L(r), b["beam"], s["sentences"], b["bleu"], b["chrf"],
                              b["length_ratio"], _pct(b["hallucination"]), _pct(b["repetition"]),
                              _pct(b["empty"]), b["seconds"]])
            bucket_rows += [[L(r), b["beam"], x["bucket"], x["sentences"], x["bleu"]]
                            for x in b["by_bucket"]]
    swap_rows = [[L(r), f"{100 * p['cut']:.0f}%", p["sentences"], _pct(p.get("same_prefix")),
                  p.get("gold", {}).get("bleu"), p.get("model", {}).get("bleu"),
                  p.get("gold", {}).get("chrf"), p.get("model", {}).get("chrf"),
                  _pct(p.get("gold", {}).get("acc")), _pct(p.get("model", {}).get("acc"))]
                 for r in results for p in r["prefix_swap"]]
    over_rows = [[L(r), subset, o["positions"], _pct(o["follow_gold"]), _pct(o["restate_gold"]),
                  _pct(o["other"]), _pct(o["tf_next_acc"]), o["next_gold_logprob"],
                  o["next_gold_logprob_substituted"]]
                 for r in results for subset, o in r["overcorrection"].items()]
    return {"gap": gap_rows, "distractor": dis_rows, "beam": beam_rows, "bucket": bucket_rows,
            "swap": swap_rows, "over": over_rows}


def _calibration(results: list[dict]) -> str:
    return "; ".join(
        f"{_label(r)}: unrelated same-length references score "
        f"{r['beam_sweep']['unrelated_chrf']} chrF on average, "
        f"{_pct(r['beam_sweep']['unrelated_below_threshold']) or 0:.0f}% of "
        f"them below {r['beam_sweep']['hallucination_chrf']:g}" for r in results)


def _sections(results: list[dict]) -> list[str]:
    rows = _rows(results)
    return [
        "## 1. Exposure-bias gap: gold prefix vs the model's own greedy output",
        f"![gap]({FIGURES['gap']})\n\n![gap by length]({FIGURES['gap_by_length']})",
        ("Reading: the own-prefix accuracy counts a reference token as recovered when it is "
         "matched in a longest-common-subsequence alignment of the greedy output with the "
         "reference, so one inserted or dropped word does not turn every later token into an "
         "error (the stricter position-by-position figure is in the table, 'own-prefix acc, "
         "by position'). Teacher-forced accuracy asks for the exact token at the exact place; "
         "the own-prefix figure allows reordering-free shifts, so at early positions it can "
         "even exceed it. Compare the gap between models (`--compare`) and next to the prefix "
         "swap (section 5)."),
        "Token accuracy (%) by reference length bucket:",
        _table(["model", "bucket", "sentences", "tokens", "gold-prefix acc", "own-prefix acc",
                "gap (pp)", "own-prefix acc, by position", "gap by position (pp)"], rows["gap"]),
        "## 2. Reference vs same-length distractor",
        f"![distractor]({FIGURES['distractor']})",
        ("A margin that shrinks along the sentence means the source decides less and the "
         "target prefix more (Wang & Sennrich 2020); run with `--split` on an out-of-domain "
         "test set (e.g. mscoco2017) to compare domains."),
        ("Mean per-token log-probability (nats); ref wins = share of sentences whose "
         "reference is more likely than the distractor:"),
        _table(["model", "sentences", "reference", "distractor", "margin", "ref wins (%)"],
               rows["distractor"]),
        "## 3. Beam sweep",
        f"![beam sweep]({FIGURES['beam_sweep']})",
        _table(["model", "beam", "sentences", "BLEU", "chrF", "length ratio",
                "hallucination (%)", "repetition (%)", "empty (%)", "seconds"], rows["beam"]),
        f"Calibration of the hallucination threshold: {_calibration(results)}.",
        "## 4. BLEU by reference length",
        f"![BLEU by length]({FIGURES['bleu_by_length']})",
        _table(["model", "beam", "bucket", "sentences", "BLEU"], rows["bucket"]),
        "## 5. Prefix swap (He et al. 2021)",
        f"![prefix swap]({FIGURES['prefix_swap']})",
        _table(["model", "cut", "sentences", "same prefix (%)", "BLEU gold prefix",
                "BLEU own prefix", "chrF gold prefix", "chrF own prefix", "acc gold prefix (%)",
                "acc own prefix (%)"], rows["swap"]),
        "## 6. Overcorrection probe",
        f"![overcorrection]({FIGURES['overcorrection']})",
        _table(["model", "subset", "positions", "follows gold (%)", "restates gold (%)",
                "other (%)", "gold kept: next acc (%)", "log p(y_t+1), gold",
                "log p(y_t+1), swapped"], rows["over"]),
        *_where_it_bites(results),
        "## Definitions",
        "\n".join(f"- **{k}**: {v}" for k, v in DEFINITIONS.items()),
    ]


def _beam_curve(results: list[dict]) -> tuple[list[str], list[list]]:
    """BLEU (length ratio) by beam size, one column per run: (header, rows)."""
    beams = sorted({b["beam"] for r in results for b in r["beam_sweep"]["beams"]})
    per_run = [{b["beam"]: b for b in r["beam_sweep"]["beams"]} for r in results]
    rows = [[beam] + [f"{got[beam]['bleu']:.2f} ({got[beam]['length_ratio']:.3f})"
                      if beam in got else None for got in per_run] for beam in beams]
    return ["beam"] + [_label(r) for r in results], rows


def _long_sentences(results: list[dict]) -> tuple[list[str], list[list]]:
    """Exposure gap and BLEU per beam by reference length in words, a row per bucket and run
    (runs side by side within a bucket): (header, rows)."""
    beams = sorted({b["beam"] for r in results for b in r["beam_sweep"]["beams"]})
    buckets = _buckets([r["gap"].get("by_word_bucket", []) for r in results])
    gaps = [{g["bucket"]: g for g in r["gap"].get("by_word_bucket", [])} for r in results]
    bleus = [{b["beam"]: {x["bucket"]: x["bleu"] for x in b.get("by_word_bucket", [])}
              for b in r["beam_sweep"]["beams"]} for r in results]
    rows = []
    for bucket in buckets:
        for r, gap, bleu in zip(results, gaps, bleus):
            if bucket in gap:
                g = gap[bucket]
                rows.append([bucket, _label(r), g["sentences"], _pct(g["tf_acc"]),
                             _pct(g["free_acc"]), _pct(g["gap"])]
                            + [bleu.get(beam, {}).get(bucket) for beam in beams])
    header = ["reference words", "model", "sentences", "gold-prefix acc", "own-prefix acc",
              "gap (pp)"] + [f"BLEU beam {b}" for b in beams]
    return header, rows


def _length_search(results: list[dict]) -> list[str]:
    """The length settings chosen on valid and their test figures, when measured."""
    named = [(_label(r), r["length_grid"]) for r in results if "length_grid" in r]
    if not named:
        return ["Not measured: add `--length-grid` (or `--protocol`)."]
    first = named[0][1]
    header, rows = cell_rows(named)
    beams = ", ".join(f"{name}: {grid['beam']}" for name, grid in named)
    return [
        (f"Each setting is chosen on `{first['valid_split']}` by {first['chosen_by']}, at the "
         f"run's own beam size ({beams}); the test split (`{first['test_split']}`) is decoded "
         "only for the default and the chosen settings, after choosing. The columns *valid "
         "BLEU* / *valid length ratio* are the figures that chose each setting."),
        "\n".join(f"- **{k}**: {v}" for k, v in CHOICES.items()),
        _table(["model", "choice", "setting", "valid BLEU (chose it)", "valid length ratio",
                "test BLEU", "test length ratio", "test BP"], choice_rows(named)),
        "Every grid cell on valid, BLEU (length ratio):",
        _table(header, rows),
    ]


def _where_it_bites(results: list[dict]) -> list[str]:
    """Section 7: the protocol's length, beam-size and long-sentence figures, runs side by side
    (docs/protocols/powered_comparison.md section 3)."""
    curve, long = _beam_curve(results), _long_sentences(results)
    return [
        "## 7. Where exposure bias bites: length, beam size, long sentences",
        "### Length",
        ("The length ratio of each run at every beam is in the beam-size table below (and in "
         "the beam sweep, section 3 above); the search's own effect on length:"),
        *_length_search(results),
        "### Beam size",
        "BLEU (length ratio) by beam size:",
        _table(*curve),
        "### Long sentences",
        ("Token accuracy (%) and the exposure-bias gap of the greedy output, and BLEU at each "
         "beam (on the beam sweep's sentences), by reference length in words:"),
        _table(*long),
    ]


def _write_report(results: list[dict], out: Path, title: str, command: str, intro: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for key, plot in PLOTS.items():
        plot(results, out / FIGURES[key])
    text = "\n\n".join([f"# {title}", f"Regenerate with:\n\n```\n{command}\n```", intro,
                        *_sections(results)]) + "\n"
    atomic_write_text(out / "report.md", text)
    return out / "report.md"


def _intro(result: dict) -> str:
    seconds = result.get("seconds", {})
    timing = ", ".join(f"{k} {v} s" for k, v in seconds.items())
    return (f"- **{_label(result)}** (`{result['run']}`): {result['sentences']} of "
            f"{result['corpus_sentences']} sentences of `{result['split']}`; measured in "
            f"{result['total_seconds']} s ({timing}).")


def diagnose_report(folder: str | Path) -> Path:
    """Figures + report.md for the diagnose.json in ``folder``; returns the report's path."""
    folder = Path(folder)
    result = json.loads((folder / "diagnose.json").read_text())
    return _write_report([result], folder, f"Exposure-bias diagnosis: {_label(result)} on "
                         f"{result['split']}", result["command"], _intro(result))


def compare_report(folders: list[str | Path], out: str | Path) -> Path:
    """Several diagnose.json folders on the same figures, one report in ``out``."""
    results = [json.loads((Path(f) / "diagnose.json").read_text()) for f in folders]
    splits = sorted({r["split"] for r in results})
    s = results[0]["settings"]
    command = ["gapless", "diagnose", "--compare", *[r["run"] for r in results], "--out",
               relative_path(out), "--split", s["split"], "--beams", ",".join(map(str, s["beams"]))]
    if s["max_sentences"] is not None:
        command += ["--max-sentences", str(s["max_sentences"])]
    if s.get("sweep_sentences") is not None:
        command += ["--sweep-sentences", str(s["sweep_sentences"])]
    if s.get("length_grid"):
        command += ["--length-grid"]
    title = f"Exposure-bias comparison on {', '.join(splits)}: " + ", ".join(map(_label, results))
    intro = "\n".join(_intro(r) for r in results)
    if any(r["settings"] != s for r in results):
        intro += ("\n\n**Warning**: the runs were measured with different settings "
                  "(split, sentences, beams or checkpoint); their numbers are not comparable.")
    return _write_report(results, Path(out), title, shlex.join(command), intro)
