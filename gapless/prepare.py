"""``gapless prepare``: joint SentencePiece model + checked, encoded corpus in the run directory."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import config as config_mod
from .checkpoint import RunDir, atomic_write_bytes, atomic_write_text
from .config import Config
from .corpora import split_paths
from .data import CorpusError, ParallelData, Vocab, read_lines, read_parallel
from .textio import relative_path

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    vocab: Vocab
    train: ParallelData
    valid: ParallelData
    valid_src: list[str]  # raw text for BLEU during training
    valid_ref: list[str]
    report: dict


def _data_key(cfg: Config) -> dict:
    d = cfg.data
    return {k: getattr(d, k) for k in ("corpus", "src_lang", "tgt_lang", "train_split",
                                       "valid_split", "vocab_size", "spm_type",
                                       "character_coverage", "max_len", "bad_pairs")}


def paths(cfg: Config, split: str) -> tuple[Path, Path]:
    d = cfg.data
    return split_paths(d.corpus, split, d.src_lang, d.tgt_lang, d.data_dir, d.download)


def _vocabulary(cfg: Config, run: RunDir, lines: list[str], vocab_from) -> Vocab:
    """The joint SentencePiece model: copied from ``vocab_from``, or trained on ``lines``."""
    if vocab_from is not None:
        for suffix in (".model", ".vocab"):
            source = RunDir(vocab_from).spm_prefix.with_suffix(suffix)
            if source.is_file():
                atomic_write_bytes(run.spm_prefix.with_suffix(suffix), source.read_bytes())
        return Vocab(run.spm_model)
    with tempfile.TemporaryDirectory() as tmp:
        # SentencePiece reads files; drop blank lines it would otherwise count
        joint = Path(tmp) / "joint.txt"
        joint.write_text("".join(x + "\n" for x in lines if x.strip()), encoding="utf-8")
        return Vocab.train([joint], run.spm_prefix, cfg.data.vocab_size, cfg.data.spm_type,
                           cfg.data.character_coverage, seed=cfg.train.seed)


def _reuse(run: RunDir, report: dict, valid_paths: tuple[Path, Path]) -> Prepared:
    """An earlier preparation with the same data settings, read back."""
    return Prepared(Vocab(run.spm_model), ParallelData.load(run.data / "train.safetensors"),
                    ParallelData.load(run.data / "valid.safetensors"),
                    read_lines(valid_paths[0]), read_lines(valid_paths[1]), report)


def prepare(
    cfg: Config, run_dir: str | Path, force: bool = False, vocab_from: str | Path | None = None
) -> Prepared:
    """Train SentencePiece on the training split (both sides), encode train and valid, filter
    training pairs as configured, and write everything into the run directory. Reuses an
    earlier preparation when its data settings are the same. ``vocab_from``: a run whose
    SentencePiece model is copied instead of training one (fine-tuning: the weights' vocabulary,
    whatever the new corpus)."""
    run = RunDir(run_dir)
    run.mkdirs()
    report_path = run.data / "prepare.json"
    key = _data_key(cfg)
    if vocab_from is not None:
        base = RunDir(vocab_from)
        if not base.spm_model.is_file():
            raise FileNotFoundError(f"{base.spm_model}: the run to take the vocabulary from has "
                                    "no SentencePiece model")
        key["vocab_from"] = str(Path(vocab_from).resolve())
        key["vocab_size"] = None  # the base's, whatever the config says
    train_src, train_tgt = paths(cfg, cfg.data.train_split)
    valid_src_path, valid_tgt_path = paths(cfg, cfg.data.valid_split)
    if not force and report_path.is_file() and run.spm_model.is_file():
        report = json.loads(report_path.read_text())
        if report.get("key") == key:
            return _reuse(run, report, (valid_src_path, valid_tgt_path))
        log.warning("data settings changed since the last prepare: preparing again")
    src_lines, tgt_lines = read_parallel(train_src, train_tgt)
    for path, lines in ((train_src, src_lines), (train_tgt, tgt_lines)):
        if not any(line.strip() for line in lines):
            raise CorpusError(f"{path}: the training split has no non-blank line")
    vocab = _vocabulary(cfg, run, src_lines + tgt_lines, vocab_from)
    train, train_report = ParallelData.from_text(
        vocab, src_lines, tgt_lines, cfg.data.max_len, cfg.data.bad_pairs,
        names=(str(train_src), str(train_tgt)),
    )
    v_src, v_ref = read_parallel(valid_src_path, valid_tgt_path)
    if not any(line.strip() for line in v_src) or not any(line.strip() for line in v_ref):
        raise CorpusError(f"{valid_src_path}, {valid_tgt_path}: the validation split has no "
                          "non-blank pair (its BLEU would say nothing)")
    valid, _ = ParallelData.from_text(
        vocab, v_src, v_ref, cfg.data.max_len, "drop", filter_pairs=False,
        names=(str(valid_src_path), str(valid_tgt_path)),
    )
    train.save(run.data / "train.safetensors")
    valid.save(run.data / "valid.safetensors")
    report = {
        "key": key,
        "vocab_size": len(vocab),
        "train_files": [relative_path(train_src), relative_path(train_tgt)],
        "valid_files": [relative_path(valid_src_path), relative_path(valid_tgt_path)],
        "train": train_report.__dict__,
        "train_summary": train_report.summary(),
        "valid_pairs": len(valid),
    }
    atomic_write_text(report_path, json.dumps(report, indent=1))
    log.info("prepared %s: %s", run.path, train_report.summary())
    cfg.model.vocab_size = len(vocab)
    config_mod.save(cfg, run.config)
    return Prepared(vocab, train, valid, v_src, v_ref, report)
