"""``gapless prepare``: joint SentencePiece model + checked, encoded corpus in the run directory.

The training split is streamed: counted, sampled for SentencePiece (trained in a worker
process), then encoded chunk by chunk (``data.workers`` processes) into memory-mapped shards
(``data/train/``) and the split's length files; the validation split is small and goes the
same way in memory (``data/valid/``). Nothing in this process grows with the corpus but the
duplicate filter's hashes (``data.dedup``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import config as config_mod
from .checkpoint import RunDir, atomic_write_bytes, atomic_write_text
from .config import Config, DataConfig
from .corpora import split_paths
from .data import CorpusError, PairRules, ParallelData, Vocab, load_split, read_lines, read_parallel
from .data import split_path as prepared_split
from .data.encode import encode_split
from .data.text import check_aligned, scan
from .data.vocab import sample_indices, train_apart, write_sample
from .textio import relative_path

log = logging.getLogger(__name__)

# settings added after runs were prepared: in the data key only when they differ from the
# default, so such a run's key still matches
LATER_KEYS = ("spm_sample", "max_len_ratio", "dedup", "drop_identical")


@dataclass
class Prepared:
    vocab: Vocab
    train: ParallelData
    valid: ParallelData
    valid_src: list[str]  # raw text for BLEU during training
    valid_ref: list[str]
    report: dict


def _data_key(cfg: Config) -> dict:
    """The settings that change the prepared data (not ``workers``, not ``shard_pairs``)."""
    d, default = cfg.data, DataConfig()
    key = {k: getattr(d, k) for k in ("corpus", "src_lang", "tgt_lang", "train_split",
                                      "valid_split", "vocab_size", "spm_type",
                                      "character_coverage", "max_len", "bad_pairs")}
    key.update({k: getattr(d, k) for k in LATER_KEYS if getattr(d, k) != getattr(default, k)})
    return key


def paths(cfg: Config, split: str) -> tuple[Path, Path]:
    d = cfg.data
    return split_paths(d.corpus, split, d.src_lang, d.tgt_lang, d.data_dir, d.download)


def _check_train(files: tuple[Path, Path]) -> int:
    """The training split's pair count, after checking that the files align and hold text."""
    scanned = [scan(path) for path in files]
    check_aligned(files, [n for n, _ in scanned])
    for path, (_, has_text) in zip(files, scanned):
        if not has_text:
            raise CorpusError(f"{path}: the training split has no non-blank line")
    return scanned[0][0]


def _vocabulary(cfg: Config, run: RunDir, files: tuple[Path, Path], pairs: int,
                vocab_from) -> Vocab:
    """The joint SentencePiece model: copied from ``vocab_from``, or trained on the non-blank
    lines of both sides (source first) of every pair, or of ``data.spm_sample`` pairs drawn
    uniformly when there are more."""
    if vocab_from is not None:
        for suffix in (".model", ".vocab"):
            source = RunDir(vocab_from).spm_prefix.with_suffix(suffix)
            if source.is_file():
                atomic_write_bytes(run.spm_prefix.with_suffix(suffix), source.read_bytes())
        return Vocab(run.spm_model)
    d = cfg.data
    chosen = sample_indices(pairs, d.spm_sample, cfg.train.seed)
    if chosen is not None:
        log.info("SentencePiece trains on %d of %d pairs, drawn uniformly", len(chosen), pairs)
    with tempfile.TemporaryDirectory() as tmp:
        joint = Path(tmp) / "joint.txt"
        write_sample(files, chosen, joint)
        return train_apart([joint], run.spm_prefix, d.vocab_size, d.spm_type,
                           d.character_coverage, cfg.train.seed, d.spm_sample)


def _reuse(run: RunDir, report: dict, valid_paths: tuple[Path, Path]) -> Prepared:
    """An earlier preparation with the same data settings, read back."""
    return Prepared(Vocab(run.spm_model), load_split(run.data, "train"),
                    load_split(run.data, "valid"), read_lines(valid_paths[0]),
                    read_lines(valid_paths[1]), report)


def _valid(cfg: Config, vocab: Vocab, files: tuple[Path, Path]) -> tuple[ParallelData, list, list]:
    """The validation split, encoded unfiltered, and its raw text."""
    v_src, v_ref = read_parallel(*files)
    if not any(line.strip() for line in v_src) or not any(line.strip() for line in v_ref):
        raise CorpusError(f"{files[0]}, {files[1]}: the validation split has no "
                          "non-blank pair (its BLEU would say nothing)")
    valid, _ = ParallelData.from_text(vocab, v_src, v_ref, cfg.data.max_len, "drop",
                                      names=(str(files[0]), str(files[1])), filter_pairs=False)
    return valid, v_src, v_ref


def _encode_train(cfg: Config, vocab: Vocab, files: tuple[Path, Path], out: Path):
    """Stream the training split into shards under ``out``; the filter report."""
    d = cfg.data
    rules = PairRules(d.max_len, d.bad_pairs, (str(files[0]), str(files[1])),
                      max_len_ratio=d.max_len_ratio, drop_identical=d.drop_identical,
                      dedup=d.dedup)
    workers = (os.cpu_count() or 1) if d.workers is None else d.workers
    return encode_split(vocab, files, rules, out, d.shard_pairs, workers)


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
        key["vocab_from"] = relative_path(vocab_from)  # no folder of this machine in the report
        key["vocab_size"] = None  # the base's, whatever the config says
    train_files = paths(cfg, cfg.data.train_split)
    valid_files = paths(cfg, cfg.data.valid_split)
    if not force and report_path.is_file() and run.spm_model.is_file() and all(
            prepared_split(run.data, s) for s in ("train", "valid")):
        report = json.loads(report_path.read_text())
        if report.get("key") == key:
            return _reuse(run, report, valid_files)
        log.warning("data settings changed since the last prepare: preparing again")
    pairs = _check_train(train_files)
    vocab = _vocabulary(cfg, run, train_files, pairs, vocab_from)
    valid, v_src, v_ref = _valid(cfg, vocab, valid_files)
    train_report = _encode_train(cfg, vocab, train_files, run.data / "train")
    valid.save(run.data / "valid")
    for split in ("train", "valid"):  # the files of a run prepared before shards
        (run.data / f"{split}.safetensors").unlink(missing_ok=True)
    train = load_split(run.data, "train")
    report = {
        "key": key,
        "vocab_size": len(vocab),
        "train_files": [relative_path(train_files[0]), relative_path(train_files[1])],
        "valid_files": [relative_path(valid_files[0]), relative_path(valid_files[1])],
        "train": train_report.__dict__,
        "train_summary": train_report.summary(),
        "train_shards": len(train.shards),
        "valid_pairs": len(valid),
    }
    atomic_write_text(report_path, json.dumps(report, indent=1))
    log.info("prepared %s: %s", run.path, train_report.summary())
    cfg.model.vocab_size = len(vocab)
    config_mod.save(cfg, run.config)
    return Prepared(vocab, train, load_split(run.data, "valid"), v_src, v_ref, report)
