"""The thread that owns the model: it loads the engine and then runs every batch of it.

torch's CPU threads are OpenMP threads, and OpenMP keeps one team of helper threads for each
thread that starts parallel work. A model loaded in the main thread and searched in a worker
thread leaves the process with two teams; with more OpenMP threads than cores, libgomp lets
the helpers sleep between parallel regions instead of spinning, so each operation of a search
step waits for its helper to wake. Loading and searching in one thread keeps one team.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future


class EngineThread:
    """A daemon thread that runs the calls handed to it, one at a time, in order: ``submit``
    returns a ``concurrent.futures.Future``, ``call`` waits for the answer (or raises)."""

    def __init__(self, name: str = "gapless-engine"):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def ident(self) -> int | None:
        """The thread's identifier (``threading.get_ident()`` inside it)."""
        return self._thread.ident

    def submit(self, fn: Callable, *args, **kwargs) -> Future:
        """Run ``fn(*args, **kwargs)`` in the thread after the calls before it."""
        if self._closed:
            raise RuntimeError("the engine thread is closed")
        future: Future = Future()
        self._queue.put((fn, args, kwargs, future))
        return future

    def call(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` run in the thread; its result, or its exception raised."""
        return self.submit(fn, *args, **kwargs).result()

    def close(self, timeout: float = 10.0) -> None:
        """Stop once the calls already handed over have run (waiting up to ``timeout``)."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, args, kwargs, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except Exception as exc:  # noqa: BLE001 (handed to the caller, raised there)
                future.set_exception(exc)
