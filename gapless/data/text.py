"""Reading parallel text: plain or gzip files, split on ``\\n`` only, errors naming file and line.

Whole-file readers (``read_lines``, ``read_parallel``) serve the small splits; ``scan`` and
``line_chunks`` stream a training split of any size.
"""

from __future__ import annotations

import gzip
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

BOM = b"\xef\xbb\xbf"


class CorpusError(ValueError):
    """Bad input: names the file and line."""


def open_binary(path: str | Path) -> BinaryIO:
    """``path`` opened for reading bytes; a ``.gz`` file is decompressed on the fly."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: file not found")
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def decode_line(raw: bytes, path, number: int) -> str:
    """One raw line (its ``\\n`` and a BOM of line 1 already gone) as text, trailing ``\\r``
    dropped; invalid UTF-8 is an error naming file and line."""
    try:
        return raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"{path}:{number}: invalid UTF-8 at byte {exc.start} of the line ({exc.reason})"
        ) from None


def raw_lines(stream: BinaryIO) -> Iterator[bytes]:
    """The lines of a byte stream without their ``\\n``; a byte-order mark at the start is
    removed."""
    for number, raw in enumerate(stream, 1):
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        if number == 1 and raw.startswith(BOM):
            raw = raw[3:]
        yield raw


def read_lines(path: str | Path) -> list[str]:
    """All lines of a UTF-8 file (plain or ``.gz``) without their line ends (split on ``\\n``
    only, a ``\\r`` before it dropped); a byte-order mark at the start is removed; errors name
    the file and line."""
    with open_binary(path) as stream:
        return [decode_line(raw, path, i) for i, raw in enumerate(raw_lines(stream), 1)]


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> tuple[list[str], list[str]]:
    """Line-aligned source and target lines; a line-count mismatch is an error."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    check_aligned((src_path, tgt_path), (len(src), len(tgt)))
    return src, tgt


def check_aligned(paths, counts) -> None:
    if counts[0] != counts[1]:
        raise CorpusError(
            f"{paths[0]} has {counts[0]} lines but {paths[1]} has {counts[1]}: "
            "parallel files must be line-aligned"
        )


def scan(path: str | Path, block: int = 1 << 20) -> tuple[int, bool]:
    """(number of lines, whether any line holds more than white space) of a file, read as a
    stream: lines are decoded only until the first non-blank one."""
    count, has_text = 0, False
    with open_binary(path) as stream:
        for raw in raw_lines(stream):
            count += 1
            if decode_line(raw, path, count).strip():
                has_text = True
                break
        tail = b""
        while chunk := stream.read(block):
            count += chunk.count(b"\n")
            tail = chunk[-1:]
        if tail and tail != b"\n":
            count += 1
    return count, has_text


def line_chunks(paths: tuple[Path, Path], pairs: int) -> Iterator[tuple[int, list, list]]:
    """(number of the chunk's first line, source lines, target lines) in chunks of ``pairs``
    raw lines (bytes without ``\\n``) read from both files in step."""
    with open_binary(paths[0]) as src_stream, open_binary(paths[1]) as tgt_stream:
        src_lines, tgt_lines = raw_lines(src_stream), raw_lines(tgt_stream)
        start = 1
        while True:
            src = list(itertools.islice(src_lines, pairs))
            tgt = list(itertools.islice(tgt_lines, pairs))
            if len(src) != len(tgt):
                raise CorpusError(f"{paths[0]} and {paths[1]} differ in length from line "
                                  f"{start + min(len(src), len(tgt))}: parallel files must be "
                                  "line-aligned")
            if not src:
                return
            yield start, src, tgt
            start += len(src)
