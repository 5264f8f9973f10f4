"""gapless bf16 against the run exported to CTranslate2 (float32 and int8), each measurement in
its own fresh process; prints one JSON document.

    python -m benchmarks.ct2_speed runs/NAME --split test2016 --beam 5 --layouts 1x2,2x1

The run's checkpoint is exported (``gapless.export.export``) into a temporary directory,
``--quantization float32`` and ``int8``; then each of ``--engines`` (``gapless_bf16``:
``gapless.inference.load(run, dtype="bf16")``; ``ct2_float32`` / ``ct2_int8``:
``gapless.export.CTranslate2Engine`` with compute type "default") translates the whole split in
each of ``--layouts``, text in -> text out (SentencePiece encode, search, decode), at ``--beam``
with the run's own length settings, ``--batch-size`` sentences per batch (sorted by length).

A layout ``INTERxINTRA`` is INTER workers of INTRA threads each (default ``1xTHREADS``):

* CTranslate2: one process holding ``ctranslate2.Translator(inter_threads=INTER,
  intra_threads=INTRA)``, every batch queued at once (``2x1`` is CTranslate2's advice for
  throughput on CPU);
* gapless: INTER processes of INTRA torch threads each; the sentences, sorted by source pieces,
  are dealt to them in turn (so each gets the same mix of lengths), each translates its share in
  input order, and the answers are merged back into input order (BLEU is of the whole split).

Every (engine, layout) measurement runs in fresh child processes (``benchmarks.common.
child_json``; ``OMP_NUM_THREADS`` = INTRA), so no engine's threads or memory are in another's
process. A child loads its model, translates two untimed warm-up batches of its sentences, then
waits at a barrier until every worker of the measurement is ready; the time of a measurement
runs from the first worker's start to the last worker's end (``time.monotonic``, one clock for
all processes). ``--repeat`` rounds in one sitting, ``--pause`` seconds of rest before each
measurement; the order is reversed every other round (A B C, C B A, ...), so that a drift of
the machine's speed falls on every measurement alike. Reported per engine and layout:
sentences/s (median over the rounds), mean hypothesis pieces, BLEU / chrF (sacreBLEU,
``gapless.metrics.corpus_scores``); the shares of identical hypotheses (int8 against float32,
CTranslate2 float32 against gapless bf16, each engine's layouts against its first); and the
ratios of the issue's targets, between the fastest layout of each engine and within each
layout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from benchmarks import peers
from benchmarks.common import (
    child_json,
    emit,
    finish,
    machine,
    peak_rss_mb,
    relpath,
    reply,
    run_config,
    say,
    split_lines,
)

GAPLESS = "gapless_bf16"
QUANTIZATIONS = {"ct2_float32": "float32", "ct2_int8": "int8"}
ENGINES = (GAPLESS, *QUANTIZATIONS)
TARGET_SPEEDUP = 1.5  # CTranslate2 int8 over gapless bf16
TARGET_BLEU = 0.3  # |BLEU int8 - BLEU gapless bf16| at most
BARRIER_TIMEOUT = 300.0  # seconds a worker waits for the others to be ready


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run directory (runs/NAME)")
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--split", default="test2016")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    p.add_argument("--threads", type=int, default=2, help="threads of the default layout")
    p.add_argument("--max-sentences", type=int, default=0, help="first N sentences (0: all)")
    p.add_argument("--repeat", type=int, default=1, help="timed passes per engine and layout")
    p.add_argument("--pause", type=float, default=1.0,
                   help="seconds of rest before each measurement")
    p.add_argument("--layouts", default="",
                   help="thread layouts INTERxINTRA of every engine, comma-separated "
                        "(default: 1xTHREADS)")
    p.add_argument("--engines", default=",".join(ENGINES),
                   help=f"comma-separated, of {', '.join(ENGINES)}")
    p.add_argument("--out", default="", help="also write the JSON document here")
    # a child process: one worker of one measurement (see ``worker``)
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--model", default="", help=argparse.SUPPRESS)
    p.add_argument("--shard", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--barrier", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.layouts = parse_layouts(args.layouts, args.threads)
    args.engines = parse_engines(args.engines)
    return args


def parse_layouts(text: str, threads: int) -> list[tuple[int, int]]:
    """``"1x2,2x1"`` -> [(1, 2), (2, 1)] (workers, threads per worker); empty: one worker on
    ``threads`` threads."""
    if not text.strip():
        return [(1, threads)]
    layouts = []
    for part in text.split(","):
        inter, _, intra = part.strip().lower().partition("x")
        if not (inter.isdigit() and intra.isdigit() and int(inter) > 0 and int(intra) > 0):
            raise SystemExit(f"--layouts: {part!r} is not INTERxINTRA (e.g. 2x1)")
        layouts.append((int(inter), int(intra)))
    return layouts


def parse_engines(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENGINES]
    if unknown or not names:
        raise SystemExit(f"--engines: {unknown or text!r}: not of {', '.join(ENGINES)}")
    return list(dict.fromkeys(names))


def layout_name(layout: tuple[int, int]) -> str:
    return f"{layout[0]}x{layout[1]}"


# -- sharing the sentences among workers ----------------------------------------------------


def shards(lengths: list[int], n: int) -> list[list[int]]:
    """Sentence indices for ``n`` workers: sorted by length (ties by index), dealt in turn, so
    each worker gets the same mix of lengths; each share in input order. ``n`` 1: all."""
    by_length = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [sorted(by_length[k::n]) for k in range(n)]


def merge(indices: list[list[int]], parts: list[list], total: int) -> list:
    """The workers' answers (``parts[k][j]`` is sentence ``indices[k][j]``) in input order;
    every sentence exactly once."""
    out: list = [None] * total
    seen = 0
    for index, part in zip(indices, parts, strict=True):
        if len(index) != len(part):
            raise ValueError(f"{len(part)} answers for {len(index)} sentences")
        for i, item in zip(index, part):
            if out[i] is not None:
                raise ValueError(f"sentence {i} answered twice")
            out[i] = item
            seen += 1
    if seen != total:
        raise ValueError(f"{seen} of {total} sentences answered")
    return out


# -- a child process: one worker ------------------------------------------------------------


def wait_for_all(barrier: Path, shard: int, workers: int) -> None:
    """Say this worker is ready and wait until all ``workers`` are."""
    (barrier / f"ready.{shard}").touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT
    while len(list(barrier.glob("ready.*"))) < workers:
        if (barrier / "abort").exists():
            raise SystemExit(f"{barrier}: another worker failed")
        if time.monotonic() > deadline:
            raise SystemExit(f"{barrier}: the other workers were not ready in time")
        time.sleep(0.001)


def load_worker_engine(args, layout: tuple[int, int]):
    inter, intra = layout
    if args.worker == GAPLESS:
        import torch

        from gapless.inference import load

        torch.set_num_threads(intra)
        return load(args.run, args.checkpoint, "cpu", "bf16")
    from gapless.export import CTranslate2Engine

    return CTranslate2Engine(args.model, "cpu", "default", intra, inter_threads=inter)


def worker(args) -> int:
    """One worker of one measurement: load, warm up, wait for the others, translate this
    worker's share of the split once (timed); reply with the answers and the times."""
    layout = args.layouts[0]
    engine = load_worker_engine(args, layout)
    src, _, _ = split_lines(args.run, args.split, args.max_sentences)
    ids = engine.vocab.encode(src)
    processes = layout[0] if args.worker == GAPLESS else 1
    index = shards([len(s) for s in ids], processes)[args.shard]
    part = [src[i] for i in index]
    kwargs = {"beam": args.beam, "batch_size": args.batch_size}
    engine.translate(part[: 2 * args.batch_size], **kwargs)  # each of two workers gets one
    wait_for_all(Path(args.barrier), args.shard, processes)
    start = time.monotonic()
    hyp_ids = engine.translate_ids(engine.vocab.encode(part), **kwargs)
    texts = engine.vocab.decode(hyp_ids)
    end = time.monotonic()
    described = engine.describe()
    reply({"pid": os.getpid(), "shard": args.shard, "index": index, "texts": texts,
           "pieces": [len(h) for h in hyp_ids], "start": start, "end": end,
           "checkpoint": described["checkpoint"], "peak_rss_mb": peak_rss_mb()})
    return 0


