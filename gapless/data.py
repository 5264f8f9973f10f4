"""Text to batches: checked corpus reading, joint SentencePiece, token-bucket batching.

Special ids are fixed for every run: PAD 0, UNK 1, BOS 2, EOS 3. The source gets EOS appended;
the target becomes ``tgt_in = [BOS, y1..yn]`` and ``tgt_out = [y1..yn, EOS]``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

PAD, UNK, BOS, EOS = 0, 1, 2, 3
log = logging.getLogger(__name__)


class CorpusError(ValueError):
    """Bad input: names the file and line."""


# ----------------------------------------------------------------------------------------------
# reading text


def read_lines(path: str | Path) -> list[str]:
    """All lines of a UTF-8 file without their line ends (split on ``\n`` only, a ``\r``
    before it dropped); a byte-order mark at the start is removed; errors name the file and
    line."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: file not found")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is not text
        raw = raw[3:]
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for i, line in enumerate(lines, 1):
        try:
            out.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as exc:
            raise CorpusError(
                f"{path}:{i}: invalid UTF-8 at byte {exc.start} of the line ({exc.reason})"
            ) from None
    return out


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> tuple[list[str], list[str]]:
    """Line-aligned source and target lines; a line-count mismatch is an error."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise CorpusError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: "
            "parallel files must be line-aligned"
        )
    return src, tgt


# ----------------------------------------------------------------------------------------------
# SentencePiece


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

    def encode(self, lines: list[str]) -> list[list[int]]:
        return self.sp.encode(lines)

    def decode(self, ids: list[list[int]]) -> list[str]:
        if len(ids) == 0:  # SentencePiece reads [] as one empty sequence and returns ""
            return []
        return self.sp.decode([[i for i in seq if i > EOS] for seq in ids])

    def pieces(self, lines: list[str]) -> list[list[str]]:
        return self.sp.encode(lines, out_type=str)

    @staticmethod
    def train(
        files: list[Path], prefix: Path, vocab_size: int, model_type: str, coverage: float, seed=1
    ) -> Vocab:
        """Train a joint model on ``files`` into ``prefix``.model / .vocab."""
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
            input_sentence_size=2_000_000,
            shuffle_input_sentence=True,
            num_threads=2,
            minloglevel=2,
            hard_vocab_limit=False,  # tiny corpora: fewer pieces rather than an error
        )
        return Vocab(prefix.with_suffix(".model"))


# ----------------------------------------------------------------------------------------------
# encoded, checked parallel data


DROP_REASONS = {"empty": "with an empty side", "too_long": "longer than the length limit",
                "nul": "with a NUL byte"}


@dataclass
class FilterReport:
    """What a filter kept and dropped (a count per reason of ``DROP_REASONS``), and where the
    first drop was."""

    read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    first_dropped: str = ""

    def drop(self, kind: str, problem: str) -> None:
        self.dropped[kind] += 1
        self.first_dropped = self.first_dropped or problem

    def summary(self) -> str:
        drops = ", ".join(f"{n} {DROP_REASONS[k]}" for k, n in self.dropped.items())
        return (f"kept {self.kept} of {self.read} pairs; dropped {drops}"
                + (f" (first: {self.first_dropped})" if self.first_dropped else ""))


def _pair_problem(i: int, lines: tuple[str, str], ids: tuple[list, list],
                  names: tuple[str, str], max_len: int) -> tuple[str, str]:
    """(what is wrong with pair ``i``, its FilterReport counter) or ("", "")."""
    for side, line in zip(names, lines):
        if "\x00" in line:
            return f"{side}:{i}: a NUL byte in the line", "nul"
    for side, line in zip(names, lines):
        if not line.strip():
            return f"{side}:{i}: empty line", "empty"
    for side, seq in zip(names, ids):
        if len(seq) + 1 > max_len:
            return f"{side}:{i}: {len(seq) + 1} tokens > max_len {max_len}", "too_long"
    return "", ""


class ParallelData:
    """Token-id sequences of a parallel corpus (without BOS/EOS), stored flat."""

    def __init__(self, src: list[np.ndarray], tgt: list[np.ndarray]):
        self.src, self.tgt = src, tgt
        self.src_lens = np.array([len(s) + 1 for s in src], dtype=np.int64)  # + EOS
        self.tgt_lens = np.array([len(t) + 1 for t in tgt], dtype=np.int64)  # + BOS / EOS

    def __len__(self) -> int:
        return len(self.src)

    @staticmethod
    def from_text(
        vocab: Vocab,
        src_lines: list[str],
        tgt_lines: list[str],
        max_len: int,
        bad_pairs: str,
        names: tuple[str, str] = ("src", "tgt"),
        filter_pairs: bool = True,
    ) -> tuple[ParallelData, FilterReport]:
        """Encode and check pairs. With ``filter_pairs`` (training data), empty or over-long
        pairs are dropped and counted (``bad_pairs='drop'``) or raise naming file:line
        (``'error'``); evaluation data is never filtered."""
        src_ids, tgt_ids = vocab.encode(src_lines), vocab.encode(tgt_lines)
        report = FilterReport(read=len(src_lines))
        keep_src, keep_tgt = [], []
        for i, (s_line, t_line, s, t) in enumerate(zip(src_lines, tgt_lines, src_ids, tgt_ids), 1):
            problem, kind = _pair_problem(i, (s_line, t_line), (s, t), names, max_len)
            if problem and not filter_pairs:
                if kind == "empty":
                    problem = ""  # evaluation data keeps blank lines (line alignment)
                else:
                    raise CorpusError(problem + " (evaluation data is never filtered: raise "
                                      "data.max_len or fix the line)")
            if problem:
                if bad_pairs == "error":
                    raise CorpusError(
                        problem + " (set data.bad_pairs: drop to filter such pairs and count them)"
                    )
                report.drop(kind, problem)
                continue
            keep_src.append(np.asarray(s, dtype=np.int32))
            keep_tgt.append(np.asarray(t, dtype=np.int32))
        report.kept = len(keep_src)
        if report.kept == 0:
            raise CorpusError(f"{names[0]}: no usable pairs left ({report.summary()})")
        return ParallelData(keep_src, keep_tgt), report

    # flat storage in safetensors (no pickles)
    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        def flat(seqs):
            offsets = np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64)
            data = np.concatenate(seqs) if seqs else np.zeros(0, np.int32)
            return data.astype(np.int32), offsets

        s, so = flat(self.src)
        t, to = flat(self.tgt)
        tmp = path.with_suffix(".tmp")
        save_file({"src": s, "src_offsets": so, "tgt": t, "tgt_offsets": to}, str(tmp))
        tmp.replace(path)

    @staticmethod
    def load(path: Path) -> ParallelData:
        from safetensors.numpy import load_file

        d = load_file(str(path))

        def split(data, offsets):
            return [data[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]

        return ParallelData(split(d["src"], d["src_offsets"]), split(d["tgt"], d["tgt_offsets"]))


# ----------------------------------------------------------------------------------------------
# batches


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


def collate(data: ParallelData, index: np.ndarray) -> Batch:
    src = [data.src[i] for i in index]
    tgt = [data.tgt[i] for i in index]
    return Batch(
        src=pad_sequences(src, suffix=EOS),
        tgt_in=pad_sequences(tgt, prefix=BOS),
        tgt_out=pad_sequences(tgt, suffix=EOS),
        index=torch.as_tensor(np.asarray(index, dtype=np.int64)),
    )


def token_batches(
    src_lens: np.ndarray, tgt_lens: np.ndarray, max_tokens: int, seed: int, epoch: int
) -> list[np.ndarray]:
    """Token-bucket batching: sort by length (random tie-break), fill each batch while
    max(src, tgt incl. padding) x sentences <= max_tokens, then shuffle the batch order.
    Fully determined by (seed, epoch): the basis of exact resume."""
    rng = np.random.default_rng([seed, epoch])
    order = np.lexsort((rng.random(len(src_lens)), src_lens, tgt_lens))
    batches, start, longest = [], 0, 0
    for pos, i in enumerate(order):
        length = max(src_lens[i], tgt_lens[i])
        if pos > start and max(longest, length) * (pos - start + 1) > max_tokens:
            batches.append(order[start:pos])
            start, longest = pos, 0
        longest = max(longest, length)
    if start < len(order):
        batches.append(order[start:])
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def sentence_batches(lengths: list[int], batch_size: int) -> list[np.ndarray]:
    """Inference batching: sentences sorted by length (longest first), fixed count per batch."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
