"""gapless bf16 against the run exported to CTranslate2 (float32 and int8), in one process;
prints one JSON document.

    python -m benchmarks.ct2_speed runs/NAME --split test2016 --beam 5

The run's checkpoint is exported (``gapless.export.export``) into a temporary directory twice,
``--quantization float32`` and ``int8``; then each engine translates the whole split, text in
-> text out (SentencePiece encode, search, decode; models loaded beforehand), at ``--beam``
with the run's own length settings, ``--batch-size`` sentences per batch, after two untimed
warm-up batches: ``gapless.inference.load(run, dtype="bf16")`` with torch at ``--threads``
threads, and ``gapless.export.CTranslate2Engine`` on the same batches (sorted by length,
``--batch-size`` sentences, one ``translate_batch`` call each). CTranslate2 runs in each of
``--layouts`` (``INTERxINTRA``: ``ctranslate2.Translator(inter_threads=INTER,
intra_threads=INTRA)``; default ``1xTHREADS``, one batch at a time on all threads; ``2x1`` is
CTranslate2's advice for throughput on CPU, two batches at a time on one thread each, every
batch queued at once); an engine of a layout other than the first is named
``ct2_QUANT_INTERxINTRA``. Reported per engine: sentences/s (median of ``--repeat`` timed
passes, engines in turn, ``--pause`` seconds of rest before each), mean hypothesis pieces, BLEU / chrF (sacreBLEU,
``gapless.metrics.corpus_scores``); and the share of identical hypotheses of int8 against
float32 and of CTranslate2 float32 against gapless bf16 (first layout).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import peers
from benchmarks.common import (
    emit,
    finish,
    machine,
    peak_rss_mb,
    relpath,
    rotated,
    say,
    split_lines,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run directory (runs/NAME)")
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--split", default="test2016")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-sentences", type=int, default=0, help="first N sentences (0: all)")
    p.add_argument("--repeat", type=int, default=1, help="timed passes per engine")
    p.add_argument("--pause", type=float, default=1.0,
                   help="seconds of rest before each timed pass")
    p.add_argument("--layouts", default="",
                   help="CTranslate2 thread layouts INTERxINTRA, comma-separated "
                        "(default: 1xTHREADS)")
    args = p.parse_args(argv)
    args.layouts = parse_layouts(args.layouts, args.threads)
    return args


def parse_layouts(text: str, threads: int) -> list[tuple[int, int]]:
    """``"1x2,2x1"`` -> [(1, 2), (2, 1)] (inter_threads, intra_threads); empty: one batch at
    a time on ``threads`` threads."""
    if not text.strip():
        return [(1, threads)]
    layouts = []
    for part in text.split(","):
        inter, _, intra = part.strip().lower().partition("x")
        if not (inter.isdigit() and intra.isdigit() and int(inter) > 0 and int(intra) > 0):
            raise SystemExit(f"--layouts: {part!r} is not INTERxINTRA (e.g. 2x1)")
        layouts.append((int(inter), int(intra)))
    return layouts


def engine_name(quantization: str, layout: tuple[int, int], first: bool) -> str:
    return f"ct2_{quantization}" if first else f"ct2_{quantization}_{layout[0]}x{layout[1]}"


def load_engines(args, folder: Path) -> dict:
    """The three engines: gapless bf16 and the run exported to ``folder`` twice."""
    from gapless.export import CTranslate2Engine, export
    from gapless.inference import load

    engines = {"gapless_bf16": load(args.run, args.checkpoint, "cpu", "bf16")}
    for quantization in ("float32", "int8"):
        say("ct2_speed", f"export {quantization} ...")
        out = export(args.run, folder / quantization, args.checkpoint, quantization)
        for i, (inter, intra) in enumerate(args.layouts):
            engines[engine_name(quantization, (inter, intra), i == 0)] = CTranslate2Engine(
                out, "cpu", "default", intra, inter_threads=inter)
    return engines


def timed_pass(engine, src: list[str], kwargs: dict) -> tuple[float, list[list[int]]]:
    """Seconds of text in -> text out over ``src``, and the hypothesis ids."""
    start = time.perf_counter()
    ids = engine.translate_ids(engine.vocab.encode(src), **kwargs)
    engine.vocab.decode(ids)
    return time.perf_counter() - start, ids


def measure(engines: dict, src: list[str], args) -> dict:
    """{engine: (seconds per pass, hypothesis ids)}, engines taking turns each pass."""
    kwargs = {"beam": args.beam, "batch_size": args.batch_size}
    warm = src[: 2 * args.batch_size]  # two batches: each of two workers gets one
    for name, engine in engines.items():
        say("ct2_speed", f"warm-up {name} ...")
        engine.translate(warm, **kwargs)
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    ids: dict[str, list] = {}
    for i in range(args.repeat):
        for name in rotated(list(engines), i):
            time.sleep(args.pause)  # the previous engine's OpenMP threads stop spinning
            secs, ids[name] = timed_pass(engines[name], src, kwargs)
            seconds[name].append(secs)
            say("ct2_speed", f"{name}: {len(src) / secs:.1f} sent/s")
    return {name: (seconds[name], ids[name]) for name in engines}


def row(name: str, seconds: list[float], hyps: list[str], ids, ref: list[str]) -> dict:
    from gapless.metrics import corpus_scores

    n, secs = len(hyps), statistics.median(seconds)
    score = corpus_scores(hyps, ref)
    return {
        "engine": name, "sentences": n, "seconds": round(secs, 3),
        "sent_s": round(n / secs, 2), "sent_s_runs": [round(n / s, 2) for s in seconds],
        "mean_hyp_pieces": round(sum(len(h) for h in ids) / max(n, 1), 2),
        "bleu": score.bleu, "chrf": score.chrf,
    }  # fmt: skip


def identical(a: list, b: list) -> float:
    """Share of positions where ``a`` and ``b`` hold the same hypothesis."""
    return round(sum(x == y for x, y in zip(a, b)) / max(len(a), 1), 4)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine(args.threads)
    src, ref, src_path = split_lines(args.run, args.split, args.max_sentences)
    with tempfile.TemporaryDirectory(prefix="ct2_speed_") as folder:
        engines = load_engines(args, Path(folder))
        found = measure(engines, src, args)
        texts = {name: engines[name].vocab.decode(ids) for name, (_, ids) in found.items()}
        rows = [row(name, secs, texts[name], ids, ref) for name, (secs, ids) in found.items()]
        described = engines["ct2_float32"].describe()
    agreement = {"int8_vs_float32": identical(texts["ct2_int8"], texts["ct2_float32"]),
                 "ct2_float32_vs_gapless_bf16": identical(texts["ct2_float32"],
                                                          texts["gapless_bf16"])}
    decode = engines["gapless_bf16"].decode_cfg
    emit({
        "benchmark": "ct2_speed", "run": relpath(args.run), "checkpoint": described["checkpoint"],
        "protocol": {
            "split": args.split, "source": relpath(src_path), "sentences": len(src),
            "beam": args.beam, "batch_size": args.batch_size, "threads": args.threads,
            "pause_seconds": args.pause,
            "ct2_layouts": [f"{inter}x{intra}" for inter, intra in args.layouts],
            "len_penalty": decode.len_penalty, "max_len_a": decode.max_len_a,
            "max_len_b": decode.max_len_b, "min_len": decode.min_len, "repeat": args.repeat,
            "ctranslate2_version": engines["ct2_float32"].info["ctranslate2_version"],
            "sent_s": "sentences / seconds of encode + search + decode (model loaded before)",
        },
        "machine": {**finish(info), "peak_rss_mb": peak_rss_mb()},
        "results": rows, "identical_hypotheses": agreement, "peers": peers.DECODE,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
