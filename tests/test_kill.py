"""Crash safety: ``gapless train`` killed with SIGKILL at seeded random moments (some while a
checkpoint is being written) and restarted until it finishes ends on exactly the weights of
an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from test_train import _cfg, _write_corpus

from gapless.checkpoint import RunDir
from gapless.prepare import prepare

UPDATES = 60
ARGS = {"train.max_updates": UPDATES, "train.save_every": 4, "train.valid_every": 30,
        "train.log_every": 4, "model.dropout": 0.1, "train.keep_last": 2}


def _command(corpus, run) -> list[str]:
    over = ARGS
    args = ["--data.corpus", str(corpus), "--train.device", "cpu", "--train.dtype", "fp32",
            "--train.valid_max_sentences", "10", "--train.threads", "1", "--decode.beam", "1"]
    for key, value in over.items():
        args += [f"--{key}", str(value)]
    return [sys.executable, "-m", "gapless", "train", "tiny", "--run-dir", str(run), *args]


def _writing(run) -> bool:
    try:
        return any(n.startswith(".step_") for n in os.listdir(run / "checkpoints"))
    except FileNotFoundError:
        return False


def _logged(run) -> int:
    try:
        return (run / "log.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill(proc, run, mode: str, delay: float) -> str:
    """SIGKILL ``proc`` once training has logged a new record: at once when a checkpoint is
    being written (``write``) or ``delay`` seconds later (``random``). Returns what was
    happening at the kill ("write", "train"), or "" when the run ended first."""
    start = _logged(run)
    while proc.poll() is None and _logged(run) <= start:
        time.sleep(0.002)
    deadline = time.monotonic() + (10.0 if mode == "write" else delay)
    while proc.poll() is None:
        writing = _writing(run)
        if (mode == "write" and writing) or time.monotonic() >= deadline:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return "write" if writing else "train"
    return ""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_and_restarted_training_ends_on_the_uninterrupted_weights(tmp_path):
    corpus = _write_corpus(tmp_path / "corpus", 200)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for run in (straight, killed):
        prepare(_cfg(corpus), run)  # the same data for both, prepared before any kill
    subprocess.run(_command(corpus, straight), check=True, env=env, capture_output=True)
    rng = random.Random(2026)
    kills = []
    for restart in range(12):  # bounded
        proc = subprocess.Popen(_command(corpus, killed), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if len(kills) >= 4:
            assert proc.wait() == 0
            break
        what = _kill(proc, killed, "write" if restart % 2 else "random", rng.uniform(0, 0.3))
        if not what:
            assert proc.returncode == 0
            break
        kills.append(what)
    assert "write" in kills and len(kills) >= 3, kills
    want = load_file(str(RunDir(straight).pointer("last") / "model.safetensors"))
    got = load_file(str(RunDir(killed).pointer("last") / "model.safetensors"))
    assert RunDir(killed).pointer("last").name == f"step_{UPDATES:08d}"
    assert all(torch.equal(want[k], got[k]) for k in want)
    updates = [r["update"] for r in RunDir(killed).read_log() if r["kind"] == "train"]
    assert updates == sorted(set(updates)) and updates[-1] == UPDATES  # no duplicate records
