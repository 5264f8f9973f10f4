"""``gapless diagnose``: measure a trained run's exposure bias on a split of its corpus and
write ``RUN/diagnose/<split>/diagnose.json``."""

from __future__ import annotations

import json
import logging
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import RunDir, atomic_write_text
from ..corpora import split_paths
from ..data import read_parallel
from ..inference import load
from ..textio import relative_path
from .exposure import BEAMS, MeasureSettings, measure
from .probe import ModelProbe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiagnoseSettings:
    """What to measure and how: the split, a fixed random subsample (``max_sentences``), the
    beam sizes, the beam sweep's first N sentences, and the weights to load."""

    split: str = "test2016"
    max_sentences: int | None = None
    beams: Sequence[int] = BEAMS
    sweep_sentences: int | None = None
    checkpoint: str = "best"
    device: str = "auto"
    dtype: str = "fp32"

    def recorded(self) -> dict:
        """The settings stored in diagnose.json (a result is reused only if they match)."""
        return {"split": self.split, "max_sentences": self.max_sentences,
                "beams": list(self.beams), "sweep_sentences": self.sweep_sentences,
                "checkpoint": self.checkpoint, "dtype": self.dtype}

    def command(self, run_dir: str | Path) -> str:
        """The command line that measures ``run_dir`` with these settings."""
        command = ["gapless", "diagnose", relative_path(run_dir), "--split", self.split,
                   "--beams", ",".join(map(str, self.beams))]
        if self.max_sentences is not None:
            command += ["--max-sentences", str(self.max_sentences)]
        if self.sweep_sentences is not None:
            command += ["--sweep-sentences", str(self.sweep_sentences)]
        if self.checkpoint != "best":
            command += ["--checkpoint", self.checkpoint]
        if self.dtype != "fp32":
            command += ["--dtype", self.dtype]
        return shlex.join(command)


def output_dir(run_dir: str | Path, split: str) -> Path:
    return RunDir(run_dir).path / "diagnose" / split


def select(n: int, max_sentences: int | None, seed: int = 0) -> list[int]:
    """A deterministic subsample (sorted indices) of ``max_sentences`` out of ``n``."""
    if max_sentences is None or max_sentences >= n:
        return list(range(n))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n, size=max_sentences, replace=False).tolist())


def _reusable(out: Path, settings: DiagnoseSettings) -> bool:
    """An existing diagnose.json in ``out`` measured with the same settings."""
    path = out / "diagnose.json"
    return path.is_file() and json.loads(path.read_text()).get("settings") == settings.recorded()


def diagnose(run_dir: str | Path, settings: DiagnoseSettings = DiagnoseSettings(),
             reuse: bool = False) -> Path:
    """Measure a run on a split of its corpus; write ``RUN/diagnose/<split>/diagnose.json``
    and return that folder. ``reuse``: keep an existing result measured with the same
    settings."""
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise FileNotFoundError(f"{run.path}: not a run directory (no config.yaml)")
    s = settings
    out = output_dir(run_dir, s.split)
    if reuse and _reusable(out, s):
        log.info("%s: reusing %s", run.path, out / "diagnose.json")
        return out
    cfg = run.load_config()
    d = cfg.data
    src_path, ref_path = split_paths(d.corpus, s.split, d.src_lang, d.tgt_lang, d.data_dir,
                                     d.download)
    src_text, ref_text = read_parallel(src_path, ref_path)
    corpus_sentences = len(src_text)
    keep = select(corpus_sentences, s.max_sentences)
    src_text, ref_text = [src_text[i] for i in keep], [ref_text[i] for i in keep]
    translator = load(run_dir, s.checkpoint, s.device, s.dtype)
    vocab = translator.vocab
    start = time.perf_counter()
    result = measure(ModelProbe(translator), vocab.encode(src_text), vocab.encode(ref_text),
                     ref_text, MeasureSettings(beams=s.beams,
                                               sweep_sentences=s.sweep_sentences))
    result = {
        "run": relative_path(run.path), "name": cfg.name, "split": s.split,
        "source": relative_path(src_path), "reference": relative_path(ref_path), "corpus_sentences": corpus_sentences,
        "settings": s.recorded(), "command": s.command(run_dir),
        "total_seconds": round(time.perf_counter() - start, 1), **result,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "diagnose.json", json.dumps(result, indent=1))
    return out
