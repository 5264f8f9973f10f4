"""``export``: a run's checkpoint written as a CTranslate2 model directory (model.bin,
vocabulary, the run's ``spm.model`` and ``gapless_export.json`` saying where it came from)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import config as config_mod
from ..checkpoint import RunDir
from ..config import Config
from ..data import Vocab
from ..model import Transformer
from .convert import QUANTIZATIONS, ExportError, build_spec, require_ctranslate2, unsupported

INFO = "gapless_export.json"


def is_export_dir(path: str | Path) -> bool:
    """A directory written by ``export``: a CTranslate2 model with its gapless description."""
    path = Path(path)
    return (path / "model.bin").is_file() and (path / INFO).is_file()


def read_info(path: str | Path) -> dict:
    """The ``gapless_export.json`` of an exported directory."""
    return json.loads((Path(path) / INFO).read_text(encoding="utf-8"))


def _check_request(cfg: Config, run: RunDir, out: Path, quantization: str, force: bool) -> None:
    """All the reasons to refuse, in one ExportError, before anything is written."""
    problems = [f"cannot export: {p}" for p in unsupported(cfg)]
    if quantization not in QUANTIZATIONS:
        problems.append(f"--quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    if out.exists() and not out.is_dir():
        problems.append(f"{out} exists and is not a directory")
    elif out.is_dir() and any(out.iterdir()) and not force:
        problems.append(f"{out} is not empty (--force replaces it)")
    src, dst = run.path.resolve(), out.resolve()
    if dst == src or dst in src.parents:
        problems.append(f"{out} holds the run itself; export somewhere else")
    if not run.spm_model.is_file():
        problems.append(f"{run.spm_model}: no SentencePiece model (prepare the run first)")
    if problems:
        raise ExportError("export refused:\n  " + "\n  ".join(problems))


def _scores(run: RunDir, checkpoint: str) -> list[dict]:
    """BLEU / chrF of ``RUN/eval/*.json``, with the checkpoint each was scored on when the
    file records it (``same_checkpoint``: None when it does not)."""
    found = []
    for path in sorted(run.eval.glob("*.json")) if run.eval.is_dir() else []:
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(rec, dict) or "bleu" not in rec:
            continue
        scored_on = rec.get("checkpoint")
        found.append({"split": rec.get("split", path.stem), "bleu": rec["bleu"],
                      "chrf": rec.get("chrf"), "bleu_signature": rec.get("bleu_signature"),
                      "checkpoint": scored_on,
                      "same_checkpoint": None if scored_on is None else scored_on == checkpoint})
    return found


def export(run_dir: str | Path, out: str | Path, checkpoint: str = "best",
           quantization: str = "float32", force: bool = False) -> Path:
    """Write checkpoint ``checkpoint`` (best / last / a checkpoint directory) of a run as a
    CTranslate2 model in ``out`` with weights in ``quantization`` (CTranslate2's names).
    Refuses, writing nothing, a model CTranslate2 cannot compute exactly or a non-empty
    ``out`` without ``force``; the directory appears complete or not at all."""
    run, out = RunDir(run_dir), Path(out)
    cfg = run.load_config()
    _check_request(cfg, run, out, quantization, force)
    ct2 = require_ctranslate2()
    model = Transformer(cfg.model).eval()
    weights = run.load_weights(model, checkpoint)
    vocab = Vocab(run.spm_model)
    pieces = [vocab.sp.id_to_piece(i) for i in range(len(vocab))]
    if len(pieces) != cfg.model.vocab_size:
        raise ExportError(f"{run.spm_model}: {len(pieces)} pieces, the model has "
                          f"{cfg.model.vocab_size}")
    spec = build_spec(model, cfg, pieces)
    spec.validate()
    spec.optimize(quantization=quantization)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        spec.save(str(tmp))
        shutil.copyfile(run.spm_model, tmp / "spm.model")
        info = {"format": "ctranslate2", "ctranslate2_version": ct2.__version__,
                "quantization": quantization, "run": str(run.path), "name": cfg.name,
                "checkpoint": weights.name, "scores": _scores(run, weights.name),
                "config": config_mod.to_dict(cfg)}
        (tmp / INFO).write_text(json.dumps(info, indent=1), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
