"""Data at scale: ``gapless prepare`` and training start-up on corpora of N pairs; one JSON document.

For each size N a corpus of N pairs is drawn (with replacement, fixed seed) from the training
pairs of the shared corpora (``../shared/data``: multi30k, msctd-de-en, multidomain-de-en,
iwslt14-de-en, those present) into ``--work-dir`` (outside the repository), with multi30k's
valid split. Then, each in a fresh process (``python -m gapless ...`` run in the code's tree):

* ``gapless prepare``: wall time; peak RSS of the process (VmHWM), of its largest worker, and of
  the whole process tree (sum of VmRSS), sampled every 50 ms;
* ``gapless train`` of the preset for ``--updates`` updates logged every update on the prepared
  run: start-up (process start to the first update's log record), peak RSS, and the median
  target tokens/s of the updates after the first.

The same two steps run first on the preset's own corpus (Multi30k from ``--shared``): the
reference row for the targets. With ``--baseline REV`` the first size is measured again with the
code of commit REV, extracted read-only with ``git archive`` into the work dir and run from there
(its ``gapless`` package is the one imported), side by side.

The document ends with the issue's targets, each with the figures it compares and whether it is
met: training peak RSS at the largest size within ``RSS_MARGIN_MB`` of the reference's;
training start-up at the largest size at most ``STARTUP_S``; every size's median target
tokens/s inside the reference's inter-quartile range of per-update rates (its noise); the
prepare process tree's peak RSS at most ``PREPARE_TREE_MB`` at every size; prepare seconds per
million pairs at most ``PREPARE_S_PER_M``.

    python -m benchmarks.data_scale --sizes 1000000,5000000,10000000 --work-dir /tmp/scale \
        --baseline HEAD~1
    python -m benchmarks.data_scale --sizes 20000 --updates 3 --work-dir /tmp/scale  # smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, emit, finish, machine, relpath, say

CORPORA = ("multi30k", "msctd-de-en", "multidomain-de-en", "iwslt14-de-en")
RSS_MARGIN_MB, STARTUP_S, PREPARE_TREE_MB, PREPARE_S_PER_M = 300, 20, 1536, 47
TRAIN = {"train.max_minutes": 0, "train.log_every": 1, "train.valid_every": 10**9,
         "train.save_every": 10**9, "train.valid_max_sentences": 1, "train.valid_beam": 1,
         "train.keep_last": 1, "train.progress": "false"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000000,5000000,10000000", help="pairs, comma-separated")
    p.add_argument("--work-dir", required=True, help="corpora and runs (outside the repository)")
    p.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--preset", default="multi30k_de_en")
    p.add_argument("--updates", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--baseline", help="a commit whose code is measured on the first size too")
    p.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                   help="measure the preset's own corpus first (the targets' reference row)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a dotted config override for every run (repeatable)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--corpora", default=",".join(CORPORA),
                   help="the shared corpora the pairs are drawn from, comma-separated; "
                        "'multi30k' alone gives the reference's length distribution, so that "
                        "tokens/s compares the data path only")
    args = p.parse_args(argv)
    args.corpora = tuple(c for c in args.corpora.split(",") if c)
    unknown = sorted(set(args.corpora) - set(CORPORA))
    if unknown or not args.corpora:
        p.error(f"--corpora: {', '.join(unknown) or 'none given'}; known: {', '.join(CORPORA)}")
    return args


# -- corpora --------------------------------------------------------------------------------


def pool(shared: Path, corpora=CORPORA) -> tuple[list[str], list[str], list[str]]:
    """(source lines, target lines, files) of every training split of ``corpora`` found."""
    from gapless.data import read_parallel

    src, tgt, names = [], [], []
    for name in corpora:
        for de in sorted((shared / name).glob("*train.de")):
            en = de.with_name(de.name[: -len("de")] + "en")
            if en.is_file():
                s, t = read_parallel(de, en)
                src += s
                tgt += t
                names.append(relpath(de))
    if not src:
        raise SystemExit(f"no training split of {', '.join(corpora)} under {shared}")
    return src, tgt, names


def build_corpus(folder: Path, n: int, lines: tuple[list, list], valid: tuple[list, list],
                 seed: int) -> dict:
    """``folder``/train.{de,en} of ``n`` pairs drawn with replacement, and valid.{de,en};
    kept when a complete one is there."""
    done = folder / "DONE"
    start = time.perf_counter()
    if not done.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        rng = np.random.default_rng([seed, n])
        with open(folder / "train.de", "w") as de, open(folder / "train.en", "w") as en:
            for first in range(0, n, 100_000):
                idx = rng.integers(0, len(lines[0]), min(100_000, n - first)).tolist()
                de.write("".join(lines[0][i] + "\n" for i in idx))
                en.write("".join(lines[1][i] + "\n" for i in idx))
        for lang, side in (("de", valid[0]), ("en", valid[1])):
            (folder / f"valid.{lang}").write_text("".join(x + "\n" for x in side))
        done.write_text(str(n))
    size = sum((folder / f"train.{lang}").stat().st_size for lang in ("de", "en"))
    return {"dir": relpath(folder), "train_bytes": size,
            "build_s": round(time.perf_counter() - start, 1)}


def valid_split(shared: Path, lines: tuple[list, list]) -> tuple[list, list]:
    from gapless.data import read_parallel

    de, en = shared / "multi30k" / "valid.de", shared / "multi30k" / "valid.en"
    if de.is_file() and en.is_file():
        return read_parallel(de, en)
    return lines[0][:500], lines[1][:500]


# -- measuring a process --------------------------------------------------------------------


def _status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS (kB) of a live process; {} once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in text.splitlines())
            if k in ("VmHWM", "VmRSS")}


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for children in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                kids = [int(k) for k in children.read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _first_update(log: Path) -> bool:
    try:
        return '"kind": "train"' in log.read_text()
    except OSError:
        return False


def measure(cmd: list[str], cwd: Path, output: Path, run_log: Path | None = None) -> dict:
    """Run ``cmd`` in ``cwd`` (its output to ``output``): wall time, peak RSS of the process,
    of its largest descendant and of the tree, and (``run_log``) seconds to the first update."""
    start = time.perf_counter()
    with open(output, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    main = largest_child = tree = 0
    first = None
    while proc.poll() is None:
        own = _status(proc.pid)
        kids = [_status(k) for k in _descendants(proc.pid)]
        main = max(main, own.get("VmHWM", 0))
        largest_child = max([largest_child] + [k.get("VmHWM", 0) for k in kids])
        tree = max(tree, own.get("VmRSS", 0) + sum(k.get("VmRSS", 0) for k in kids))
        if run_log is not None and first is None and _first_update(run_log):
            first = round(time.perf_counter() - start, 2)
        time.sleep(0.05)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[2:5])}: exit {proc.returncode}; see {output}")
    result = {"wall_s": round(time.perf_counter() - start, 2), "peak_rss_mb": round(main / 1024),
              "largest_child_peak_rss_mb": round(largest_child / 1024),
              "tree_peak_rss_mb": round(tree / 1024)}
    if run_log is not None:
        result["startup_s"] = first
    return result


# -- one size, one code tree ----------------------------------------------------------------


def run_size(args, tree: Path, corpus: Path | None, run: Path) -> dict:
    """prepare, then train, with the code in ``tree`` on ``corpus`` (None: the preset's own,
    found under ``--shared``)."""
    shutil.rmtree(run, ignore_errors=True)
    run.parent.mkdir(parents=True, exist_ok=True)
    data = (["--data.corpus", str(corpus), "--data.valid_split", "valid"] if corpus is not None
            else ["--data.data_dir", str(Path(args.shared).resolve())])
    for item in args.set:
        key, value = item.split("=", 1)
        data += [f"--{key}", value]
    gapless = [sys.executable, "-m", "gapless"]
    # a tree before presets were package data names the config file
    preset = args.preset if (tree / "gapless" / "presets").is_dir() else str(
        tree / "configs" / f"{args.preset}.yaml")
    say("data_scale", f"prepare {relpath(corpus) if corpus else args.preset} with {relpath(tree)}")
    prepared = measure([*gapless, "-v", "prepare", preset, "--run-dir", str(run), *data],
                       tree, run.with_suffix(".prepare.txt"))
    settings = {**TRAIN, "train.max_updates": args.updates, "train.threads": args.threads,
                "train.device": args.device}
    extra = [x for k, v in settings.items() for x in (f"--{k}", str(v))]
    say("data_scale", f"train {args.updates} updates")
    trained = measure([*gapless, "train", preset, "--run-dir", str(run), *data, *extra],
                      tree, run.with_suffix(".train.txt"), run / "log.jsonl")
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    rates = [r["tgt_tokens_per_s"] for r in records if r["kind"] == "train" and r["update"] > 1]
    trained["tgt_tokens_per_s_median"] = round(statistics.median(rates)) if rates else None
    if len(rates) > 1:
        q25, _, q75 = statistics.quantiles(rates, n=4)
        trained["tgt_tokens_per_s_iqr"] = [round(q25), round(q75)]
    trained["updates"] = max((r["update"] for r in records if r["kind"] == "train"), default=0)
    report = json.loads((run / "data" / "prepare.json").read_text())
    summary = report["train_summary"]
    prepared["train_summary"] = summary.replace(str(corpus), relpath(corpus)) if corpus else summary
    prepared["pairs_read"] = report["train"]["read"]
    return {"prepare": prepared, "train": trained}


def targets(doc: dict) -> list[dict]:
    """The issue's targets against the measured figures: each with ``met``."""
    sizes, ref = doc["sizes"], doc.get("reference")
    last = sizes[-1]["current"] if sizes else None
    found = []
    if ref and last:
        gap = last["train"]["peak_rss_mb"] - ref["current"]["train"]["peak_rss_mb"]
        found.append({"target": f"training peak RSS at {sizes[-1]['pairs']} pairs within "
                      f"{RSS_MARGIN_MB} MB of the reference's", "above_reference_mb": gap,
                      "met": gap <= RSS_MARGIN_MB})
        low, high = ref["current"]["train"].get("tgt_tokens_per_s_iqr", [None, None])
        medians = [e["current"]["train"]["tgt_tokens_per_s_median"] for e in sizes]
        found.append({"target": "median target tok/s of every size inside the reference's "
                      "inter-quartile range of per-update rates", "range": [low, high],
                      "medians": medians, "met": low is not None and all(
                          m is not None and low <= m <= high for m in medians)})
    if last:
        startup = last["train"]["startup_s"]
        found.append({"target": f"training start-up at {sizes[-1]['pairs']} pairs at most "
                      f"{STARTUP_S} s", "startup_s": startup,
                      "met": startup is not None and startup <= STARTUP_S})
    tree = [e["current"]["prepare"]["tree_peak_rss_mb"] for e in sizes]
    found.append({"target": f"prepare process tree peak RSS at most {PREPARE_TREE_MB} MB at "
                  "every size", "tree_peak_rss_mb": tree,
                  "met": all(t <= PREPARE_TREE_MB for t in tree)})
    big = [e for e in sizes if e["pairs"] >= 10**6]  # below, fixed costs dominate
    per_m = [round(e["current"]["prepare"]["wall_s"] / (e["pairs"] / 1e6), 1) for e in big]
    found.append({"target": f"prepare at most {PREPARE_S_PER_M} s per million pairs (sizes "
                  "of a million pairs and more)", "s_per_million": per_m,
                  "met": all(x <= PREPARE_S_PER_M for x in per_m) if big else None})
    return found


