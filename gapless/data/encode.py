"""Parallel text to token ids: chunks of pairs decoded, encoded and checked (in worker processes
when asked, ``workers.WorkerPool``), then de-duplicated, counted and handed on in corpus order.
Chunks are ``CHUNK_PAIRS`` pairs, a few per worker in flight: memory does not follow the corpus
size (except the duplicate filter's hashes, ``filters.SeenHashes``)."""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .filters import (
    CODE,
    KIND,
    FilterReport,
    PairRules,
    SeenHashes,
    pair_codes,
    pair_hashes,
    problem,
    refuse,
)
from .shards import ParallelData, Shard, ShardWriter
from .text import CorpusError, decode_line, line_chunks
from .workers import WorkerPool

CHUNK_PAIRS = 10_000  # pairs per task: what one worker encodes at a time


@dataclass
class Encoded:
    """One chunk: the kept pairs' ids (flat, with their lengths), every pair's ``CODE`` (0:
    kept), the kept pairs' hashes (``dedup``), and the first drop (index, problem)."""

    n: int
    src: np.ndarray
    src_lens: np.ndarray
    tgt: np.ndarray
    tgt_lens: np.ndarray
    codes: np.ndarray
    hashes: np.ndarray | None
    first_drop: tuple[int, str] | None


def _flat(ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lens = np.fromiter(map(len, ids), np.int64, len(ids))
    return np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(lens.sum())), lens


def _select(tokens: np.ndarray, lens: np.ndarray, keep: np.ndarray):
    return tokens[np.repeat(keep, lens)], lens[keep]


def encode_chunk(vocab, rules: PairRules, start: int, lines: tuple[list[str], list[str]],
                 threads: int | None = None) -> Encoded:
    """Encode and check the pairs of ``lines`` (the first at line ``start``); raises for a pair
    that must stop preparation (``filters.refuse``)."""
    src, tgt = lines
    (src_ids, src_lens), (tgt_ids, tgt_lens) = (_flat(vocab.encode(side, threads))
                                                for side in lines)
    codes = pair_codes(rules, lines, (src_lens, tgt_lens))

    def explain(i: int) -> str:
        return problem(rules, (start + i, codes[i]), (src[i], tgt[i]),
                       (int(src_lens[i]), int(tgt_lens[i])))

    refuse(rules, codes, start, explain)
    if not rules.filter_pairs:
        codes[:] = 0  # evaluation data: blank lines stay
    keep = codes == 0
    first = None if keep.all() else int(keep.argmin())
    hashes = None
    if rules.dedup:
        hashes = pair_hashes([s.encode() for s, k in zip(src, keep) if k],
                             [t.encode() for t, k in zip(tgt, keep) if k])
    return Encoded(len(src), *_select(src_ids, src_lens, keep), *_select(tgt_ids, tgt_lens, keep),
                   codes, hashes, None if first is None else (first, explain(first)))


# ----------------------------------------------------------------------------------------------
# worker processes

def setup(model_path: str, rules: PairRules) -> tuple:
    """A worker's state: the SentencePiece model and the rules."""
    from .vocab import Vocab

    return Vocab(model_path), rules


def _decode(rules: PairRules, start: int, raw: tuple[list, list]) -> tuple[list, list]:
    return tuple([decode_line(r, name, start + i) for i, r in enumerate(side)]
                 for name, side in zip(rules.names, raw))


def work(state: tuple, task: tuple[int, list, list]) -> Encoded:
    """A worker's task: one chunk of raw lines (first line number, source, target)."""
    vocab, rules = state
    return encode_chunk(vocab, rules, task[0], _decode(rules, task[0], task[1:]), threads=1)


