"""Line-faithful text streams for translate: input split on ``\\n`` only and decoded line by
line (a bad line is named and replaced, never fatal), output written under a temporary name
and renamed when complete."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["LineReport", "atomic_output", "read_text_lines", "relative_path"]

log = logging.getLogger(__name__)


class LineReport:
    """What the reader replaced: (line number, why) of each undecodable line."""

    def __init__(self, name: str):
        self.name, self.replaced = name, []

    def note(self, line: int, why: str) -> None:
        self.replaced.append((line, why))
        log.warning("%s:%d: %s; translated as an empty line", self.name, line, why)


def read_text_lines(stream: BinaryIO, report: LineReport) -> Iterator[str]:
    """UTF-8 lines of a byte stream without their ``\\n`` (and a ``\\r`` before it); a
    ``\\r`` inside a line stays inside it, so N lines in give N lines out. A line that is not
    UTF-8 or holds a NUL byte becomes an empty line, reported with its number. A UTF-8
    byte-order mark before the first line is dropped."""
    for i, raw in enumerate(stream, 1):
        raw = raw[:-1] if raw.endswith(b"\n") else raw
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        if i == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.note(i, f"invalid UTF-8 at byte {exc.start} ({exc.reason})")
            yield ""
            continue
        if "\x00" in text:
            report.note(i, "a NUL byte in the line")
            yield ""
            continue
        yield text


@contextlib.contextmanager
def atomic_output(path: str | Path | None, fallback):
    """A text file written as ``.NAME.partial`` next to ``path`` and renamed to ``path`` only
    when the block completes (an interrupted run leaves no half file under the final name);
    ``fallback`` (stdout) when ``path`` is None."""
    if path is None:
        yield fallback
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def relative_path(path: str | Path) -> str:
    """``path`` relative to the working directory, as written into results and commands: a
    report regenerates from the repository without naming a folder of the machine."""
    return os.path.relpath(path)