def table(doc: dict) -> str:
    """The figures as text rows (reference first), for the terminal."""
    rows = []
    entries = ([("reference", doc["reference"])] if doc.get("reference") else []) + [
        (f"{e['pairs']}", e) for e in doc["sizes"]]
    for name, entry in entries:
        for code in ("current", "baseline"):
            if code in entry:
                p, t = entry[code]["prepare"], entry[code]["train"]
                rows.append(f"{name:>10} {code:>8}  prepare {p['wall_s']:7.1f} s  main "
                            f"{p['peak_rss_mb']:5d} MB  tree {p['tree_peak_rss_mb']:5d} MB | "
                            f"train start {t['startup_s']} s  peak {t['peak_rss_mb']:5d} MB  "
                            f"tok/s {t['tgt_tokens_per_s_median']}")
    verdict = {True: "met", False: "NOT met", None: "no size to judge"}
    rows += [f"{verdict[t['met']]}: {t['target']}" for t in doc["targets"]]
    return "\n".join(rows)


def baseline_tree(rev: str, work: Path) -> tuple[Path, str]:
    """The code of commit ``rev``, extracted with ``git archive`` (the repository untouched)."""
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.strip()
    dest = work / f"baseline-{commit}"
    if not (dest / "gapless" / "__init__.py").is_file():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        archive = subprocess.Popen(["git", "archive", commit], cwd=REPO, stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
        if archive.wait():
            raise SystemExit(f"git archive {commit} failed")
    return dest, commit


def main(argv=None) -> int:
    args = parse_args(argv)
    work, shared = Path(args.work_dir).resolve(), Path(args.shared).resolve()
    if work.is_relative_to(REPO):
        raise SystemExit("--work-dir must lie outside the repository")
    sizes = [int(s) for s in args.sizes.split(",")]
    info = machine(args.threads)
    src, tgt, files = pool(shared, args.corpora)
    valid = valid_split(shared, (src, tgt))
    doc = {"machine": info, "protocol": {
        "pool_corpora": list(args.corpora), "pool_files": files, "pool_pairs": len(src), "valid_pairs": len(valid[0]),
        "preset": args.preset, "updates": args.updates, "overrides": args.set,
        "sampling": "pairs drawn uniformly with replacement", "rss_sampling_s": 0.05},
        "sizes": []}
    if args.reference:
        say("data_scale", "reference: the preset's own corpus")
        measured = run_size(args, REPO, None, work / "runs" / "reference")
        doc["reference"] = {"corpus": f"the {args.preset} preset's own",
                            "pairs": measured["prepare"]["pairs_read"], "current": measured}
    for i, n in enumerate(sizes):
        say("data_scale", f"{n} pairs")
        drawn = "" if args.corpora == CORPORA else "-" + "+".join(args.corpora)
        corpus = work / f"corpus-{n}{drawn}"
        entry = {"pairs": n, "corpus": build_corpus(corpus, n, (src, tgt), valid, args.seed)}
        entry["current"] = run_size(args, REPO, corpus, work / "runs" / f"current-{n}")
        if i == 0 and args.baseline:
            tree, commit = baseline_tree(args.baseline, work)
            entry["baseline"] = {"commit": commit,
                                 **run_size(args, tree, corpus, work / "runs" / f"base-{n}")}
        doc["sizes"].append(entry)
    doc["targets"] = targets(doc)
    say("data_scale", "\n" + table(doc))
    # the work folder is the machine's: the JSON names it WORK
    doc = json.loads(json.dumps(finish(doc)).replace(relpath(work) + "/", "WORK/"))
    emit(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
