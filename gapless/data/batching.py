"""Batches: token-bucket batching on the length arrays, and collating rows into padded tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .order import NoiseStream, ordered
from .shards import release_pages
from .vocab import BOS, EOS, PAD


@dataclass
class Batch:
    src: torch.Tensor  # [B,S] with EOS, PAD-padded
    tgt_in: torch.Tensor  # [B,T] BOS y1..yn
    tgt_out: torch.Tensor  # [B,T] y1..yn EOS
    index: torch.Tensor  # [B] rows of the corpus

    @property
    def n_tokens(self) -> int:
        return int(self.tgt_out.ne(PAD).sum())

    def to(self, device) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in (self.src, self.tgt_in,
                                                                 self.tgt_out, self.index)))


def pad_sequences(seqs: list, prefix: int | None = None, suffix: int | None = None) -> torch.Tensor:
    """Right-pad id sequences with PAD after adding optional BOS/EOS: -> [B, max_len]."""
    extra = (prefix is not None) + (suffix is not None)
    out = torch.full((len(seqs), max(len(s) for s in seqs) + extra), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        start = 0
        if prefix is not None:
            out[i, 0] = prefix
            start = 1
        out[i, start : start + len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
        if suffix is not None:
            out[i, start + len(s)] = suffix
    return out


def pad_rows(tokens: np.ndarray, lens: np.ndarray, prefix: int | None = None,
             suffix: int | None = None) -> torch.Tensor:
    """``pad_sequences`` of rows given flat (their ids one after another, their lengths)."""
    lens = np.asarray(lens, np.int64)
    shift = int(prefix is not None)
    width = int(lens.max()) + shift + (suffix is not None)
    out = np.full((len(lens), width), PAD, np.int64)
    within = np.arange(len(tokens)) - np.repeat(np.cumsum(lens) - lens, lens)
    out[np.repeat(np.arange(len(lens)), lens), within + shift] = tokens
    if prefix is not None:
        out[:, 0] = prefix
    if suffix is not None:
        out[np.arange(len(lens)), lens + shift] = suffix
    return torch.from_numpy(out)


def collate(data, index: np.ndarray) -> Batch:
    """The padded batch of rows ``index`` of a ``ParallelData``."""
    src, src_lens = data.rows(0, index)
    tgt, tgt_lens = data.rows(1, index)
    return Batch(
        src=pad_rows(src, src_lens, suffix=EOS),
        tgt_in=pad_rows(tgt, tgt_lens, prefix=BOS),
        tgt_out=pad_rows(tgt, tgt_lens, suffix=EOS),
        index=torch.as_tensor(np.asarray(index, dtype=np.int64)),
    )


def batch_starts(lengths: np.ndarray, max_tokens: int) -> np.ndarray:
    """Where each batch starts in a sequence of lengths filled greedily: a batch takes the next
    length while its longest x its count stays <= ``max_tokens`` (a first one always). One
    numpy step per batch, over the most sentences a batch of its first one's length can hold
    (widened should lengths below 1 let it hold more)."""
    starts, start, n = [], 0, len(lengths)
    while start < n:
        starts.append(start)
        window = min(max(max_tokens // max(int(lengths[start]), 1), 1) + 1, n - start)
        while True:
            longest = np.maximum.accumulate(lengths[start: start + window])
            over = longest * np.arange(1, window + 1) > max_tokens
            over[0] = False
            cut = int(over.argmax())
            if cut or window == n - start:
                break
            window = min(2 * window, n - start)
        start += cut if cut else window
    return np.asarray(starts, np.int64)


class Batches(Sequence):
    """An epoch's token batches, each an array of corpus rows: batch i is ``order[bounds[j]:
    bounds[j + 1]]`` for j = ``visit[i]`` (order [N] int32, bounds [B + 1], visit [B]); made as
    a view when asked for, so nothing is kept per batch or per sentence."""

    def __init__(self, order: np.ndarray, bounds: np.ndarray, visit: np.ndarray):
        self.order, self.bounds, self.visit = order, bounds, visit

    def __len__(self) -> int:
        return len(self.visit)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        j = int(self.visit[i])
        return self.order[self.bounds[j]: self.bounds[j + 1]]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __eq__(self, other) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(other) == len(self) and all(np.array_equal(a, b) for a, b in zip(self, other))

    __hash__ = None


def token_batches(
    src_lens: np.ndarray, tgt_lens: np.ndarray, max_tokens: int, seed: int, epoch: int
) -> Batches:
    """Token-bucket batching: sort by length (random tie-break), fill each batch while
    max(src, tgt incl. padding) x sentences <= max_tokens, then shuffle the batch order.
    Fully determined by (seed, epoch): the basis of exact resume. The lengths [N] are read in
    pieces (memory-mapped ones are unmapped afterwards); the batches share one row order."""
    noise = NoiseStream(seed, epoch)
    order, lengths = ordered(np.asarray(src_lens), np.asarray(tgt_lens), noise)
    starts = batch_starts(lengths, max_tokens)
    del lengths
    release_pages(src_lens)
    release_pages(tgt_lens)
    bounds = np.append(starts, len(order))
    return Batches(order, bounds, noise.rng.permutation(len(starts)))


def sentence_batches(lengths: list[int], batch_size: int) -> list[np.ndarray]:
    """Inference batching: sentences sorted by length (longest first), fixed count per batch."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