# -- the parent: measurements in child processes --------------------------------------------


def worker_args(args, engine: str, layout: tuple[int, int], model: str, shard: int,
                barrier: Path) -> list[str]:
    return [str(Path(args.run).resolve()), "--checkpoint", args.checkpoint, "--split", args.split,
            "--beam", str(args.beam), "--batch-size", str(args.batch_size),
            "--max-sentences", str(args.max_sentences), "--layouts", layout_name(layout),
            "--worker", engine, "--model", model, "--shard", str(shard),
            "--barrier", str(barrier)]  # fmt: skip


def measure_once(args, engine: str, layout: tuple[int, int], model: str, barrier: Path,
                 total: int) -> dict:
    """One measurement: its workers in fresh processes, started together; wall seconds from
    the first start to the last end, the answers merged into input order."""
    processes = layout[0] if engine == GAPLESS else 1
    barrier.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(layout[1])}
    with ThreadPoolExecutor(processes) as pool:
        futures = [pool.submit(child_json, "benchmarks.ct2_speed",
                               worker_args(args, engine, layout, model, k, barrier), env)
                   for k in range(processes)]
        for future in as_completed(futures):
            if future.exception() is not None:  # the others stop waiting for it
                (barrier / "abort").touch()
        answers = [future.result() for future in futures]
    indices = [a["index"] for a in answers]
    starts, ends = [a["start"] for a in answers], [a["end"] for a in answers]
    return {
        "seconds": max(ends) - min(starts), "start_skew_s": max(starts) - min(starts),
        "texts": merge(indices, [a["texts"] for a in answers], total),
        "pieces": merge(indices, [a["pieces"] for a in answers], total),
        "workers": [{"pid": a["pid"], "sentences": len(a["index"]),
                     "seconds": round(a["end"] - a["start"], 3),
                     "peak_rss_mb": a["peak_rss_mb"]} for a in answers],
        "checkpoint": answers[0]["checkpoint"],
    }  # fmt: skip


