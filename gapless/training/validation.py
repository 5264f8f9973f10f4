"""Validation during training: teacher-forced loss and the BLEU of decoded outputs."""

from __future__ import annotations

import math

import torch

from ..config import Config
from ..data import collate, token_batches
from ..inference import Translator
from ..metrics import corpus_scores
from ..prepare import Prepared
from ..runtime import autocast
from ..strategies import Progress, TeacherForcing
from .criterion import Criterion

__all__ = ["validate"]


def validate(cfg: Config, model, prep: Prepared, device: torch.device,
             max_sentences: int | None = None) -> dict:
    """Validation loss (teacher forcing, whatever the training strategy) and BLEU of decoded
    outputs (``train.valid_beam``) on the first ``max_sentences`` of the valid split."""
    criterion = Criterion(model, TeacherForcing(cfg.strategy), cfg.train.label_smoothing)
    model.eval()
    data = prep.valid
    n = len(data) if not max_sentences else min(len(data), max_sentences)
    total, nll_sum, ntok = 0.0, 0.0, 0
    with torch.no_grad(), autocast(device, cfg.train.dtype):
        for idx in token_batches(data.src_lens[:n], data.tgt_lens[:n], cfg.train.max_tokens, 0,
                                 0):
            batch = collate(data, idx).to(device)
            _, _, logging = criterion(batch, Progress(0, 0))
            total += float(logging["loss"])
            nll_sum += float(logging["nll"])
            ntok += batch.n_tokens
    translator = Translator(model, prep.vocab, cfg.decode, device, cfg.train.dtype)
    hyps = translator.translate_ids([s.tolist() for s in data.src[:n]], beam=cfg.train.valid_beam)
    score = corpus_scores(prep.vocab.decode(hyps), prep.valid_ref[:n])
    model.train()
    return {
        "valid_loss": round(total / ntok, 4),
        "valid_nll": round(nll_sum / ntok, 4),
        "valid_ppl": round(math.exp(min(nll_sum / ntok, 50)), 2),
        "valid_bleu": score.bleu,
        "valid_chrf": score.chrf,
        "valid_sentences": n,
        "bleu_signature": score.bleu_signature,
    }
