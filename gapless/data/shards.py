"""Encoded corpora on disk: shards of flat int32 token arrays with int64 offsets, memory-mapped.

A split is a folder (``data/train/``) of ``shard-NNNNN.{src,tgt}.npy`` (the token ids of all its
sentences, without BOS/EOS, one after another) and ``shard-NNNNN.{src,tgt}_offsets.npy`` (where
each sentence starts, plus the end), with ``index.json`` counting pairs and tokens per shard,
and ``{src,tgt}_lens.npy``: every pair's lengths over the whole split (int32, counting EOS / BOS),
so that batching reads them memory-mapped instead of deriving them from the offsets. A split
written before the length files has them computed at load; a run prepared before shards has
``data/<split>.safetensors`` with the same four arrays, read into memory as one shard.

Nothing here holds a Python object or an int64 per pair, and reading batches does not leave
the corpus' pages mapped in the process as training goes through it: rows are read with
positional reads, and the pages of a memory-mapped array read whole (the lengths, when
batching) are handed back afterwards (``release_pages``).
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PARTS = ("src", "src_offsets", "tgt", "tgt_offsets")
FORMAT = "gapless-shards-1"
HEADER = 128  # bytes of every .npy header written here
LENGTHS = ("src_lens", "tgt_lens")  # split-wide length files (index.json "lengths")
PIECE = 1 << 20  # rows handled at a time by the passes over a whole split
BOUNDS = struct.Struct("<qq")  # a row's start and end in an offsets file


def release_pages(array: np.ndarray) -> None:
    """Unmap from this process the pages of the read-only file mapping behind ``array`` (they
    stay in the kernel's page cache; the next read maps them again). Other arrays: nothing."""
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is None or not hasattr(base, "madvise"):
        return
    with memoryview(base) as view:
        if not view.readonly:  # a writable or copy-on-write map may hold changes: keep them
            return
    base.madvise(mmap.MADV_DONTNEED)


@dataclass
class Shard:
    """One shard's four arrays (``PARTS``)."""

    src: np.ndarray
    src_offsets: np.ndarray
    tgt: np.ndarray
    tgt_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    def side(self, side: int) -> tuple[np.ndarray, np.ndarray]:
        return (self.src, self.src_offsets) if side == 0 else (self.tgt, self.tgt_offsets)


class Side:
    """One side of a corpus as a read-only sequence of id arrays (views, made on access)."""

    def __init__(self, data: ParallelData, side: int):
        self.data, self.side = data, side

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        s = int(np.searchsorted(self.data.starts, i, "right")) - 1
        tokens, offsets = self.data.shards[s].side(self.side)
        local = i - self.data.starts[s]
        return tokens[offsets[local]: offsets[local + 1]]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class ParallelData:
    """Token-id sequences of a parallel corpus (without BOS/EOS) in shards; ``src_lens`` and
    ``tgt_lens`` [N] int32 count EOS (source) and BOS / EOS (target): memory-mapped length
    files when given (``lengths``), else computed from the offsets."""

    def __init__(self, shards: list[Shard], lengths: tuple[np.ndarray, np.ndarray] | None = None):
        self.shards = shards
        self.starts = np.cumsum([0] + [len(s) for s in shards]).astype(np.int64)
        if lengths is None:
            lengths = (_lengths([s.src_offsets for s in shards]),
                       _lengths([s.tgt_offsets for s in shards]))
        self.src_lens, self.tgt_lens = lengths
        self.src, self.tgt = Side(self, 0), Side(self, 1)
        self.on_disk = hasattr(os, "pread") and all(
            isinstance(tokens, np.memmap) and isinstance(offsets, np.memmap)
            and (tokens.dtype, offsets.dtype) == (np.dtype("<i4"), np.dtype("<i8"))
            for shard in shards for tokens, offsets in (shard.side(0), shard.side(1)))

    def __len__(self) -> int:
        return int(self.starts[-1])

    def rows(self, side: int, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the ids of sentences ``index`` [B] of a side, one after another; their lengths [B]).
        Shard files are read with positional reads (nothing stays mapped); the length file's
        pages read for the batch are handed back."""
        index = np.asarray(index, np.int64)
        shard_of = np.searchsorted(self.starts, index, "right") - 1
        sides = [shard.side(side) for shard in self.shards]
        if self.on_disk:
            out, lens = _read_rows(sides, shard_of, index - self.starts[shard_of])
        else:
            out, lens = _gather_rows(sides, shard_of, index - self.starts[shard_of])
        release_pages(self.src_lens if side == 0 else self.tgt_lens)
        return out, lens

    @staticmethod
    def from_text(vocab, src_lines: list[str], tgt_lines: list[str], max_len: int,
                  bad_pairs: str, names: tuple[str, str] = ("src", "tgt"),
                  filter_pairs: bool = True):
        """Encode and check in-memory pairs (``gapless.data.encode.encode_lines``)."""
        from .encode import encode_lines
        from .filters import PairRules

        rules = PairRules(max_len, bad_pairs, names, filter_pairs)
        return encode_lines(vocab, src_lines, tgt_lines, rules)

    def save(self, folder: Path, shard_pairs: int = 1 << 62) -> dict:
        """Write as a shard folder (replacing one there); its index."""
        writer = ShardWriter(folder, shard_pairs)
        for shard in self.shards:
            writer.add(shard.src, np.diff(shard.src_offsets), shard.tgt,
                       np.diff(shard.tgt_offsets))
        return writer.close()

    @staticmethod
    def load(path: Path) -> ParallelData:
        """A shard folder, memory-mapped, or a ``.safetensors`` file of a run prepared before
        shards, read into memory."""
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            return ParallelData([Shard(*(load_file(str(path))[p] for p in PARTS))])
        index = json.loads((path / "index.json").read_text())
        shards = []
        for entry in index["shards"]:
            shard = Shard(*(np.load(path / f"{entry['name']}.{p}.npy", mmap_mode="r")
                            for p in PARTS))
            if (len(shard), len(shard.src), len(shard.tgt)) != (
                    entry["pairs"], entry["src_tokens"], entry["tgt_tokens"]):
                raise ValueError(f"{path}: {entry['name']} does not match index.json")
            shards.append(shard)
        lengths = None
        if index.get("lengths") == list(LENGTHS):
            lengths = tuple(np.load(path / f"{p}.npy", mmap_mode="r") for p in LENGTHS)
            if any(len(x) != index["pairs"] for x in lengths):
                raise ValueError(f"{path}: the length files do not match index.json")
        return ParallelData(shards, lengths)


def _read_rows(sides: list[tuple[np.memmap, np.memmap]], shard_of: np.ndarray,
               local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``local`` [B] of shards ``shard_of`` [B] (their (tokens, offsets) files in
    ``sides``) by positional reads: (ids, one row after another; lengths [B])."""
    files, chunks, lens = {}, [], []
    try:
        for s, i in zip(shard_of.tolist(), local.tolist()):
            if s not in files:
                tokens, offsets = sides[s]
                files[s] = (os.open(offsets.filename, os.O_RDONLY), offsets.offset,
                            os.open(tokens.filename, os.O_RDONLY), tokens.offset)
            offsets_fd, offsets_at, tokens_fd, tokens_at = files[s]
            first, end = BOUNDS.unpack(os.pread(offsets_fd, BOUNDS.size, offsets_at + 8 * i))
            chunks.append(os.pread(tokens_fd, 4 * (end - first), tokens_at + 4 * first))
            lens.append(end - first)
    finally:
        for offsets_fd, _, tokens_fd, _ in files.values():
            os.close(offsets_fd)
            os.close(tokens_fd)
    out = np.frombuffer(b"".join(chunks), "<i4")
    if len(out) != sum(lens):
        raise ValueError("a shard file is shorter than its offsets say")
    return out, np.array(lens, np.int64)


def _gather_rows(sides: list[tuple[np.ndarray, np.ndarray]], shard_of: np.ndarray,
                 local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``_read_rows`` by indexing the arrays (in memory, or mapped: their pages handed back)."""
    groups = [(s, np.flatnonzero(shard_of == s)) for s in np.unique(shard_of).tolist()]
    first, lens = np.empty(len(local), np.int64), np.empty(len(local), np.int64)
    for s, rows in groups:
        offsets = sides[s][1]
        first[rows] = offsets[local[rows]]
        lens[rows] = offsets[local[rows] + 1] - first[rows]
        release_pages(offsets)
    out = np.empty(int(lens.sum()), np.int32)
    out_start = np.cumsum(lens) - lens
    for s, rows in groups:
        tokens, n = sides[s][0], lens[rows]
        within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        out[np.repeat(out_start[rows], n) + within] = tokens[np.repeat(first[rows], n) + within]
        release_pages(tokens)
    return out, lens


def _lengths(offsets: list[np.ndarray]) -> np.ndarray:
    """Each row's length + 1 [N] int32 from the offsets [n_s + 1] of every shard, in pieces."""
    out = np.empty(sum(len(o) - 1 for o in offsets), np.int32)
    at = 0
    for o in offsets:
        for a in range(0, len(o) - 1, PIECE):
            b = min(a + PIECE, len(o) - 1)
            out[at + a: at + b] = np.diff(o[a: b + 1]) + 1
        at += len(o) - 1
        release_pages(o)
    return out


def split_path(data_dir: Path, split: str) -> Path | None:
    """Where a prepared split lies: its shard folder, else the file of an older run."""
    for path in (data_dir / split, data_dir / f"{split}.safetensors"):
        if (path / "index.json").is_file() or path.is_file():
            return path
    return None


def load_split(data_dir: Path, split: str) -> ParallelData:
    """A prepared split of a run's ``data/`` folder, in either format."""
    path = split_path(Path(data_dir), split)
    if path is None:
        raise FileNotFoundError(f"{data_dir}: no prepared {split} split")
    if path.suffix == ".safetensors":
        log.info("%s: a run prepared before sharded data, read into memory", path)
    return ParallelData.load(path)


# ----------------------------------------------------------------------------------------------
# writing


class NpyAppender:
    """A 1-D ``.npy`` file written in pieces: the header is rewritten with the final length."""

    def __init__(self, path: Path, dtype):
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close())
        self.dtype, self.n = np.dtype(dtype), 0
        self._header()

    def _header(self) -> None:
        text = repr({"descr": self.dtype.str, "fortran_order": False, "shape": (self.n,)})
        text = text.ljust(HEADER - 10 - 1) + "\n"
        self.file.seek(0)
        self.file.write(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode())

    def write(self, values: np.ndarray) -> None:
        self.file.seek(0, 2)
        self.file.write(np.ascontiguousarray(values, self.dtype).tobytes())
        self.n += len(values)

    def close(self) -> None:
        self._header()
        self.file.close()


class ShardWriter:
    """Pairs appended in order into shards of ``shard_pairs`` pairs under ``folder``, and their
    lengths into the split's length files (written as ``.NAME.partial`` and moved into place
    by ``close``)."""

    def __init__(self, folder: Path, shard_pairs: int):
        self.folder, self.shard_pairs = Path(folder), shard_pairs
        self.partial = self.folder.with_name(f".{self.folder.name}.partial")
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)
        self.index: list[dict] = []
        self.files: list[NpyAppender] = []
        self.lengths = [NpyAppender(self.partial / f"{p}.npy", np.int32) for p in LENGTHS]
        self.bases = [0, 0]

    def _open(self) -> None:
        name = f"shard-{len(self.index):05d}"
        self.index.append({"name": name, "pairs": 0, "src_tokens": 0, "tgt_tokens": 0})
        self.files = [NpyAppender(self.partial / f"{name}.{p}.npy",
                                  np.int64 if p.endswith("offsets") else np.int32)
                      for p in PARTS]
        self.bases = [0, 0]
        for f in self.files[1::2]:
            f.write(np.zeros(1, np.int64))

    def _close_shard(self) -> None:
        for f in self.files:
            f.close()
        self.files = []

    def add(self, src: np.ndarray, src_lens: np.ndarray, tgt: np.ndarray,
            tgt_lens: np.ndarray) -> None:
        """Append pairs: the flat ids of each side and the pairs' lengths (without EOS)."""
        for file, lens in zip(self.lengths, (src_lens, tgt_lens)):
            file.write(np.asarray(lens, np.int64) + 1)
        bounds = [np.concatenate([[0], np.cumsum(lens)]) for lens in (src_lens, tgt_lens)]
        done, n = 0, len(src_lens)
        while done < n:
            if not self.files:
                self._open()
            entry = self.index[-1]
            take = min(n - done, self.shard_pairs - entry["pairs"])
            for side, (tokens, cuts) in enumerate(zip((src, tgt), bounds)):
                part = tokens[cuts[done]: cuts[done + take]]
                self.files[2 * side].write(part)
                self.files[2 * side + 1].write(self.bases[side] + cuts[done + 1: done + take + 1]
                                               - cuts[done])
                self.bases[side] += len(part)
                entry[("src_tokens", "tgt_tokens")[side]] += len(part)
            entry["pairs"] += take
            done += take
            if entry["pairs"] == self.shard_pairs:
                self._close_shard()

    def close(self) -> dict:
        """Finish the last shard, write ``index.json`` and move the folder into place."""
        self._close_shard()
        for file in self.lengths:
            file.close()
        index = {"format": FORMAT, "pairs": sum(e["pairs"] for e in self.index),
                 "shards": self.index, "lengths": list(LENGTHS)}
        (self.partial / "index.json").write_text(json.dumps(index, indent=1))
        old = self.folder.with_name(f".{self.folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if self.folder.exists():
            self.folder.rename(old)
        self.partial.rename(self.folder)
        shutil.rmtree(old, ignore_errors=True)
        return index

    def abort(self) -> None:
        """Drop what was written (the folder in place, if any, stays as it was)."""
        for f in self.files + self.lengths:
            f.file.close()
        self.files = []
        shutil.rmtree(self.partial, ignore_errors=True)
