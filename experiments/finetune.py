"""Equal-length fine-tunes of one trained base, per method and seed, evaluated on test splits
(issue 3's CPU protocol): a mean +- sd table of sacreBLEU per split, never selected on test.

    python experiments/finetune.py configs/finetune/multi30k_de_en.yaml --base RUN --runs DIR

The spec (YAML) names the seeds, the splits, dotted overrides common to every method and the
overrides of each method; each run starts from the base's best weights (``--init-from``), with
a fresh optimizer, and is evaluated at its *last* checkpoint (equal length: no selection at
all). Finished runs are skipped, so a killed sweep resumes. Output: ``DIR/results.json`` and a
Markdown table on stdout (``--markdown FILE`` writes it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import yaml

from gapless.checkpoint import RunDir, atomic_write_text
from gapless.evaluate import evaluate, score_split
from gapless.inference import load
from gapless.training import train

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


def table(spec: dict, base: dict, results: list[dict]) -> str:
    """Markdown: one row per method, mean +- sd (n) of BLEU per split, plus the logged mixing
    figures (fraction replaced, fed predictions != gold, oracle BLEU, s/update, and the share of
    the step spent in the strategy's call)."""
    splits = spec["splits"]
    head = ["method", "seeds"] + splits + ["valid (last)", "replaced", "pred != gold",
                                          "oracle BLEU", "s/update", "strategy share"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
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
    signature = next(iter(base["scores"].values()))["signature"]
    return "\n".join(lines) + f"\n\nsacreBLEU signature: `{signature}`\n"


def paired_table(spec: dict, results: list[dict], reference: str = "teacher_forcing") -> str:
    """Markdown: per method, BLEU minus the reference method's BLEU *of the same seed* (same
    data order and initial weights), mean ± sd and how many seeds gained, per split."""
    splits = spec["splits"]
    ref = {r["seed"]: r for r in results if r["method"] == reference}
    lines = ["| method - " + reference + " | " + " | ".join(splits) + " |",
             "|" + "---|" * (len(splits) + 1)]
    for method in spec["methods"]:
        rows = [r for r in results if r["method"] == method and r["seed"] in ref]
        if method == reference or not rows:
            continue
        cells = []
        for split in splits:
            d = [r["scores"][split]["bleu"] - ref[r["seed"]]["scores"][split]["bleu"]
                 for r in rows]
            sd = statistics.stdev(d) if len(d) > 1 else 0.0
            cells.append(f"{statistics.fmean(d):+.2f} ± {sd:.2f} ({sum(x > 0 for x in d)}/"
                         f"{len(d)} up)")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec")
    parser.add_argument("--base", required=True, help="the trained run to fine-tune")
    parser.add_argument("--runs", required=True, help="where the fine-tuned runs go")
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--seeds", help="comma-separated subset of the spec's seeds")
    parser.add_argument("--methods", help="comma-separated subset of the spec's methods")
    args = parser.parse_args()
    spec = yaml.safe_load(Path(args.spec).read_text())
    base, runs = Path(args.base), Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else spec["seeds"]
    methods = args.methods.split(",") if args.methods else list(spec["methods"])
    base_row = base_scores(spec, base, runs)
    results = []
    for seed in seeds:  # seed-major: every method has n seeds before any has n + 1
        for method in methods:
            results.append(run_one(spec, base, runs / f"{method}-s{seed}", method, seed))
            print(json.dumps({k: results[-1][k] for k in ("method", "seed", "scores")}),
                  flush=True)
    md = table(spec, base_row, results)
    if any(r["method"] == "teacher_forcing" for r in results):
        md += "\nPaired by seed:\n\n" + paired_table(spec, results)
    atomic_write_text(runs / "results.json", json.dumps(
        {"spec": spec, "base": str(base), "base_scores": base_row, "runs": results}, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(md)
    print(md)


if __name__ == "__main__":
    main()
