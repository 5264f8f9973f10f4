"""An epoch's length order of the corpus rows, ``np.lexsort((noise, src_lens, tgt_lens))``, in
pieces: memory holds one row number and one 32-bit noise key per pair, not a sort's full-size
temporaries.

The rows go by a counting sort into (target length, source length) buckets; each bucket is then
sorted on the top 32 bits of the noise, and the rare rows equal there on the full noise (drawn
again for them), then on their position: exactly the lexsort's order. As every run of equal
keys is put in order at the end, the sorts before need not be stable.
"""

from __future__ import annotations

import itertools

import numpy as np

PIECE = 1 << 16  # rows per piece of a pass over the corpus
MAX_BUCKETS = 1 << 20  # more (target, source) length pairs than this: the plain lexsort
COARSE = 2.0**32  # noise in [0, 1) x COARSE, floored: its top 32 bits


class NoiseStream:
    """The tie-break noise of an epoch, ``default_rng([seed, epoch]).random(n)`` [n] float64,
    drawn in pieces by ``draw`` (``rng`` ends where one full draw leaves it); ``at`` draws the
    values of a few rows again from a second stream."""

    def __init__(self, seed: int, epoch: int):
        self.key = [seed, epoch]
        self.rng = np.random.default_rng(self.key)

    def draw(self, k: int) -> np.ndarray:
        return self.rng.random(k)

    def at(self, rows: np.ndarray) -> np.ndarray:
        """The noise of ``rows`` (sorted, distinct) [k] float64."""
        again, out = np.random.default_rng(self.key), np.empty(len(rows))
        end = int(rows[-1]) + 1 if len(rows) else 0
        for a in range(0, end, PIECE):
            values = again.random(min(PIECE, end - a))
            lo, hi = np.searchsorted(rows, [a, a + len(values)])
            out[lo:hi] = values[rows[lo:hi] - a]
        return out


class ArrayNoise:
    """Given noise [n] float64, served like a ``NoiseStream``."""

    def __init__(self, noise: np.ndarray):
        self.noise, self.done = np.asarray(noise, np.float64), 0

    def draw(self, k: int) -> np.ndarray:
        self.done += k
        return self.noise[self.done - k: self.done]

    def at(self, rows: np.ndarray) -> np.ndarray:
        return self.noise[rows]


