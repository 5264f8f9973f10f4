"""The HTTP API of ``gapless serve``: an ASGI application (Starlette) around one loaded
``gapless.inference.Engine``, with dynamic batching and a web page.

``create_app(engine, ServeSettings(...))``; ``gapless serve RUN`` runs it with uvicorn::

    curl -s localhost:8080/v1/translate -d '{"text": ["Ein Hund läuft."], "n_best": 2}'

POST /v1/translate
    Body (JSON): ``{"text": "Ein Hund läuft." | ["Satz eins.", "Satz zwei."], "beam": 5,
    "n_best": 1, "len_penalty": 1.0, "max_len_a": 1.5, "max_len_b": 10}``; only ``text`` is
    required, a missing or null setting takes the run's decode config (``n_best``: 1).
    Answer: ``{"translations": [ENTRY, ...], "model": NAME, "seconds": S, "settings": {...}}``
    with one ENTRY per input sentence, in input order (a string ``text`` gives a list of one,
    as DeepL's ``translations``). Every ENTRY has the same shape::

        {"text": "A dog runs.", "score": -0.21, "truncated": false,
         "alternatives": [{"text": "A dog is running.", "score": -0.35}, ...]}

    ``text``/``score``: the best hypothesis and its ranking score (length-normalised log-prob
    for beam search, mean log-prob per piece for greedy; null if not finite);
    ``alternatives``: the next ``n_best - 1`` hypotheses, best first (LibreTranslate's name;
    empty when ``n_best`` is 1).
    An empty or blank sentence translates to ``""`` (score 0). A sentence longer than the
    model's positions is cut to its first ``max_source_tokens`` SentencePiece pieces and
    translated with ``"truncated": true``. ``seconds``: the request's time in the server,
    queueing included. Requests with equal settings that arrive together share a search batch.

    Errors (JSON ``{"detail": ..., "field": ...}`` or ``{"detail": ..., "limit": {...}}``):
    422 malformed JSON (field ``body``), an unknown field, a wrong type or a setting out of
    range (``beam`` 1..max_beam, ``n_best`` 1..beam, ``len_penalty`` and ``max_len_a``
    0..10, ``max_len_b`` 0..1000), naming the field (``text[3]`` for a list item); 413 more
    sentences or characters in one request than ``--max-sentences`` / ``--max-chars`` (or a
    body over their byte bound), with the limit; 500 the engine failed on this request (other
    requests of its batch are still answered); 499 (logged only) the client went away: its
    request is dropped from the queue before its batch runs.

GET /v1/model
    What is loaded: ``{"name", "engine": engine.describe() without its config, "config": the
    run's config, "decode": the default settings, "scores": {split: {"bleu", "chrf",
    "sentences", "bleu_signature", ...}} from RUN/eval/*.json, "limits": {...}, "server":
    {"http", "loop"}}`` (uvicorn's parser and event loop, resolved by ``gapless serve``).

GET /health
    ``{"status": "ok", "engine", "requests", "dropped", "batches", "sentences", "failed",
    "queued", "busy_seconds"}`` (``busy_seconds``: time the worker spent in engine calls).

GET /
    The web page (``gapless/serve/static``, no external assets): German in, English out, beam
    and n-best with scores, time taken, the model's name and BLEU; Ctrl+Enter translates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..config import DecodeConfig
from .batcher import EMPTY, Batcher, Result
from .owner import EngineThread
from .schema import RequestError, ServeSettings, TranslateRequest, parse_body, parse_request

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
                "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
SCORE_KEYS = ("bleu", "chrf", "sentences", "bleu_signature", "chrf_signature", "decode")


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def decode_defaults(engine, described: dict) -> DecodeConfig:
    """The run's decode settings: the engine's ``decode_cfg``, else its described config's
    ``decode`` section, else gapless's defaults."""
    cfg = getattr(engine, "decode_cfg", None)
    if isinstance(cfg, DecodeConfig):
        return cfg
    known = {f.name for f in dataclasses.fields(DecodeConfig)}
    given = (described.get("config") or {}).get("decode") or {}
    return DecodeConfig(**{k: v for k, v in given.items() if k in known})


def eval_scores(run: str | Path | None) -> dict:
    """``{split: scores}`` of the run's ``eval/*.json`` (those written by ``gapless evaluate``)."""
    scores: dict = {}
    if run is None:
        return scores
    for path in sorted(Path(run, "eval").glob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and "bleu" in doc:
            scores[path.stem] = {k: doc[k] for k in SCORE_KEYS if k in doc}
    return scores


def _score(value: float) -> float | None:
    """A score for JSON (which has no infinities): rounded, or None when not finite."""
    value = float(value)
    return round(value, 4) if math.isfinite(value) else None


def entry(hyps: list, truncated: bool) -> dict:
    """One sentence of the answer: the best text and score, the alternatives, truncation."""
    best = hyps[0] if hyps else EMPTY
    return {"text": best.text, "score": _score(best.score), "truncated": truncated,
            "alternatives": [{"text": h.text, "score": _score(h.score)} for h in hyps[1:]]}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (before reading it all)."""
    declared = request.headers.get("content-length", "")
    too_big = RequestError(413, f"request body over {limit} bytes", limit={"max_bytes": limit})
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def until_disconnect(request: Request, work) -> Result:
    """Await ``work`` unless the client disconnects first: then cancel it (its request leaves
    the queue) and raise ``ClientGone``."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    if task not in done:
        raise ClientGone
    return task.result()


class Service:
    """The handlers over one engine and its batcher."""

    def __init__(self, engine, settings: ServeSettings, owner: EngineThread | None = None):
        self.engine, self.settings = engine, settings
        self.batcher = Batcher(engine, settings, owner)
        described = engine.describe()
        self.described = described
        self.decode = decode_defaults(engine, described)
        run = settings.run or described.get("run")
        self.run = Path(run) if run else None
        self.name = described.get("name") or (self.run.name if self.run else engine.name)

    async def translate(self, request: Request) -> Response:
        start = time.perf_counter()
        try:
            payload = parse_body(await read_body(request, self.settings.max_body_bytes()))
            req: TranslateRequest = parse_request(payload, self.decode, self.settings)
            result = await until_disconnect(request,
                                            self.batcher.translate(req.lines, req.decode))
        except RequestError as exc:
            return JSONResponse(exc.body, status_code=exc.status)
        except (ClientGone, ClientDisconnect):
            log.info("client gone: request dropped")
            return Response(status_code=499)
        except Exception as exc:
            log.exception("translation failed")
            return JSONResponse({"detail": f"translation failed: {type(exc).__name__}: {exc}"},
                                status_code=500)
        return JSONResponse({
            "translations": [entry(h, t) for h, t in zip(result.translations, result.truncated)],
            "model": self.name, "seconds": round(time.perf_counter() - start, 4),
            "settings": dataclasses.asdict(req.decode)},
            background=BackgroundTask(self.batcher.delivered))  # runs once the answer is out

    async def model(self, request: Request) -> Response:
        s = self.settings
        return JSONResponse({
            "name": self.name, "engine": {k: v for k, v in self.described.items()
                                          if k != "config"},
            "config": self.described.get("config"), "decode": dataclasses.asdict(self.decode),
            "scores": eval_scores(self.run),
            "limits": {"max_sentences": s.max_sentences, "max_chars": s.max_chars,
                       "max_beam": max(s.max_beam, self.decode.beam),
                       "max_source_tokens": getattr(self.engine, "max_source_tokens", None),
                       "max_batch_tokens": s.max_batch_tokens, "max_wait_ms": s.max_wait_ms,
                       "batch_start": s.batch_start, "max_hold_ms": s.max_hold_ms,
                       "search_batch": s.search_batch},
            "server": {"http": s.http, "loop": s.loop}})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "engine": self.engine.name,
                             **self.batcher.stats()})

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


def create_app(engine, settings: ServeSettings | None = None,
               owner: EngineThread | None = None) -> Starlette:
    """The ASGI application serving ``engine`` (its batcher's worker starts with the app and
    stops with it, in ``owner``, the thread that loaded the engine, when given;
    ``app.state.service`` holds the handlers and the batcher)."""
    service = Service(engine, settings or ServeSettings(), owner)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(service.batcher.close)

    app = Starlette(routes=[
        Route("/", service.page),
        Route("/health", service.health),
        Route("/v1/model", service.model),
        Route("/v1/translate", service.translate, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ], lifespan=lifespan)
    app.state.service = service
    return app
