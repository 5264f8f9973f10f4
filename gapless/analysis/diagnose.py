"""``gapless diagnose``: measure a trained run's exposure bias on a split of its corpus and
write ``RUN/diagnose/<split>/diagnose.json``; with ``length_grid``, also the search's own
effect on length, chosen on the valid split (``gapless.analysis.lengths``)."""

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
from ..config import ConfigError
from ..corpora import split_paths
from ..data import read_parallel
from ..inference import Translator, load
from ..textio import relative_path
from .exposure import BEAMS, MeasureSettings, measure
from .lengths import Split, length_grid
from .probe import ModelProbe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiagnoseSettings:
    """What to measure and how: the split, a fixed random subsample (``max_sentences``, of the
    valid split too), the beam sizes, the beam sweep's first N sentences, the weights to load,
    and whether to choose length settings on valid (``length_grid``)."""

    split: str = "test2016"
    max_sentences: int | None = None
    beams: Sequence[int] = BEAMS
    sweep_sentences: int | None = None
    checkpoint: str = "best"
    device: str = "auto"
    dtype: str = "fp32"
    length_grid: bool = False

    def recorded(self) -> dict:
        """The settings stored in diagnose.json (a result is reused only if they match)."""
        return {"split": self.split, "max_sentences": self.max_sentences,
                "beams": list(self.beams), "sweep_sentences": self.sweep_sentences,
                "checkpoint": self.checkpoint, "dtype": self.dtype,
                "length_grid": self.length_grid}

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
        if self.length_grid:
            command += ["--length-grid"]
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
    """An existing diagnose.json in ``out`` measured with the same settings (and holding the
    word-length buckets, which older results lack)."""
    path = out / "diagnose.json"
    if not path.is_file():
        return False
    result = json.loads(path.read_text())
    return (result.get("settings") == settings.recorded()
            and "by_word_bucket" in result.get("gap", {}))


def _split(cfg, split: str, keep_n: int | None) -> tuple[Split, int, list]:
    """A split of the run's corpus, subsampled to ``keep_n`` sentences (``select``): (the
    split, its corpus size, its source and reference paths)."""
    d = cfg.data
    paths = split_paths(d.corpus, split, d.src_lang, d.tgt_lang, d.data_dir, d.download)
    src_text, ref_text = read_parallel(*paths)
    keep = select(len(src_text), keep_n)
    return (Split(split, [src_text[i] for i in keep], [ref_text[i] for i in keep]),
            len(src_text), list(paths))


def _length_grid(cfg, translator: Translator, test: Split, keep_n: int | None) -> dict:
    """The length settings chosen on the run's valid split, then scored on ``test``, at the
    run's own beam size (``gapless.analysis.lengths``)."""
    valid = _split(cfg, cfg.data.valid_split, keep_n)[0]
    decode = translator.decode_cfg
    default = {"len_norm": decode.len_norm, "len_penalty": decode.len_penalty,
               "min_len_ratio": decode.min_len_ratio}

    def translate(lines: list[str], **setting) -> list[str]:
        return translator.translate(lines, beam=decode.beam, **setting)

    return {"beam": decode.beam, **length_grid(translate, valid, test, default)}


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
    if s.length_grid and s.split == cfg.data.valid_split:
        raise ConfigError(f"--length-grid chooses on {s.split}: diagnose another split")
    test, corpus_sentences, (src_path, ref_path) = _split(cfg, s.split, s.max_sentences)
    translator = load(run_dir, s.checkpoint, s.device, s.dtype)
    vocab = translator.vocab
    start = time.perf_counter()
    result = measure(ModelProbe(translator), vocab.encode(test.src), vocab.encode(test.ref),
                     test.ref, MeasureSettings(beams=s.beams,
                                               sweep_sentences=s.sweep_sentences))
    if s.length_grid:
        result["length_grid"] = _length_grid(cfg, translator, test, s.max_sentences)
    result = {
        "run": relative_path(run.path), "name": cfg.name, "split": s.split,
        "source": relative_path(src_path), "reference": relative_path(ref_path),
        "corpus_sentences": corpus_sentences, "settings": s.recorded(),
        "command": s.command(run_dir), "total_seconds": round(time.perf_counter() - start, 1),
        **result,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "diagnose.json", json.dumps(result, indent=1))
    return out
