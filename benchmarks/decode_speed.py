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
``Translator.translate_ids`` of ``gapless.inference.load(run, dtype=...)`` (gapless's real
decoding path, as ``gapless translate/evaluate --dtype`` run it: bf16 = weights cast to bf16).
"cache off" is a ``Translator`` of the same model with ``stepper=UncachedStepper`` (below): the
Stepper protocol of ``gapless.decode.ModelStepper``, re-running the decoder over the whole
prefix at every step (as JoeyNMT 2.3 does). Reported: sentences/s (text in -> text out:
SentencePiece encode, search, decode; the model is loaded beforehand), pieces/s, mean hypothesis
pieces, BLEU / chrF (sacreBLEU, gapless.metrics), and whether the uncached hypotheses equal the
cached ones.

    python -m benchmarks.decode_speed --run runs/NAME                  # full matrix (long)
    python -m benchmarks.decode_speed --run runs/NAME --beams 5 --cache on --dtypes fp32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks import peers
from benchmarks.common import emit, finish, machine, peak_rss_mb, relpath, say, split_lines

MODES = {
    "fixed30": {"min_len": 30, "max_len_a": 0.0, "max_len_b": 30},
    "cap50": {"max_len_a": 0.0, "max_len_b": 50},
    "default": {},
}


class UncachedStepper:
    """``gapless.decode.ModelStepper`` without a KV cache: each step feeds the whole prefix
    [N,t] through the decoder again and keeps the last position's log-probs [N,V]."""

    created = 0  # instances made: proves the Translator decoded with it

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


def translators(args, dtype: str) -> dict:
    """{"on": the run loaded as ``gapless translate/evaluate --dtype`` loads it (bf16: weights
    cast), "off": a Translator of the same model that decodes with ``UncachedStepper``}."""
    from gapless.inference import Translator, load

    loaded = load(args.run, args.checkpoint, args.device, dtype)
    uncached = Translator(
        loaded.model,
        loaded.vocab,
        loaded.decode_cfg,
        loaded.device,
        loaded.dtype,
        stepper=UncachedStepper,
    )
    return {"on": loaded, "off": uncached}


def measure(translator, src: list[str], cache: str, kwargs: dict, args):
    """(seconds per timed repetition, hypothesis ids, detokenised hypotheses) of decoding
    ``src`` text in -> text out, after ``--warmup-batches`` untimed batches."""
    vocab = translator.vocab
    warm = vocab.encode(src[: args.batch_size * args.warmup_batches])
    before = UncachedStepper.created
    if warm:
        translator.translate_ids(warm, **kwargs)
    seconds = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        ids = translator.translate_ids(vocab.encode(src), **kwargs)
        hyps = vocab.decode(ids)
        seconds.append(time.perf_counter() - start)
    used = UncachedStepper.created > before
    if used != (cache == "off"):
        raise RuntimeError(f"cache {cache}: UncachedStepper was {'' if used else 'not '}used")
    return seconds, ids, hyps


def row(seconds: list[float], ids, hyps, ref: list[str], **key) -> dict:
    from gapless.metrics import corpus_scores

    n, secs = len(hyps), statistics.median(seconds)
    pieces = sum(len(h) for h in ids)
    score = corpus_scores(hyps, ref)
    return {
        **key, "sentences": n, "seconds": round(secs, 3), "sent_s": round(n / secs, 2),
        "sent_s_runs": [round(n / s, 2) for s in seconds],
        "hyp_pieces_s": round(pieces / secs, 1), "mean_hyp_pieces": round(pieces / n, 2),
        "bleu": score.bleu, "chrf": score.chrf, "peak_rss_mb_so_far": peak_rss_mb(),
    }  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine(args.threads)
    src, ref, src_path = split_lines(args.run, args.split, args.max_sentences)

    results, cached_hyps = [], {}
    for dtype in args.dtypes.split(","):
        by_cache = translators(args, dtype)
        for beam in (int(b) for b in args.beams.split(",")):
            for mode in args.modes.split(","):
                for cache in args.cache.split(","):
                    say("decode_speed", f"{dtype} beam {beam} {mode} cache {cache} ...")
                    kwargs = {"beam": beam, "batch_size": args.batch_size, **MODES[mode]}
                    seconds, ids, hyps = measure(by_cache[cache], src, cache, kwargs, args)
                    r = row(
                        seconds,
                        ids,
                        hyps,
                        ref,
                        dtype=dtype,
                        beam=beam,
                        mode=mode,
                        kv_cache=cache == "on",
                    )
                    key = (dtype, beam, mode)
                    if cache == "on":
                        cached_hyps[key] = hyps
                    elif key in cached_hyps:
                        same = sum(a == b for a, b in zip(hyps, cached_hyps[key]))
                        r["identical_to_cached"] = f"{same}/{len(src)}"
                    results.append(r)
                    say(
                        "decode_speed",
                        f"  {r['sent_s']} sent/s, {r['mean_hyp_pieces']} pieces, BLEU {r['bleu']}",
                    )
    emit(document(args, by_cache["on"], src_path, len(src), finish(info), results))
    return 0


def document(args, translator, src_path, sentences: int, info: dict, results: list) -> dict:
    from gapless.model import count_parameters

    decode = translator.decode_cfg
    return {
        "benchmark": "decode_speed",
        "run": relpath(args.run),
        "checkpoint": args.checkpoint,
        "protocol": {
            "split": args.split, "source": relpath(src_path), "sentences": sentences,
            "batch_size": args.batch_size, "len_penalty": decode.len_penalty,
            "default_len": {"max_len_a": decode.max_len_a, "max_len_b": decode.max_len_b,
                            "min_len": decode.min_len},
            "modes": {m: MODES[m] for m in args.modes.split(",")},
            "warmup_batches": args.warmup_batches, "repeat": args.repeat,
            "device": str(translator.device),
            "parameters": count_parameters(translator.model),
            "sent_s": "sentences / seconds of encode + search + decode (model loaded before)",
        },
        "machine": {**info, "peak_rss_mb": peak_rss_mb()},
        "gapless": results,
        "peers": peers.DECODE,
    }  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
