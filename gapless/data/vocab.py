"""The joint SentencePiece vocabulary: fixed special ids, training on a streamed line sample.

Special ids are fixed for every run: PAD 0, UNK 1, BOS 2, EOS 3. The source gets EOS appended;
the target becomes ``tgt_in = [BOS, y1..yn]`` and ``tgt_out = [y1..yn, EOS]``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from .text import CorpusError, decode_line, open_binary, raw_lines

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class Vocab:
    """A joint SentencePiece model with the fixed special ids."""

    def __init__(self, model_path: str | Path):
        import sentencepiece as spm

        self.path = Path(model_path)
        if not self.path.is_file():
            raise CorpusError(f"{self.path}: SentencePiece model not found")
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        if (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()) != (
            PAD,
            UNK,
            BOS,
            EOS,
        ):
            raise CorpusError(f"{self.path}: special ids are not pad=0 unk=1 bos=2 eos=3")

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, lines: list[str], threads: int | None = None) -> list[list[int]]:
        return self.sp.encode(lines, num_threads=threads)

    def decode(self, ids: list[list[int]]) -> list[str]:
        if len(ids) == 0:  # SentencePiece reads [] as one empty sequence and returns ""
            return []
        return self.sp.decode([[i for i in seq if i > EOS] for seq in ids])

    def pieces(self, lines: list[str]) -> list[list[str]]:
        return self.sp.encode(lines, out_type=str)

    @staticmethod
    def train(files: list[Path], prefix: Path, vocab_size: int, model_type: str,
              coverage: float, seed=1, sentences: int = 2_000_000) -> Vocab:
        """Train a joint model on ``files`` into ``prefix``.model / .vocab; SentencePiece draws
        at most ``sentences`` lines of them (its ``input_sentence_size``)."""
        import sentencepiece as spm

        prefix.parent.mkdir(parents=True, exist_ok=True)
        spm.set_random_generator_seed(seed)
        spm.SentencePieceTrainer.train(
            input=",".join(str(f) for f in files),
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=coverage,
            pad_id=PAD,
            unk_id=UNK,
            bos_id=BOS,
            eos_id=EOS,
            input_sentence_size=sentences,
            shuffle_input_sentence=True,
            num_threads=2,
            minloglevel=2,
            hard_vocab_limit=False,  # tiny corpora: fewer pieces rather than an error
        )
        return Vocab(prefix.with_suffix(".model"))


def _no_state() -> None:
    """A training worker's state: none."""


def _train_task(_, args: tuple) -> None:
    Vocab.train(*args)


def train_apart(files: list[Path], prefix: Path, vocab_size: int, model_type: str,
                coverage: float, seed=1, sentences: int = 2_000_000) -> Vocab:
    """``Vocab.train`` in a worker process (``workers.WorkerPool``, without torch), so the
    memory SentencePiece's training takes is returned when it ends rather than kept by the
    calling process."""
    from .workers import WorkerPool

    args = (files, prefix, vocab_size, model_type, coverage, seed, sentences)
    with WorkerPool(1, __name__, (), ("_no_state", "_train_task")) as pool:
        list(pool.map([args]))
    return Vocab(prefix.with_suffix(".model"))


def sample_indices(n: int, k: int, seed: int, block: int = 1 << 20) -> np.ndarray | None:
    """``k`` distinct line numbers (0-based, sorted) drawn uniformly from ``n``, block by block
    (a hypergeometric share per block), so memory follows ``k``, not ``n``; None when
    ``n <= k`` (every line)."""
    if n <= k:
        return None
    rng = np.random.default_rng([seed, n, k])
    chosen, left, start = [], k, 0
    while start < n and left:
        size = min(block, n - start)
        take = int(rng.hypergeometric(size, n - start - size, left)) if n - start > size else left
        chosen.append(start + np.sort(rng.choice(size, take, replace=False)))
        left -= take
        start += size
    return np.concatenate(chosen)


def write_sample(paths, chosen: np.ndarray | None, out: Path) -> list[int]:
    """Write the non-blank lines of each file in turn (all, or the line numbers ``chosen``)
    to ``out``, one per line: SentencePiece's input. Returns how many lines each file gave."""
    written = []
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        for path in paths:
            count = 0
            with open_binary(path) as stream:
                for number, raw in _picked(raw_lines(stream), chosen):
                    line = decode_line(raw, path, number)
                    if line.strip():
                        f.write(line + "\n")
                        count += 1
            written.append(count)
    return written


def _picked(lines, chosen: np.ndarray | None, piece: int = 1 << 16):
    """(1-based number, line) of every line, or only of the 0-based numbers in ``chosen``
    (sorted), taken ``piece`` numbers at a time."""
    if chosen is None:
        yield from enumerate(lines, 1)
        return
    at = 0
    for a in range(0, len(chosen), piece):
        for number in chosen[a: a + piece].tolist():
            raw = next(itertools.islice(lines, number - at, None))
            at = number + 1
            yield at, raw