def round_order(units: list, i: int) -> list:
    """Round ``i``'s order: as given, reversed every other round (A B C, C B A)."""
    return list(units) if i % 2 == 0 else list(units)[::-1]


def export_models(args, folder: Path) -> dict[str, str]:
    """{engine: exported directory} of the CTranslate2 engines asked for."""
    from gapless.export import export

    models = {}
    for name in args.engines:
        if name in QUANTIZATIONS:
            say("ct2_speed", f"export {QUANTIZATIONS[name]} ...")
            models[name] = str(export(args.run, folder / QUANTIZATIONS[name], args.checkpoint,
                                      QUANTIZATIONS[name]))
    return models


def measure(args, folder: Path, total: int) -> dict:
    """{(engine, layout): [one ``measure_once`` per round]}."""
    models = export_models(args, folder)
    units = [(engine, layout) for layout in args.layouts for engine in args.engines]
    found: dict = {unit: [] for unit in units}
    for i in range(args.repeat):
        for engine, layout in round_order(units, i):
            time.sleep(args.pause)
            barrier = folder / f"barrier_{i}_{engine}_{layout_name(layout)}"
            one = measure_once(args, engine, layout, models.get(engine, ""), barrier, total)
            found[(engine, layout)].append(one)
            say("ct2_speed", f"round {i + 1}: {engine} {layout_name(layout)}: "
                f"{total / one['seconds']:.1f} sent/s")
    return found


def row(engine: str, layout: tuple[int, int], runs: list[dict], ref: list[str]) -> dict:
    from gapless.metrics import corpus_scores

    last = runs[-1]
    n = len(last["texts"])
    seconds = [r["seconds"] for r in runs]
    secs = statistics.median(seconds)
    score = corpus_scores(last["texts"], ref)
    return {
        "engine": engine, "layout": layout_name(layout),
        "processes": len(last["workers"]), "workers": layout[0], "threads_per_worker": layout[1],
        "sentences": n, "seconds": round(secs, 3), "sent_s": round(n / secs, 2),
        "sent_s_runs": [round(n / s, 2) for s in seconds],
        "start_skew_s_runs": [round(r["start_skew_s"], 4) for r in runs],
        "worker_sentences": [w["sentences"] for w in last["workers"]],
        "worker_seconds_runs": [[w["seconds"] for w in r["workers"]] for r in runs],
        "peak_rss_mb_per_process": max(w["peak_rss_mb"] for r in runs for w in r["workers"]),
        "peak_rss_mb_all_processes": round(max(sum(w["peak_rss_mb"] for w in r["workers"])
                                               for r in runs), 1),
        "mean_hyp_pieces": round(sum(last["pieces"]) / max(n, 1), 2),
        "same_hypotheses_every_round": all(r["texts"] == last["texts"] for r in runs),
        "bleu": score.bleu, "chrf": score.chrf,
    }  # fmt: skip


def identical(a: list, b: list) -> float:
    """Share of positions where ``a`` and ``b`` hold the same hypothesis."""
    return round(sum(x == y for x, y in zip(a, b)) / max(len(a), 1), 4)


def agreement(texts: dict, engines: list[str], layouts: list[str]) -> dict:
    """Shares of identical hypotheses: int8 / float32 and CTranslate2 float32 / gapless bf16
    (first layout), and each engine's other layouts against its first."""
    first = layouts[0]
    out = {}
    pairs = (("int8_vs_float32", "ct2_int8", "ct2_float32"),
             ("ct2_float32_vs_gapless_bf16", "ct2_float32", GAPLESS))
    for key, a, b in pairs:
        if a in engines and b in engines:
            out[key] = identical(texts[(a, first)], texts[(b, first)])
    for engine in engines:
        for layout in layouts[1:]:
            out[f"{engine}_{layout}_vs_{first}"] = identical(texts[(engine, layout)],
                                                             texts[(engine, first)])
    return out


def compare(rows: dict, layout_of: dict) -> dict:
    """The issue's ratios between the rows ``layout_of`` picks per engine: int8 / gapless bf16
    sentences/s (target >= 1.5) with the BLEU difference (target |d| <= 0.3), gapless bf16 /
    CTranslate2 float32 (target >= 1)."""
    out: dict = {"layouts": dict(layout_of)}
    pick = {engine: rows[(engine, layout)] for engine, layout in layout_of.items()}
    if GAPLESS in pick and "ct2_int8" in pick:
        ratio = pick["ct2_int8"]["sent_s"] / pick[GAPLESS]["sent_s"]
        bleu = pick["ct2_int8"]["bleu"] - pick[GAPLESS]["bleu"]
        out.update(int8_over_gapless_bf16=round(ratio, 3),
                   int8_speed_target_met=ratio >= TARGET_SPEEDUP,
                   bleu_int8_minus_gapless_bf16=round(bleu, 2),
                   int8_bleu_target_met=abs(bleu) <= TARGET_BLEU + 1e-9)
    if GAPLESS in pick and "ct2_float32" in pick:
        ratio = pick[GAPLESS]["sent_s"] / pick["ct2_float32"]["sent_s"]
        out.update(gapless_bf16_over_ct2_float32=round(ratio, 3),
                   gapless_vs_float32_target_met=ratio >= 1.0)
    return out


