"""Dynamic batching: the sentences of concurrent requests with the same decode settings are
merged into one search batch, run by the one worker thread that owns the engine, and each
request's translations return to its caller in order. The worker runs in the ``EngineThread``
that loaded the engine when one is given (``owner``; ``gapless serve`` does this), else in a
thread of its own.

Requests wait in an inbox; the worker takes them, prepares their sources (piece counts,
truncation; one tokenizer call for all the requests taken together) and runs the oldest
request's settings group once it holds ``max_batch_tokens`` source pieces, or when its wait
is over (``batch_start``):

* ``"oldest"``: ``max_wait_ms`` after the oldest pending request arrived (or after the last
  batch finished, whichever is later);
* ``"quiet"``: once no request has arrived and no answer has been sent for ``max_wait_ms``
  (and ``max_wait_ms`` after the last batch), at the latest ``max_hold_ms`` after the oldest
  request arrived or the last batch finished. Callers answered by a batch send their next
  requests while the event loop is still sending answers; waiting for a pause is meant to
  gather them into one batch, so that the search does not share the CPU and the GIL with the
  event loop's work on them;
* ``"refill"`` (the default): once as many requests have arrived since the last batch
  finished as that batch answered (its callers are back, when they are the same callers),
  and ``max_wait_ms`` after the oldest pending request or the last batch; at the latest
  ``max_hold_ms`` after them. Callers that send their next request once answered then share
  every batch, instead of the batches alternating between those answered by the one before
  and the rest; a lone caller waits ``max_wait_ms``, as with ``"oldest"``.

The engine gets each merged batch in one call (``translate_text``), which sorts it by length
and splits it into searches of ``search_batch`` sentences (its ``batch_size``): one search for
a merged batch of that many sentences or fewer, since a search's fixed cost per step is shared
by all its sentences. A request whose caller is gone (its task cancelled: the client
disconnected) is dropped before its batch runs. Results are handed back with
``loop.call_soon_threadsafe``; a failing batch is retried one request at a time, so that only
the request that fails gets the error. Every ``trim_every`` batches (0: never; 8 by default)
the heap's free pages go back to the kernel (``release_free_memory``) before the batch's
callers are answered, so that free blocks left by earlier batch shapes do not pile up; not
after every batch, since the batch after a trim faults its working memory back in page by page.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from concurrent.futures import Future

from ..inference import Translation
from ..runtime import release_free_memory
from .owner import EngineThread
from .schema import DecodeSettings, ServeSettings
from .source import Source, pieces_of, prepare

log = logging.getLogger(__name__)

EMPTY = Translation(text="", score=0.0, log_prob=0.0, tokens=0)


@dataclasses.dataclass
class Result:
    """One request's answer: each sentence's n-best translations (best first) and whether the
    sentence was truncated to the model's length."""

    translations: list[list[Translation]]
    truncated: list[bool]


@dataclasses.dataclass(eq=False)
class Job:
    """One request in the queue."""

    lines: list[str]
    settings: DecodeSettings
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float = dataclasses.field(default_factory=time.monotonic)
    dropped: bool = False  # the caller is gone: never run it
    sources: list[Source | None] | None = None  # None per empty line; set by the worker

    @property
    def tokens(self) -> int:
        return sum(s.pieces + 1 for s in self.sources or [] if s is not None)


