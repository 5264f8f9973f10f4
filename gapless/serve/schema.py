"""The server's settings and its requests: parse and check a ``/v1/translate`` body into
sentences and one group of decode settings, or a ``RequestError`` naming the field or limit."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from ..config import DecodeConfig

FIELDS = ("text", "beam", "n_best", "len_penalty", "max_len_a", "max_len_b")


BATCH_STARTS = ("oldest", "quiet", "refill")  # when a merged batch's wait ends (batcher.py)

# what each batching field of ServeSettings must satisfy, and how to say it
BATCHING_CHECKS = {
    "batch_start": (lambda v: v in BATCH_STARTS, f"one of {', '.join(BATCH_STARTS)}"),
    "max_hold_ms": (lambda v: v >= 0, "a number >= 0"),
    "trim_every": (lambda v: v >= 0, "an integer >= 0 (0: never)"),
    "search_batch": (lambda v: v >= 1, "an integer >= 1"),
    "source_multiple": (lambda v: v >= 0, "an integer >= 0 (0: unpadded)"),
}


def batching_problem(name: str, value) -> str | None:
    """What is wrong with ``value`` for the batching field ``name`` (None: nothing)."""
    valid, expected = BATCHING_CHECKS[name]
    return None if valid(value) else f"expected {expected}"


@dataclasses.dataclass
class ServeSettings:
    """How ``gapless serve`` listens, batches and bounds one request."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_batch_tokens: int = 4096  # source pieces (EOS included) in one merged search batch
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    batch_start: str = "refill"  # the wait ends: "refill", "oldest" or "quiet" (batcher.py)
    max_hold_ms: float = 200.0  # "quiet", "refill": the longest a batch waits
    trim_every: int = 8  # batches between two returns of free heap to the kernel (0: never)
    search_batch: int = 128  # sentences in one search of a merged batch (the engine's batch_size)
    source_multiple: int = 8  # a search's source padded to a multiple of this (0: unpadded)
    max_sentences: int = 64  # sentences in one request (more: 413)
    max_chars: int = 10000  # characters in one request, all sentences together (more: 413)
    max_beam: int = 16  # the largest beam a request may ask for
    run: str | Path | None = None  # where eval/*.json live (default: the engine's run)
    http: str = "auto"  # uvicorn's HTTP parser: auto (httptools when installed) | h11 | httptools
    loop: str = "auto"  # uvicorn's event loop: auto (uvloop when installed) | asyncio | uvloop

    def check(self) -> None:
        """ValueError naming the first batching field out of range (``BATCHING_CHECKS``)."""
        for name in BATCHING_CHECKS:
            problem = batching_problem(name, getattr(self, name))
            if problem:
                raise ValueError(f"{name} {getattr(self, name)!r}: {problem}")

    def max_body_bytes(self) -> int:
        """The largest request body read: every character JSON-escaped, plus quotes, commas
        and the decode settings."""
        return 6 * self.max_chars + 8 * self.max_sentences + 4096


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` with a JSON ``body``."""

    def __init__(self, status: int, detail: str, field: str | None = None,
                 limit: dict | None = None):
        super().__init__(detail)
        self.status = status
        self.body: dict = {"detail": detail}
        if field is not None:
            self.body["field"] = field
        if limit is not None:
            self.body["limit"] = limit


def invalid(field: str, message: str) -> RequestError:
    """422 naming ``field``."""
    return RequestError(422, f"{field}: {message}", field=field)


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """The search settings of one request; only requests with equal settings share a batch."""

    beam: int
    n_best: int
    len_penalty: float
    max_len_a: float
    max_len_b: int

    def engine_kwargs(self) -> dict:
        """Keywords of ``Engine.translate_text``."""
        return {"beam": self.beam, "nbest": self.n_best, "len_penalty": self.len_penalty,
                "max_len_a": self.max_len_a, "max_len_b": self.max_len_b}


@dataclasses.dataclass
class TranslateRequest:
    """Checked sentences (``single``: the body's text was one string) and their settings."""

    lines: list[str]
    single: bool
    decode: DecodeSettings


def parse_body(raw: bytes) -> dict:
    """The JSON object of a request body, else 422 on ``body``."""
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise invalid("body", f"malformed JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise invalid("body", "expected a JSON object with a 'text' field")
    return payload


def _integer(payload: dict, field: str, default: int, low: int, high: int) -> int:
    value = payload.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(field, f"expected an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise invalid(field, f"must be between {low} and {high}, got {value}")
    return value


def _number(payload: dict, field: str, default: float, low: float, high: float) -> float:
    value = payload.get(field)
    if value is None:
        return float(default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(field, f"expected a number, got {type(value).__name__}")
    if not (math.isfinite(value) and low <= value <= high):
        raise invalid(field, f"must be a number between {low} and {high}, got {value}")
    return float(value)


def _lines(payload: dict, settings: ServeSettings) -> tuple[list[str], bool]:
    if "text" not in payload or payload["text"] is None:
        raise invalid("text", "required: a string or a list of strings")
    text = payload["text"]
    single = isinstance(text, str)
    lines = [text] if single else text
    if not isinstance(lines, list):
        raise invalid("text", f"expected a string or a list of strings, got {type(text).__name__}")
    for i, line in enumerate(lines):
        if not isinstance(line, str):
            raise invalid(f"text[{i}]", f"expected a string, got {type(line).__name__}")
    if len(lines) > settings.max_sentences:
        raise RequestError(413, f"{len(lines)} sentences in one request; the limit is "
                           f"{settings.max_sentences}", limit={"max_sentences":
                                                              settings.max_sentences})
    chars = sum(len(line) for line in lines)
    if chars > settings.max_chars:
        raise RequestError(413, f"{chars} characters in one request; the limit is "
                           f"{settings.max_chars}", limit={"max_chars": settings.max_chars})
    return lines, single


def parse_request(payload: dict, defaults: DecodeConfig,
                  settings: ServeSettings) -> TranslateRequest:
    """A request body's checked sentences and decode settings (missing or null fields take
    the run's ``defaults``); ``RequestError`` 422 / 413 otherwise."""
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise invalid(unknown[0], f"unknown field (known: {', '.join(FIELDS)})")
    lines, single = _lines(payload, settings)
    max_beam = max(settings.max_beam, defaults.beam)
    beam = _integer(payload, "beam", defaults.beam, 1, max_beam)
    n_best = _integer(payload, "n_best", 1, 1, max_beam)
    if n_best > beam:
        raise invalid("n_best", f"must be <= beam ({beam}), got {n_best}")
    decode = DecodeSettings(
        beam=beam, n_best=n_best,
        len_penalty=_number(payload, "len_penalty", defaults.len_penalty, 0.0, 10.0),
        max_len_a=_number(payload, "max_len_a", defaults.max_len_a, 0.0, 10.0),
        max_len_b=_integer(payload, "max_len_b", defaults.max_len_b, 0, 1000))
    return TranslateRequest(lines, single, decode)
