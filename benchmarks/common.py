"""Helpers shared by the benchmarks: machine description, peak memory, JSON output, timing,
child processes, and a run's config, test split and training batches."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def relpath(path: str | Path) -> str:
    """``path`` relative to the repository root (``runs/NAME``, ``../shared/data/...``), so that
    no machine's absolute paths end up in the JSON. Relative inputs are taken from the cwd."""
    return os.path.relpath(Path(path).resolve(), REPO)


# -- machine and process --------------------------------------------------------------------


def load_avg() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def git_commit() -> str | None:
    """The checkout's short commit, ``+dirty`` when tracked files differ from it."""

    def git(*args: str, check: bool = True) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=check
        ).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no", check=False)
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def machine(threads: int) -> dict:
    """CPU, versions, commit and the load average at start (``finish`` adds the one at end)."""
    import torch

    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "gapless_commit": git_commit(),
        "load_avg_1m_start": load_avg(),
    }


def finish(info: dict) -> dict:
    """``info`` with the load average at the end."""
    info["load_avg_1m_end"] = load_avg()
    return info


def peak_rss_mb() -> float:
    """This process's peak RSS in MB: VmHWM (per address space, so a child does not inherit its
    parent's peak, as ru_maxrss does across fork + exec), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def child_json(module: str, args: list[str], env: dict | None = None):
    """Run ``python -m module args`` from the repository root in a fresh process; its last
    stdout line, parsed as JSON. Exits with the child's stderr tail when it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{module} {' '.join(args)}: exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- output ---------------------------------------------------------------------------------


def say(tag: str, message: str) -> None:
    """Progress on stderr (stdout holds only the JSON document)."""
    print(f"[{tag}] {message}", file=sys.stderr, flush=True)


def emit(doc: dict) -> None:
    """The benchmark's one JSON document on stdout."""
    print(json.dumps(doc, indent=1))


def reply(obj) -> None:
    """A child process's answer: one JSON line on stdout (``child_json`` reads the last)."""
    print(json.dumps(obj), flush=True)


# -- timing ---------------------------------------------------------------------------------


def rotated(names: list[str], i: int) -> list[str]:
    """``names`` starting at ``i`` mod len: who runs first changes every round (two names
    alternate)."""
    shift = i % len(names)
    return names[shift:] + names[:shift]


def timed(f: Callable, into: list[float]) -> Callable:
    """``f`` that appends each call's seconds to ``into``."""

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = f(*args, **kwargs)
        into.append(time.perf_counter() - start)
        return out

    return wrapper


def median_ms(calls: dict[str, list[float]], skip: int = 0) -> dict[str, float]:
    """Median milliseconds per name, without the first ``skip`` calls."""
    import statistics

    return {k: round(statistics.median(v[skip:]) * 1e3, 2) for k, v in calls.items()}


# -- runs -----------------------------------------------------------------------------------


def run_config(run: str | Path, overrides: list[str] | dict | None = None):
    """A run directory's saved config (migrated to current names), with overrides."""
    from gapless.checkpoint import RunDir

    return RunDir(run).load_config(overrides)


def split_lines(run: str | Path, split: str = "test2016",
                limit: int = 0) -> tuple[list[str], list[str], Path]:
    """(source lines, reference lines, source file) of a split of the run's corpus; the first
    ``limit`` pairs only when ``limit`` > 0."""
    from gapless.corpora import split_paths
    from gapless.data import read_parallel

    d = run_config(run).data
    src_path, ref_path = split_paths(
        d.corpus, split, d.src_lang, d.tgt_lang, d.data_dir, d.download
    )
    src, ref = read_parallel(src_path, ref_path)
    if limit:
        src, ref = src[:limit], ref[:limit]
    return src, ref, src_path


def training_batches(run: str | Path, cfg, limit: int | None = None):
    """(training data, token batches of ``cfg.train.max_tokens``, the first ``limit``) of the
    run's prepared corpus."""
    from gapless.data import token_batches
    from gapless.prepare import prepare

    data = prepare(cfg, run).train
    batches = token_batches(data.src_lens, data.tgt_lens, cfg.train.max_tokens, 1, 1)
    return data, batches[:limit] if limit else batches


@dataclasses.dataclass
class Trainee:
    """A fresh model with the trainer's criterion and optimizer."""

    model: object
    strategy: object
    criterion: object
    optimizer: object


def trainee(cfg, seed: int = 1, lr: float = 1e-4) -> Trainee:
    """``cfg``'s model from ``seed`` in training mode, its strategy, ``Criterion`` and the
    trainer's optimizer at ``lr``."""
    import torch

    from gapless.model import Transformer
    from gapless.strategies import build_strategy
    from gapless.training.criterion import Criterion
    from gapless.training.optim import build_optimizer

    torch.manual_seed(seed)
    model = Transformer(cfg.model).train()
    strategy = build_strategy(cfg.strategy)
    return Trainee(
        model,
        strategy,
        Criterion(model, strategy, cfg.train.label_smoothing),
        build_optimizer(model, dataclasses.replace(cfg.train, lr=lr)),
    )


def train_step(criterion, optimizer, batch, update: int, dtype: str) -> float:
    """Seconds of one training step on the CPU (forward under ``dtype`` autocast, backward of
    the per-token loss, optimizer step)."""
    import torch

    from gapless.runtime import autocast
    from gapless.schedules import Progress

    start = time.perf_counter()
    with autocast(torch.device("cpu"), dtype):
        loss, sample_size, _ = criterion(batch, Progress(update, 10))
    (loss / sample_size).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start