def _settle(future: asyncio.Future, result, error: BaseException | None) -> None:
    if future.done():  # cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Batcher:
    """Merges concurrent requests into search batches for one ``Engine`` (one worker thread
    calls it; nothing else may)."""

    def __init__(self, engine, settings: ServeSettings | None = None,
                 owner: EngineThread | None = None, **changes):
        """Batching by the fields ``max_batch_tokens``, ``max_wait_ms``, ``batch_start``,
        ``max_hold_ms``, ``trim_every`` and ``search_batch`` of ``settings`` (default
        ``ServeSettings()``) with ``changes`` (``Batcher(engine, max_wait_ms=1)``)."""
        s = dataclasses.replace(settings or ServeSettings(), **changes)
        s.check()
        self.engine = engine
        self.max_batch_tokens, self.max_wait = s.max_batch_tokens, s.max_wait_ms / 1000
        self.start_rule, self.max_hold = s.batch_start, max(s.max_hold_ms, s.max_wait_ms) / 1000
        self.trim_every, self.search_batch = s.trim_every, s.search_batch
        self.busy = 0.0  # seconds in engine calls
        self.pieces = pieces_of(engine)
        self.limit = getattr(engine, "max_source_tokens", None)
        self._cond = threading.Condition()
        self._inbox: list[Job] = []
        self._closed = False
        self.owner = owner  # the thread that loaded the engine runs the worker; None: a new one
        self._worker: threading.Thread | Future | None = None
        self._stopped = threading.Event()  # the worker has left its loop
        self.counts = {"requests": 0, "dropped": 0, "batches": 0, "sentences": 0, "failed": 0}
        self._last_done = 0.0  # when the last batch finished (monotonic seconds)
        self._answered = 0  # requests the last batch answered
        self._delivered = 0.0  # when the last answer went out (``delivered``)

    def start(self) -> None:
        """Start the worker (once): in ``owner``, else in a new thread."""
        with self._cond:
            if self._worker is not None or self._closed:
                return
            if self.owner is not None:
                self._worker = self.owner.submit(self._work)
            else:
                self._worker = threading.Thread(target=self._work, name="gapless-batcher",
                                                daemon=True)
                self._worker.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after its current batch; queued requests fail."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            started = self._worker is not None
        if started:
            self._stopped.wait(timeout)

    def stats(self) -> dict:
        with self._cond:
            return {**self.counts, "queued": len(self._inbox),
                    "busy_seconds": round(self.busy, 3)}

    async def translate(self, lines: list[str], settings: DecodeSettings) -> Result:
        """Each line's n-best translations, once its batch has run. Empty lines translate to
        an empty text without reaching the engine."""
        loop = asyncio.get_running_loop()
        job = Job(list(lines), settings, loop.create_future(), loop)
        if not any(line.strip() for line in job.lines):
            return Result([[EMPTY] for _ in job.lines], [False] * len(job.lines))
        self.start()
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._inbox.append(job)
            self.counts["requests"] += 1
            self._cond.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            job.dropped = True
            with self._cond:
                self.counts["dropped"] += 1
                if job in self._inbox:
                    self._inbox.remove(job)
            raise

    def delivered(self) -> None:
        """An answer has been sent (the app calls this once its response is out): with
        ``batch_start="quiet"`` the wait for the next batch counts from the last one."""
        self._delivered = time.monotonic()

    # -- the worker thread ------------------------------------------------------------------

    def _work(self) -> None:
        try:
            self._loop()
        finally:
            self._stopped.set()

    def _loop(self) -> None:
        pending: list[Job] = []
        while True:
            new = self._wait_for_jobs(pending)
            if new is None:
                break
            try:
                pending = self._step(pending, new)
            except Exception as exc:  # never leave callers waiting on a dead worker
                log.exception("the batcher failed; its pending requests are answered")
                for job in pending + new:
                    self._answer(job, error=exc)
                pending = []
        for job in pending:
            self._answer(job, error=RuntimeError("the server is shutting down"))

    def _step(self, pending: list[Job], new: list[Job]) -> list[Job]:
        """Prepare ``new``, run a batch if one is ready; the jobs still pending."""
        self._prepare_all(new)
        pending = [j for j in pending + new if not j.dropped and not j.future.done()]
        batch = self._ready(pending)
        if batch:
            pending = [j for j in pending if j not in batch]
            self._run(batch)
        return pending

    def _wait_for_jobs(self, pending: list[Job]) -> list[Job] | None:
        """New jobs from the inbox (waiting for one when nothing is pending, else until the
        oldest pending one's wait is over); None once closed."""
        with self._cond:
            if not pending:
                while not self._inbox and not self._closed:
                    self._cond.wait()
            elif not self._inbox:
                left = self._start_at(pending) - time.monotonic()
                if left > 0 and not self._group_full(pending):
                    self._cond.wait(left)
            if self._closed:
                for job in self._inbox:
                    self._answer(job, error=RuntimeError("the server is shutting down"))
                self._inbox = []
                return None
            new, self._inbox = self._inbox, []
            return new

    def _prepare_all(self, jobs: list[Job]) -> None:
        """Set each job's ``sources`` with one tokenizer call for all their lines (a call has
        a fixed cost, whatever its size); when it fails, one call per job, so that only the
        job that fails gets the error."""
        full = [[line for line in job.lines if line.strip()] for job in jobs]
        try:
            sources = prepare([line for lines in full for line in lines], self.pieces,
                              self.limit)
        except Exception:  # noqa: BLE001 (each job's own call below answers its error)
            for job in jobs:
                self._prepare(job)
            return
        found = iter(sources)
        for job in jobs:
            job.sources = [next(found) if line.strip() else None for line in job.lines]

    def _prepare(self, job: Job) -> None:
        try:
            full = [line for line in job.lines if line.strip()]
            sources = iter(prepare(full, self.pieces, self.limit))
            job.sources = [next(sources) if line.strip() else None for line in job.lines]
        except Exception as exc:  # a tokenizer error fails this request only
            log.exception("preparing a request failed")
            job.dropped = True  # answered: not to be batched
            self._answer(job, error=exc)

    def _group(self, pending: list[Job]) -> list[Job]:
        return [j for j in pending if j.settings == pending[0].settings]

    def _group_full(self, pending: list[Job]) -> bool:
        return sum(j.tokens for j in self._group(pending)) >= self.max_batch_tokens

    def _start_at(self, pending: list[Job]) -> float:
        """When a group that is not full may run: ``max_wait`` after its oldest job arrived
        and after the last batch finished (so the callers that batch answered can send their
        next request into this one, instead of batches alternating between two halves); with
        ``batch_start="quiet"`` ``max_wait`` after the newest arrival or the last answer sent
        (``delivered``) instead, and ``max_hold`` after the oldest arrival or the last batch
        at the latest; with ``batch_start="refill"`` ``max_hold`` after those until as many jobs
        have arrived since the last batch as it answered."""
        oldest = max(pending[0].arrived, self._last_done)
        if self.start_rule == "oldest":
            return oldest + self.max_wait
        if self.start_rule == "refill":
            back = sum(j.arrived >= self._last_done for j in pending)
            return oldest + (self.max_wait if back >= self._answered else self.max_hold)
        newest = max(max(j.arrived for j in pending), self._last_done, self._delivered)
        return min(newest + self.max_wait, oldest + self.max_hold)

    def _ready(self, pending: list[Job]) -> list[Job]:
        """The oldest job's settings group, in arrival order, up to ``max_batch_tokens`` (at
        least one job), if the group is full or it has waited long enough (``_start_at``)."""
        if not pending:
            return []
        if time.monotonic() < self._start_at(pending) and not self._group_full(pending):
            return []
        batch, tokens = [], 0
        for job in self._group(pending):
            if batch and tokens + job.tokens > self.max_batch_tokens:
                break
            batch.append(job)
            tokens += job.tokens
        return batch

    def _run(self, batch: list[Job]) -> None:
        batch = [j for j in batch if not j.dropped and not j.future.done()]
        if not batch:
            return
        start = time.monotonic()
        try:
            answers = self._run_batch(batch)
        finally:
            self.busy += time.monotonic() - start
        if self.trim_every > 0 and self.counts["batches"] % self.trim_every == 0:
            release_free_memory()  # freed blocks of earlier batch shapes: back to the OS
        self._last_done, self._answered = time.monotonic(), len(answers)  # before any answer
        for job, result, error in answers:
            self._answer(job, result, error)

    def _run_batch(self, batch: list[Job]) -> list[tuple[Job, Result | None, Exception | None]]:
        """(job, result, error) for each job of ``batch``: one engine call, or, when it fails,
        one call per job, so that only the job that fails gets the error."""
        try:
            results = self._translate(batch)
        except Exception as exc:
            if len(batch) > 1:  # find the request that fails; the others still get answers
                return [answer for job in batch for answer in self._run_batch([job])]
            log.exception("translation failed")
            self.counts["failed"] += 1
            return [(batch[0], None, exc)]
        return [(job, result, None) for job, result in zip(batch, results)]

    def _translate(self, batch: list[Job]) -> list[Result]:
        """One engine call for the sentences of ``batch``; each job's ``Result``."""
        texts = [s.text for j in batch for s in j.sources if s is not None]
        found = self.engine.translate_text(texts, **batch[0].settings.engine_kwargs(),
                                           batch_size=self.search_batch)
        if len(found) != len(texts):
            raise RuntimeError(f"the engine answered {len(found)} of {len(texts)} sentences")
        self.counts["batches"] += 1
        self.counts["sentences"] += len(texts)
        answers = iter(found)
        return [Result([next(answers) if s is not None else [EMPTY] for s in job.sources],
                       [s is not None and s.truncated for s in job.sources]) for job in batch]

    def _answer(self, job: Job, result: Result | None = None,
                error: BaseException | None = None) -> None:
        try:
            job.loop.call_soon_threadsafe(_settle, job.future, result, error)
        except RuntimeError:  # the event loop is closed: nobody is waiting
            pass