def targets(rows: dict, engines: list[str], layouts: list[str]) -> dict:
    """The ratios at each engine's fastest layout (picked on sentences/s), and within each
    layout."""
    best = {engine: max(layouts, key=lambda lay: rows[(engine, lay)]["sent_s"])
            for engine in engines}
    return {
        "targets": {"int8_over_gapless_bf16": f">= {TARGET_SPEEDUP}",
                    "bleu_int8_minus_gapless_bf16": f"within +-{TARGET_BLEU}",
                    "gapless_bf16_over_ct2_float32": ">= 1.0"},
        "best_layout_of_each_engine": compare(rows, best),
        "same_layout": {lay: compare(rows, {e: lay for e in engines}) for lay in layouts},
    }  # fmt: skip


def exported_version(folder: Path, engines: list[str]) -> str | None:
    """The CTranslate2 version that wrote the exports (None: no CTranslate2 engine)."""
    from gapless.export import read_info

    for engine in engines:
        if engine in QUANTIZATIONS:
            return read_info(folder / QUANTIZATIONS[engine])["ctranslate2_version"]
    return None


def run_benchmark(args) -> tuple[dict, dict]:
    """(the JSON document, {(engine, layout name): each round's ``measure_once``})."""
    info = machine(args.threads)
    src, ref, src_path = split_lines(args.run, args.split, args.max_sentences)
    with tempfile.TemporaryDirectory(prefix="ct2_speed_") as folder:
        found = measure(args, Path(folder), len(src))
        ct2_version = exported_version(Path(folder), args.engines)
    layouts = [layout_name(lay) for lay in args.layouts]
    rows = {(e, layout_name(lay)): row(e, lay, runs, ref) for (e, lay), runs in found.items()}
    found = {(e, layout_name(lay)): runs for (e, lay), runs in found.items()}
    texts = {key: runs[-1]["texts"] for key, runs in found.items()}
    checkpoints = sorted({r["checkpoint"] for runs in found.values() for r in runs})
    decode = run_config(args.run).decode
    doc = {
        "benchmark": "ct2_speed", "run": relpath(args.run),
        "checkpoint": checkpoints[0] if len(checkpoints) == 1 else checkpoints,
        "protocol": {
            "split": args.split, "source": relpath(src_path), "sentences": len(src),
            "beam": args.beam, "batch_size": args.batch_size, "threads": args.threads,
            "pause_seconds": args.pause, "engines": args.engines, "layouts": layouts,
            "len_penalty": decode.len_penalty, "max_len_a": decode.max_len_a,
            "max_len_b": decode.max_len_b, "min_len": decode.min_len, "repeat": args.repeat,
            "ctranslate2_version": ct2_version,
            "processes": "each measurement in fresh child processes (one per gapless worker, "
                         "one per CTranslate2 translator), OMP_NUM_THREADS = threads per "
                         "worker; rounds in order A B C, C B A, ...",
            "layout": "WORKERSxTHREADS: CTranslate2 one Translator(inter_threads=WORKERS, "
                      "intra_threads=THREADS); gapless WORKERS processes of THREADS torch "
                      "threads, sentences sorted by source pieces dealt in turn, answers "
                      "merged into input order",
            "sent_s": "sentences / seconds from the first worker's start to the last "
                      "worker's end of encode + search + decode (models loaded and warmed up "
                      "before); median over the rounds",
            "bleu": "of the last round's hypotheses of the whole split",
        },
        "machine": {**finish(info), "peak_rss_mb_parent": peak_rss_mb()},
        "results": list(rows.values()),
        "identical_hypotheses": agreement(texts, args.engines, layouts),
        **targets(rows, args.engines, layouts),
        "peers": peers.DECODE,
    }  # fmt: skip
    return doc, found


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    doc, _ = run_benchmark(args)
    emit(doc)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
