#!/usr/bin/env python3
"""Decoding speed of a trained run, with and without the KV cache; prints one JSON document.

The peers' protocol (../shared/bench/peers/README.md): test2016 (1,000 sentences), 64 sentences
per batch, 2 threads, beam 5 (and greedy here), in two length modes:

* ``fixed30``: min = max = 30 output pieces for every sentence
  (``translate_ids(min_len=30, max_len_a=0, max_len_b=30)``): the same work for every model, so
  it compares raw decoder speed with the peers' ``fixed30`` figures whatever the model's quality;
* ``default``: the run's own decode settings (``decode.max_len_a/b``, ``min_len``); compare
  with the peers' trained-model figures only when the gapless model is trained as well;
* ``cap50`` (optional): at most 50 pieces.

Every combination of beam x mode x cache (on / off) x dtype (fp32 / bf16) decodes through
``Translator.translate_ids`` of ``gapless.load(run, dtype=...)`` (gapless's real decoding path,
as ``gapless translate/evaluate --dtype`` run it: bf16 = weights cast to bf16). "cache off" swaps in
``UncachedStepper`` below, which implements the same Stepper protocol as
``gapless.decode.ModelStepper`` but re-runs the decoder over the whole prefix at every step (as
JoeyNMT 2.3 does). Reported: sentences/s (text in -> text out: SentencePiece encode, search,
decode; the model is loaded beforehand), pieces/s, mean hypothesis pieces, BLEU / chrF
(sacreBLEU, gapless.metrics), and whether the uncached hypotheses equal the cached ones.

    python benchmarks/decode_speed.py --run runs/NAME                  # full matrix (long)
    python benchmarks/decode_speed.py --run runs/NAME --beams 5 --cache on --dtypes fp32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peers
from train_speed import machine

MODES = {
    "fixed30": {"min_len": 30, "max_len_a": 0.0, "max_len_b": 30},
    "cap50": {"max_len_a": 0.0, "max_len_b": 50},
    "default": {},
}


class UncachedStepper:
    """``gapless.decode.ModelStepper`` without a KV cache: each step feeds the whole prefix
    [N,t] through the decoder again and keeps the last position's log-probs [N,V]."""

    created = 0  # instances made: proves the swap reached the decoding path

    def __init__(self, model, src: torch.Tensor, repeat: int = 1):
        memory, src_mask = model.encode(src)  # [B,S,D], [B,S]
        if repeat > 1:  # row = sentence * K + beam, as in ModelStepper
            memory = memory.repeat_interleave(repeat, dim=0)
            src_mask = src_mask.repeat_interleave(repeat, dim=0)
        self.model, self.memory, self.src_mask = model, memory, src_mask
        self.prefix: torch.Tensor | None = None  # [N,t] tokens fed so far (BOS first)
        UncachedStepper.created += 1

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        new = tokens[:, None]
        self.prefix = new if self.prefix is None else torch.cat([self.prefix, new], dim=1)
        hidden = self.model.decode_hidden(self.prefix, self.memory, self.src_mask)  # [N,t,D]
        return torch.log_softmax(self.model.project(hidden[:, -1]).float(), dim=-1)  # [N,V]

    def reorder(self, index: torch.Tensor, rows_changed_sentence: bool) -> None:
        self.prefix = self.prefix.index_select(0, index)
        if rows_changed_sentence:
            self.memory = self.memory.index_select(0, index)
            self.src_mask = self.src_mask.index_select(0, index)


