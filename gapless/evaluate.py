"""Score a run: translate a corpus split, BLEU and chrF with signatures, hypotheses written."""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import config as config_mod
from .checkpoint import RunDir, atomic_write_text
from .config import DataConfig
from .corpora import split_paths
from .data import read_parallel
from .inference import Engine, load
from .metrics import corpus_scores
from .textio import relative_path


def score_split(
    translator: Engine, data: DataConfig, split: str, **decode_kwargs
) -> tuple[dict, list[str]]:
    """Translate ``split`` of corpus ``data.corpus`` (or ``CORPUS:SPLIT``) and score it against
    the raw references: (result with BLEU, chrF, signatures and speed; hypotheses)."""
    corpus, _, name = split.rpartition(":")
    src_path, ref_path = split_paths(corpus or data.corpus, name, data.src_lang, data.tgt_lang,
                                     data.data_dir, data.download)
    src, ref = read_parallel(src_path, ref_path)
    start = time.perf_counter()
    hyps = translator.translate(src, **decode_kwargs)
    seconds = time.perf_counter() - start
    result = {
        "split": split,
        "source": relative_path(src_path),
        "reference": relative_path(ref_path),
        "sentences": len(src),
        "decode_seconds": round(seconds, 3),
        "sentences_per_second": round(len(src) / seconds, 2),
        **corpus_scores(hyps, ref).to_dict(),
    }
    return result, hyps


def evaluate(
    run_dir: str | Path, split: str, checkpoint: str = "best", device: str = "auto",
    dtype: str = "fp32", translator: Engine | None = None, **decode_kwargs,
) -> dict:
    """Translate a split of the run's corpus, score BLEU + chrF (with signatures) against the raw
    references, and write ``eval/<split>.hyp`` and ``eval/<split>.json``. ``split`` may name
    another corpus as ``CORPUS:SPLIT`` (e.g. ``multi30k:test2016`` for a model fine-tuned on
    another domain). ``translator``: an already loaded model (several splits, one load), any
    Engine; for an exported CTranslate2 directory the config comes from its description."""
    run = RunDir(run_dir)
    translator = translator or load(run_dir, checkpoint, device, dtype)
    described = translator.describe()
    cfg = (run.load_config() if run.config.is_file() or "config" not in described
           else config_mod.from_dict(described["config"]))
    result, hyps = score_split(translator, cfg.data, split, **decode_kwargs)
    result["decode"] = {**cfg.decode.__dict__, **decode_kwargs}
    result["engine"], result["checkpoint"] = described.get("engine"), described.get("checkpoint")
    name = result["split"] = split.replace(":", ".")  # the file name
    run.eval.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.eval / f"{name}.hyp", "".join(h + "\n" for h in hyps))
    atomic_write_text(run.eval / f"{name}.json", json.dumps(result, indent=1))
    return result
