"""Which training pairs are kept: checks per chunk of pairs, their report, and duplicate hashes.

Broken pairs (a NUL byte, an empty side, too long) follow ``data.bad_pairs``; the filters a
setting turns on (``data.max_len_ratio``, ``data.drop_identical``, ``data.dedup``) always drop
and count. Evaluation data is never filtered: a blank line stays, anything else is an error.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from .text import CorpusError

DROP_REASONS = {"empty": "with an empty side", "too_long": "longer than the length limit",
                "nul": "with a NUL byte",
                "ratio": "with a length ratio above data.max_len_ratio",
                "identical": "with the source equal to the target",
                "duplicate": "repeating an earlier pair"}
BROKEN = ("nul", "empty", "too_long")  # a pair's first problem is the first of this order
CODE = {kind: code for code, kind in enumerate(("nul", "empty", "too_long", "ratio",
                                                "identical", "duplicate"), 1)}
KIND = {code: kind for kind, code in CODE.items()}
NUL = "\x00"


@dataclass
class FilterReport:
    """What a filter kept and dropped (a count per reason of ``DROP_REASONS``), and where the
    first drop was."""

    read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    first_dropped: str = ""

    def drop(self, kind: str, problem: str, count: int = 1) -> None:
        self.dropped[kind] += count
        self.first_dropped = self.first_dropped or problem

    def summary(self) -> str:
        drops = ", ".join(f"{n} {DROP_REASONS[k]}" for k, n in self.dropped.items()
                          if k in BROKEN or n)
        return (f"kept {self.kept} of {self.read} pairs; dropped {drops}"
                + (f" (first: {self.first_dropped})" if self.first_dropped else ""))


@dataclass(frozen=True)
class PairRules:
    """How pairs are checked: ``filter_pairs`` False for evaluation data."""

    max_len: int
    bad_pairs: str = "drop"
    names: tuple[str, str] = ("src", "tgt")
    filter_pairs: bool = True
    max_len_ratio: float = 0.0
    drop_identical: bool = False
    dedup: bool = False


def pair_codes(rules: PairRules, lines: tuple[list, list], lens: tuple) -> np.ndarray:
    """Per pair: 0 when kept, else the ``CODE`` of its first problem (text lines, piece
    counts without EOS)."""
    src, tgt = lines
    nul = np.fromiter((NUL in s or NUL in t for s, t in zip(src, tgt)), bool, len(src))
    empty = np.fromiter((not s.strip() or not t.strip() for s, t in zip(src, tgt)), bool,
                        len(src))
    too_long = (lens[0] + 1 > rules.max_len) | (lens[1] + 1 > rules.max_len)
    codes = np.zeros(len(src), np.int8)
    if rules.filter_pairs and rules.drop_identical:
        same = np.fromiter((s.strip() == t.strip() for s, t in zip(src, tgt)), bool, len(src))
        codes[same] = CODE["identical"]
    if rules.filter_pairs and rules.max_len_ratio > 0:
        short, long = np.minimum(lens[0], lens[1]), np.maximum(lens[0], lens[1])
        codes[long > rules.max_len_ratio * short] = CODE["ratio"]
    for kind, mask in (("too_long", too_long), ("empty", empty), ("nul", nul)):
        codes[mask] = CODE[kind]
    return codes


def problem(rules: PairRules, where: tuple[int, int], lines: tuple[str, str],
            lens: tuple[int, int]) -> str:
    """What is wrong with the pair at line ``where[0]`` whose code is ``where[1]``, naming the
    file of the side at fault and the line."""
    number, kind = where[0], KIND[where[1]]
    names = rules.names
    if kind == "nul":
        return f"{names[int(NUL not in lines[0])]}:{number}: a NUL byte in the line"
    if kind == "empty":
        return f"{names[bool(lines[0].strip())]}:{number}: empty line"
    if kind == "too_long":
        side = int(lens[0] + 1 <= rules.max_len)
        return f"{names[side]}:{number}: {lens[side] + 1} tokens > max_len {rules.max_len}"
    if kind == "ratio":
        return (f"{names[0]}:{number}: {lens[0]} and {lens[1]} pieces, a ratio above "
                f"max_len_ratio {rules.max_len_ratio:g}")
    if kind == "identical":
        return f"{names[0]}:{number}: the source equals the target"
    return f"{names[0]}:{number}: a duplicate of an earlier pair"


def refuse(rules: PairRules, codes: np.ndarray, start: int, explain) -> None:
    """Raise for the first pair that must stop preparation: any but a blank one in evaluation
    data, a broken one under ``bad_pairs: error``. ``explain(i)``: pair ``i``'s problem."""
    if rules.filter_pairs and rules.bad_pairs == "drop":
        return
    fatal = (codes > 0) & (codes != CODE["empty"]) if not rules.filter_pairs else (
        (codes > 0) & (codes <= CODE["too_long"]))
    if fatal.any():
        i = int(fatal.argmax())
        if not rules.filter_pairs:
            raise CorpusError(explain(i) + " (evaluation data is never filtered: raise "
                              "data.max_len or fix the line)")
        raise CorpusError(explain(i) + " (set data.bad_pairs: drop to filter such pairs and "
                          "count them)")


def pair_hashes(src: list[bytes], tgt: list[bytes]) -> np.ndarray:
    """A 128-bit hash (blake2b) of each raw pair (its two lines without line ends) [n] 'S16'.
    Two distinct pairs share one with a chance of about n**2 / 2**129 over n pairs (below
    1e-20 for a billion): duplicates are found exactly in practice, and a collision would be
    counted as a duplicate."""
    digests = b"".join(hashlib.blake2b(s + b"\n" + t, digest_size=16).digest()
                       for s, t in zip(src, tgt))
    return np.frombuffer(digests, "S16").copy()


class SeenHashes:
    """The hashes of the pairs kept so far [n] (any sortable dtype: 'S16' for pairs), as a few
    sorted runs, each at least twice the next one (merged as they grow), so a chunk's
    duplicates are found with binary searches and memory stays one hash per distinct pair."""

    def __init__(self):
        self.runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)

    def _seen(self, hashes: np.ndarray) -> np.ndarray:
        seen = np.zeros(len(hashes), bool)
        for run in self.runs:
            pos = np.minimum(np.searchsorted(run, hashes), len(run) - 1)
            seen |= run[pos] == hashes
        return seen

    def first_seen(self, hashes: np.ndarray) -> np.ndarray:
        """True where a hash occurs for the first time (neither earlier in ``hashes`` nor in an
        earlier call); those hashes are remembered."""
        unique, first = np.unique(hashes, return_index=True)
        new = np.zeros(len(hashes), bool)
        new[first] = True
        new &= ~self._seen(hashes)
        fresh = unique[~self._seen(unique)]
        if len(fresh):
            self.runs.append(fresh)
        while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
            last = self.runs.pop()
            merged = np.concatenate([self.runs.pop(), last])
            merged.sort(kind="stable")  # in place; two sorted runs merge in one pass
            self.runs.append(merged)
        return new
