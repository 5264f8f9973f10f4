"""An advisory lock on a run directory, so two trainings never write one run: a lock file
holding the holder's pid and host, taken over with a warning when its process is gone."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

__all__ = ["RunLock", "RunLocked"]

log = logging.getLogger(__name__)


class RunLocked(RuntimeError):
    """Another live process holds the run: names it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class RunLock:
    """``with RunLock(run_dir): ...``: holds ``RUN/train.lock`` for the block."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "train.lock"
        self.me = {"pid": os.getpid(), "host": socket.gethostname(),
                   "since": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def __enter__(self) -> RunLock:  # noqa: PYI034 (Self needs Python 3.11)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.me, f)
            return self
        raise RunLocked(f"{self.path}: could not take the lock")

    def _take_over_if_stale(self) -> None:
        """Remove the lock of a dead process on this host; otherwise refuse, naming it."""
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            holder = {}
        pid, host = holder.get("pid"), holder.get("host")
        if host == self.me["host"] and isinstance(pid, int) and not _alive(pid):
            log.warning("%s: taking over the stale lock of process %d (no longer running)",
                        self.path, pid)
            self.path.unlink(missing_ok=True)
            return
        if not holder:  # unreadable: being written this instant, or garbage; not ours
            raise RunLocked(f"{self.path}: the run is locked (unreadable lock file); remove it "
                            "if no training runs on this directory")
        raise RunLocked(f"{self.path.parent}: already being trained by process {pid} on {host} "
                        f"(since {holder.get('since')}); remove {self.path} if that is wrong")

    def __exit__(self, *exc) -> None:
        try:
            if json.loads(self.path.read_text()).get("pid") == self.me["pid"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass
