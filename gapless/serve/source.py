"""Source sentences as the model sees them: SentencePiece piece counts, and truncation of a
sentence longer than the model's positions to its first ``engine.max_source_tokens`` pieces."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

SPACE = "\u2581"  # SentencePiece's word-boundary mark

Pieces = Callable[[list[str]], list[list[str]]]


def pieces_of(engine) -> Pieces:
    """The engine's tokenizer hook: its ``pieces(lines)`` method, else its ``vocab.pieces``
    (a ``gapless.data.Vocab``), else whitespace words as pieces."""
    hook = getattr(engine, "pieces", None)
    if callable(hook):
        return hook
    vocab_hook = getattr(getattr(engine, "vocab", None), "pieces", None)
    if callable(vocab_hook):
        return vocab_hook
    return lambda lines: [[SPACE + w for w in line.split()] for line in lines]


def detokenize(pieces: list[str]) -> str:
    """SentencePiece pieces back to text (the word-boundary mark as a space)."""
    return "".join(pieces).replace(SPACE, " ").strip()


@dataclasses.dataclass
class Source:
    """One sentence to translate: the text the engine gets, its pieces (EOS not counted), and
    whether it was cut to the model's length."""

    text: str
    pieces: int
    truncated: bool = False


def prepare(lines: list[str], pieces: Pieces, limit: int | None) -> list[Source]:
    """``lines`` (none empty) with their piece counts; a line over ``limit`` pieces is cut to
    its first ``limit`` (fewer when the cut text would tokenize longer)."""
    out = []
    for line, found in zip(lines, pieces(lines)):
        if limit is None or len(found) <= limit:
            out.append(Source(line, len(found)))
            continue
        keep = limit
        text = detokenize(found[:keep])
        count = len(pieces([text])[0])
        while count > limit and keep > 0:
            keep -= 1
            text = detokenize(found[:keep])
            count = len(pieces([text])[0])
        out.append(Source(text, count, truncated=True))
    return out