@contextlib.contextmanager
def stepper_class(cls):
    """Make ``Translator`` build ``cls`` instead of ModelStepper (it looks the name up in
    gapless.evaluate at every batch)."""
    import gapless.evaluate as evaluate_mod

    saved = evaluate_mod.ModelStepper
    evaluate_mod.ModelStepper = cls
    try:
        yield
    finally:
        evaluate_mod.ModelStepper = saved


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a run directory (runs/NAME)")
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--split", default="test2016")
    p.add_argument("--beams", default="5,1", help="comma-separated beam sizes (1 = greedy)")
    p.add_argument("--modes", default="fixed30,default", help=f"comma-separated: {','.join(MODES)}")
    p.add_argument("--cache", default="on,off", help="on,off | on | off")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--max-sentences", type=int, default=0, help="first N sentences (0: all)")
    p.add_argument(
        "--warmup-batches",
        type=int,
        default=1,
        help="untimed batches before each measurement (kernel set-up)",
    )
    p.add_argument("--repeat", type=int, default=1, help="timed repetitions per combination")
    args = p.parse_args(argv)
    for mode in args.modes.split(","):
        if mode not in MODES:
            p.error(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    from gapless import config as config_mod
    from gapless.checkpoint import RunDir
    from gapless.corpora import split_paths
    from gapless.data import Vocab, read_parallel
    from gapless.evaluate import load, resolve_device
    from gapless.metrics import corpus_scores
    from gapless.model import count_parameters

    info = machine(args.threads)
    run = RunDir(args.run)
    cfg = config_mod.load(run.config)
    vocab, device = Vocab(run.spm_model), resolve_device(args.device)
    d = cfg.data
    src_path, ref_path = split_paths(
        d.corpus, args.split, d.src_lang, d.tgt_lang, d.data_dir, d.download
    )
    src, ref = read_parallel(src_path, ref_path)
    if args.max_sentences:
        src, ref = src[: args.max_sentences], ref[: args.max_sentences]
    warm_src = vocab.encode(src[: args.batch_size * args.warmup_batches])

    results, cached_hyps = [], {}
    for dtype in args.dtypes.split(","):
        # what `gapless translate/evaluate --dtype` run: ``load`` casts the weights for bf16
        # (native bf16 inference, no autocast re-casting activations at every linear)
        translator = load(args.run, args.checkpoint, args.device, dtype)
        for beam in (int(b) for b in args.beams.split(",")):
            for mode in args.modes.split(","):
                for cache in args.cache.split(","):
                    kwargs = {"beam": beam, "batch_size": args.batch_size, **MODES[mode]}
                    cls = UncachedStepper if cache == "off" else None
                    before = UncachedStepper.created
                    print(
                        f"[decode_speed] {dtype} beam {beam} {mode} cache {cache} ...",
                        file=sys.stderr,
                    )
                    with stepper_class(cls) if cls else contextlib.nullcontext():
                        if warm_src:
                            translator.translate_ids(warm_src, **kwargs)
                        seconds = []
                        for _ in range(args.repeat):
                            start = time.perf_counter()
                            ids = translator.translate_ids(vocab.encode(src), **kwargs)
                            hyps = vocab.decode(ids)
                            seconds.append(time.perf_counter() - start)
                    if cls and UncachedStepper.created == before:
                        raise RuntimeError(
                            "Translator no longer builds gapless.evaluate."
                            "ModelStepper: the uncached swap did not apply"
                        )
                    key = (dtype, beam, mode)
                    if cache == "on":
                        cached_hyps[key] = hyps
                    secs = statistics.median(seconds)
                    pieces = sum(len(h) for h in ids)
                    score = corpus_scores(hyps, ref)
                    row = {
                        "dtype": dtype, "beam": beam, "mode": mode, "kv_cache": cache == "on",
                        "sentences": len(src), "seconds": round(secs, 3),
                        "sent_s": round(len(src) / secs, 2),
                        "sent_s_runs": [round(len(src) / s, 2) for s in seconds],
                        "hyp_pieces_s": round(pieces / secs, 1),
                        "mean_hyp_pieces": round(pieces / len(src), 2),
                        "bleu": score.bleu, "chrf": score.chrf,
                        "peak_rss_mb_so_far": round(
                            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                    }  # fmt: skip
                    if cache == "off" and key in cached_hyps:
                        same = sum(a == b for a, b in zip(hyps, cached_hyps[key]))
                        row["identical_to_cached"] = f"{same}/{len(src)}"
                    results.append(row)
                    print(
                        f"[decode_speed]   {row['sent_s']} sent/s, "
                        f"{row['mean_hyp_pieces']} pieces, BLEU {row['bleu']}",
                        file=sys.stderr,
                    )

    info["load_avg_1m_end"] = os.getloadavg()[0]
    doc = {
        "benchmark": "decode_speed",
        "run": str(args.run),
        "checkpoint": args.checkpoint,
        "protocol": {
            "split": args.split, "source": str(src_path), "sentences": len(src),
            "batch_size": args.batch_size, "len_penalty": cfg.decode.len_penalty,
            "default_len": {"max_len_a": cfg.decode.max_len_a, "max_len_b": cfg.decode.max_len_b,
                            "min_len": cfg.decode.min_len},
            "modes": {m: MODES[m] for m in args.modes.split(",")},
            "warmup_batches": args.warmup_batches, "repeat": args.repeat,
            "device": str(device), "parameters": count_parameters(translator.model),
            "sent_s": "sentences / seconds of encode + search + decode (model loaded before)",
        },
        "machine": {**info, "peak_rss_mb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
        "gapless": results,
        "peers": peers.DECODE,
    }  # fmt: skip
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
