"""Worker processes for ``prepare``: fresh interpreters that import only this package's modules
and what they need (numpy, SentencePiece), never the ``gapless`` package's ``__init__`` (which
imports torch and the model), fed tasks over pipes; results come back in task order.

A worker is not a fork of the preparing process, so it does not carry that process' memory;
each one reads its tasks in a thread, so a task can be sent while it works on the previous one,
and ends when its input does (also when the parent dies).
"""

from __future__ import annotations

import importlib
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import traceback
from collections import deque
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # the gapless package folder

# the worker's program: register gapless and gapless.data as bare packages (their __init__ not
# run), then serve
BOOT = """
import importlib.machinery, importlib.util, sys
for name, path in (("gapless", sys.argv[1]), ("gapless.data", sys.argv[1] + "/data")):
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [path]
    sys.modules[name] = importlib.util.module_from_spec(spec)
from gapless.data.workers import serve
serve()
"""


def send(stream, obj) -> None:
    data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    stream.write(len(data).to_bytes(8, "little"))
    stream.write(data)
    stream.flush()


def receive(stream):
    """The next object on ``stream``; EOFError at its end."""
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError
    data = stream.read(int.from_bytes(head, "little"))
    if len(data) < int.from_bytes(head, "little"):
        raise EOFError
    return pickle.loads(data)


class WorkerPool:
    """``workers`` processes, each set up by ``module.setup(*args)``; ``map`` applies
    ``module.work(state, task)`` to tasks, a few per worker ahead of the results taken
    (``names``: other names for setup and work)."""

    def __init__(self, workers: int, module: str, args: tuple,
                 names: tuple[str, str] = ("setup", "work")):
        self.procs = [subprocess.Popen([sys.executable, "-c", BOOT, str(PACKAGE)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                      for _ in range(workers)]
        for proc in self.procs:
            send(proc.stdin, (module, names, args))

    def __enter__(self) -> WorkerPool:  # noqa: PYI034 (Self needs Python 3.11)
        return self

    def __exit__(self, kind, error, tb) -> None:
        self.close(kill=kind is not None)

    @staticmethod
    def _ended(proc) -> RuntimeError:
        return RuntimeError(f"a worker process ended (exit code {proc.wait()})")

    def _result(self, proc):
        try:
            status, value = receive(proc.stdout)
        except EOFError:
            raise self._ended(proc) from None
        if status == "error":
            raise value
        return value

    def map(self, tasks):
        """The results of ``tasks`` in order."""
        pending: deque = deque()
        for i, task in enumerate(tasks):
            proc = self.procs[i % len(self.procs)]
            try:
                send(proc.stdin, task)
            except OSError:  # its pipe is closed: it is gone
                raise self._ended(proc) from None
            pending.append(proc)
            if len(pending) > 2 * len(self.procs):
                yield self._result(pending.popleft())
        while pending:
            yield self._result(pending.popleft())

    def close(self, kill: bool = False) -> None:
        """End the workers: at the end of their input, or at once (``kill``)."""
        for proc in self.procs:
            if kill:
                proc.kill()
            try:
                proc.stdin.close()
            except OSError:  # a killed worker's pipe
                pass
        for proc in self.procs:
            proc.wait()
            proc.stdout.close()


def _read(stream, tasks: queue.Queue) -> None:
    while True:
        try:
            tasks.put(receive(stream))
        except EOFError:
            tasks.put(None)
            return


def serve() -> None:
    """A worker's loop: set up, then answer each task with ("ok", result) or ("error",
    exception) until the input ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it ends the workers
    inp, out = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed, also by C++ code, goes to stderr, not into the results
    sys.stdout = sys.stderr
    module, (setup, work), args = receive(inp)
    module = importlib.import_module(module)
    state, work = getattr(module, setup)(*args), getattr(module, work)
    tasks: queue.Queue = queue.Queue()
    threading.Thread(target=_read, args=(inp, tasks), daemon=True).start()
    while (task := tasks.get()) is not None:
        try:
            answer = ("ok", work(state, task))
        except Exception as exc:  # noqa: BLE001 (handed to the parent, raised there)
            exc.add_note("in a worker process:\n" + traceback.format_exc())
            answer = ("error", exc)
        try:
            send(out, answer)
        except (pickle.PicklingError, TypeError, AttributeError):
            send(out, ("error", RuntimeError(f"in a worker process: {answer[1]!r}")))