class Buckets:
    """The (target length, source length) bucket of each row: a dense key per row (target rank
    x number of source lengths + source rank, in (target, source) order)."""

    def __init__(self, src_lens: np.ndarray, tgt_lens: np.ndarray, top: int):
        self.src_lens, self.tgt_lens = src_lens, tgt_lens
        seen = [np.zeros(top + 1, bool), np.zeros(top + 1, bool)]
        for a in range(0, len(src_lens), PIECE):
            for side, lens in zip(seen, (src_lens, tgt_lens)):
                side[lens[a: a + PIECE]] = True
        self.values = [np.flatnonzero(side) for side in seen]  # the lengths present, sorted
        self.rank = [np.cumsum(side) - 1 for side in seen]
        self.n_keys = len(self.values[0]) * len(self.values[1])

    @staticmethod
    def of(src_lens: np.ndarray, tgt_lens: np.ndarray) -> Buckets | None:
        """None when a length is negative or over 16 bits, or the buckets are too many."""
        if not len(src_lens):
            return None
        low = min(int(src_lens.min()), int(tgt_lens.min()))
        top = max(int(src_lens.max()), int(tgt_lens.max()))
        if low < 0 or top >= 1 << 16:
            return None
        buckets = Buckets(src_lens, tgt_lens, top)
        return buckets if buckets.n_keys <= MAX_BUCKETS else None

    def keys(self, a: int, b: int) -> np.ndarray:
        """The keys of rows a..b [b - a] int32."""
        n_src = len(self.values[0])
        return (self.rank[1][self.tgt_lens[a:b]] * n_src
                + self.rank[0][self.src_lens[a:b]]).astype(np.int32)

    def longest(self, keys: np.ndarray) -> np.ndarray:
        """max(source, target length) of bucket ``keys`` [k]."""
        n_src = len(self.values[0])
        return np.maximum(self.values[1][keys // n_src], self.values[0][keys % n_src])


def counting_sort(buckets: Buckets, noise) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows in bucket order [n] (int32 below 2**31 rows; any order within a bucket); each
    row's noise key (top 32 bits) [n] uint32; the sizes of the non-empty buckets in order
    [k] and their keys [k]."""
    n = len(buckets.src_lens)
    counts = np.zeros(buckets.n_keys, np.int64)
    for a in range(0, n, PIECE):
        counts += np.bincount(buckets.keys(a, a + PIECE), minlength=buckets.n_keys)
    fill = np.cumsum(counts) - counts  # where each bucket's next row goes
    order = np.empty(n, np.int32 if n < 1 << 31 else np.int64)
    coarse = np.empty(n, np.uint32)
    for a in range(0, n, PIECE):
        key = buckets.keys(a, a + PIECE)
        coarse[a: a + len(key)] = (noise.draw(len(key)) * COARSE).astype(np.uint32)
        by_key = np.argsort(key)
        ranked = key[by_key]
        new = np.ones(len(ranked), bool)
        new[1:] = ranked[1:] != ranked[:-1]
        firsts = np.flatnonzero(new)
        within = np.arange(len(ranked)) - np.repeat(firsts, np.diff(np.append(firsts,
                                                                              len(ranked))))
        order[fill[ranked] + within] = a + by_key
        fill += np.bincount(key, minlength=buckets.n_keys)
    present = np.flatnonzero(counts)
    return order, coarse, counts[present], present


def _groups(sizes: np.ndarray) -> list[tuple[int, int]]:
    """Runs of whole buckets of about ``PIECE`` rows (a larger bucket alone): (first, end)."""
    ends, cuts = np.cumsum(sizes), [0]
    while cuts[-1] < len(sizes):
        base = int(ends[cuts[-1] - 1]) if cuts[-1] else 0
        cuts.append(max(int(np.searchsorted(ends, base + PIECE, "right")), cuts[-1] + 1))
    return list(itertools.pairwise(cuts))


def sort_buckets(order: np.ndarray, coarse: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Sort each bucket's rows of ``order`` in place on their noise key; the slots whose row
    ties with the next one's [t] int64 (``break_ties`` orders them)."""
    ties, starts = [], np.cumsum(sizes) - sizes
    for first, end in _groups(sizes):
        a = int(starts[first])
        b = a + int(sizes[first:end].sum())
        local = np.repeat(np.arange(end - first, dtype=np.uint64), sizes[first:end])
        key = (local << np.uint64(32)) | coarse[order[a:b]]
        by_key = np.argsort(key)
        order[a:b] = order[a:b][by_key]
        key = key[by_key]
        ties.append(a + np.flatnonzero(key[1:] == key[:-1]))
    return np.concatenate(ties) if ties else np.zeros(0, np.int64)


def break_ties(order: np.ndarray, ties: np.ndarray, noise) -> None:
    """Reorder in place each run of rows equal on bucket and noise key (slot t ties with t + 1
    for t in ``ties``) by full noise, then position."""
    slots = np.union1d(ties, ties + 1)
    rows = order[slots].astype(np.int64)
    distinct = np.unique(rows)
    values = noise.at(distinct)[np.searchsorted(distinct, rows)]
    group = np.cumsum(~np.isin(slots - 1, ties))
    order[slots] = rows[np.lexsort((rows, values, group))]


def ordered(src_lens: np.ndarray, tgt_lens: np.ndarray, noise) -> tuple[np.ndarray, np.ndarray]:
    """(``np.lexsort((noise, src_lens, tgt_lens))`` [n]; max(source, target length) of each row
    in that order [n]). ``noise``: a ``NoiseStream`` or ``ArrayNoise`` that ``n`` values are
    drawn from."""
    n = len(src_lens)
    buckets = Buckets.of(src_lens, tgt_lens)
    if isinstance(noise, ArrayNoise) and n and not (0 <= noise.noise.min()
                                                   and noise.noise.max() < 1):
        buckets = None  # the noise key needs values in [0, 1)
    if buckets is None:
        order = np.lexsort((noise.draw(n), src_lens, tgt_lens))
        return order, np.maximum(np.asarray(src_lens)[order], np.asarray(tgt_lens)[order])
    order, coarse, sizes, keys = counting_sort(buckets, noise)
    ties = sort_buckets(order, coarse, sizes)
    del coarse
    if len(ties):
        break_ties(order, ties, noise)
    return order, np.repeat(buckets.longest(keys).astype(np.uint16), sizes)


def length_order(src_lens: np.ndarray, tgt_lens: np.ndarray, noise) -> np.ndarray:
    """``np.lexsort((noise, src_lens, tgt_lens))`` [n]: rows by target length, then source
    length, then noise, then position. ``noise``: [n] float64, or a ``NoiseStream``."""
    if not hasattr(noise, "draw"):
        noise = ArrayNoise(noise)
    return ordered(np.asarray(src_lens), np.asarray(tgt_lens), noise)[0]