def _encoded(vocab, paths: tuple[Path, Path], rules: PairRules, workers: int):
    """(first line, ``Encoded``) of each chunk of the files, in order; ``workers`` > 1 encode
    in that many processes, a few chunks ahead of the reader."""
    chunks = line_chunks(paths, CHUNK_PAIRS)
    if workers <= 1:
        for start, src, tgt in chunks:
            yield start, encode_chunk(vocab, rules, start, _decode(rules, start, (src, tgt)))
        return
    starts: deque = deque()  # first line numbers of the chunks sent, not yet back

    def tasks():
        for task in chunks:
            starts.append(task[0])
            yield task

    with WorkerPool(workers, __name__, (str(vocab.path), rules)) as pool:
        for encoded in pool.map(tasks()):
            yield starts.popleft(), encoded


# ----------------------------------------------------------------------------------------------
# in order: duplicates, counts, output


def _take(enc: Encoded, start: int, rules: PairRules, seen: SeenHashes | None,
          report: FilterReport) -> tuple:
    """Count a chunk into ``report``, drop the pairs kept earlier; the arrays to keep."""
    report.read += enc.n
    counts = np.bincount(enc.codes.astype(np.int64), minlength=len(CODE) + 1)
    for code, kind in KIND.items():
        report.dropped[kind] += int(counts[code])
    arrays, first = (enc.src, enc.src_lens, enc.tgt, enc.tgt_lens), enc.first_drop
    if seen is not None and enc.hashes is not None and len(enc.hashes):
        new = seen.first_seen(enc.hashes)
        if not new.all():
            report.dropped["duplicate"] += int((~new).sum())
            at = int(np.flatnonzero(enc.codes == 0)[new.argmin()])
            if first is None or at < first[0]:
                first = (at, problem(rules, (start + at, CODE["duplicate"]), ("", ""), (0, 0)))
            arrays = (*_select(arrays[0], arrays[1], new), *_select(arrays[2], arrays[3], new))
    if first is not None:
        report.first_dropped = report.first_dropped or first[1]
    report.kept += len(arrays[1])
    return arrays


def _collect(results, rules: PairRules, sink) -> FilterReport:
    report = FilterReport()
    seen = SeenHashes() if rules.dedup and rules.filter_pairs else None
    for start, enc in results:
        sink.add(*_take(enc, start, rules, seen, report))
    if report.kept == 0:
        raise CorpusError(f"{rules.names[0]}: no usable pairs left ({report.summary()})")
    return report


def encode_split(vocab, paths: tuple[Path, Path], rules: PairRules, out: Path,
                 shard_pairs: int, workers: int = 0) -> FilterReport:
    """Stream a parallel split from ``paths`` into a shard folder ``out``; its report."""
    writer = ShardWriter(out, shard_pairs)
    results = _encoded(vocab, paths, rules, workers)
    try:
        report = _collect(results, rules, writer)
    except BaseException:
        writer.abort()
        raise
    finally:
        results.close()  # the worker processes end here, also on an error
    writer.close()
    return report


class _Memory:
    """A sink that keeps the arrays: one in-memory shard."""

    def __init__(self):
        self.parts: list[tuple] = []

    def add(self, *arrays) -> None:
        self.parts.append(arrays)

    def data(self) -> ParallelData:
        def side(tokens, lens):
            offsets = np.concatenate([[0], np.cumsum(np.concatenate(lens))]).astype(np.int64)
            return np.concatenate(tokens).astype(np.int32), offsets

        columns = list(zip(*self.parts))
        return ParallelData([Shard(*side(columns[0], columns[1]), *side(columns[2], columns[3]))])


def encode_lines(vocab, src_lines: list[str], tgt_lines: list[str],
                 rules: PairRules) -> tuple[ParallelData, FilterReport]:
    """Encode and check in-memory pairs (evaluation data, tests) in process."""
    chunks = ((start + 1, encode_chunk(vocab, rules, start + 1,
                                       (src_lines[start: start + CHUNK_PAIRS],
                                        tgt_lines[start: start + CHUNK_PAIRS])))
              for start in range(0, min(len(src_lines), len(tgt_lines)), CHUNK_PAIRS))
    sink = _Memory()
    report = _collect(chunks, rules, sink)
    return sink.data(), report
