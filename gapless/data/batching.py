"""Batches: token-bucket batching on the length arrays, and collating rows into padded tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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


def length_order(src_lens: np.ndarray, tgt_lens: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """``np.lexsort((noise, src_lens, tgt_lens))``: by target length, then source length, then
    noise, then position; done as one sort of the noise and two radix sorts of the lengths when
    they fit 16 bits (the same order, sooner)."""
    fits = len(src_lens) and min(src_lens.min(), tgt_lens.min()) >= 0 and max(
        src_lens.max(), tgt_lens.max()) < 1 << 16
    if not fits:
        return np.lexsort((noise, src_lens, tgt_lens))
    order = np.argsort(noise)
    ranked = noise[order]
    if (ranked[1:] == ranked[:-1]).any():  # ties: only a stable sort keeps position order
        order = np.argsort(noise, kind="stable")
    for key in (src_lens, tgt_lens):
        order = order[np.argsort(key.astype(np.uint16)[order], kind="stable")]
    return order


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


def token_batches(
    src_lens: np.ndarray, tgt_lens: np.ndarray, max_tokens: int, seed: int, epoch: int
) -> list[np.ndarray]:
    """Token-bucket batching: sort by length (random tie-break), fill each batch while
    max(src, tgt incl. padding) x sentences <= max_tokens, then shuffle the batch order.
    Fully determined by (seed, epoch): the basis of exact resume."""
    src_lens, tgt_lens = np.asarray(src_lens), np.asarray(tgt_lens)
    rng = np.random.default_rng([seed, epoch])
    order = length_order(src_lens, tgt_lens, rng.random(len(src_lens)))
    lengths = np.maximum(src_lens, tgt_lens)[order].astype(np.int64)
    starts = batch_starts(lengths, max_tokens)
    ends = np.append(starts[1:], len(order))
    batches = [order[a:b] for a, b in zip(starts.tolist(), ends.tolist())]
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def sentence_batches(lengths: list[int], batch_size: int) -> list[np.ndarray]:
    """Inference batching: sentences sorted by length (longest first), fixed count per batch."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
