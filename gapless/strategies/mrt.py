"""Minimum risk training (Shen et al. 2016) as a strategy: the expected risk of candidates
sampled from the model, a sequence-level term mixed with the token-level loss (methods.md 5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from ..config import StrategyConfig
from ..data import BOS, EOS, PAD, Batch
from ..decode import Limits, ModelStepper, greedy_search, make_sampler
from ..metrics import sentence_bleu
from .base import ExtraLoss, Strategy
from .oracle import searching


def expected_risk(log_probs: torch.Tensor, bleu: torch.Tensor, alpha: float,
                  keep: torch.Tensor | None = None) -> torch.Tensor:
    """Per sentence, sum_c Q(c) (1 - BLEU(c)) over its candidates, Q the model's distribution
    renormalised over them and sharpened by alpha: Q(c) = p(c|x)^alpha / sum_c' p(c'|x)^alpha
    (Shen et al. 2016). log_probs [B,M] (with gradient), bleu [B,M] in [0, 1]; keep [B,M]:
    False leaves a candidate out (a duplicate: the subspace is a set). -> [B]"""
    scores = alpha * log_probs
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    return (scores.softmax(-1) * (1 - bleu)).sum(-1)


def first_occurrences(cand: torch.Tensor) -> torch.Tensor:
    """cand [B,M,L] ids -> [B,M]: True where no earlier candidate of the sentence is equal."""
    M = cand.shape[1]
    same = (cand[:, :, None] == cand[:, None]).all(-1)  # [B,M,M]
    earlier = torch.ones(M, M, dtype=torch.bool, device=cand.device).tril(-1)  # [i, j<i]
    return ~(same & earlier).any(-1)


def candidate_log_probs(model, cand: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
                        cross: list | None = None) -> torch.Tensor:
    """log p(c|x) [B,M] of candidates cand [B,M,L] (ids without EOS, PAD-padded; sentence b's
    source encoded in memory[b]), each followed by EOS: one teacher-forced decoder pass over
    all B*M candidates, with gradient, only real tokens projected to the vocabulary. ``cross``:
    the memory's cross-attention K/V (``model.cross_cache``), repeated rather than recomputed."""
    B, M, L = cand.shape
    ids = cand.reshape(B * M, L)
    tgt_in = F.pad(ids, (1, 0), value=BOS)  # [BM,L+1]
    tgt_out = F.pad(ids, (0, 1), value=PAD).scatter(1, ids.ne(PAD).sum(1, keepdim=True), EOS)
    mask = tgt_out.ne(PAD)
    cache = None if cross is None else [
        {key: kv.repeat_interleave(M, dim=0) for key, kv in layer.items()} for layer in cross]
    if src_mask is not None:  # None: a source without padding (``Transformer.encode``)
        src_mask = src_mask.repeat_interleave(M, dim=0)
    hidden = model.decode_hidden(tgt_in, memory.repeat_interleave(M, dim=0), src_mask, mask,
                                 cache)
    token_lp = -F.cross_entropy(model.project(hidden[mask]), tgt_out[mask], reduction="none")
    per_token = torch.zeros(mask.shape, dtype=token_lp.dtype, device=mask.device)
    return per_token.masked_scatter(mask, token_lp).sum(1).view(B, M)


class MinimumRisk(Strategy):
    """Minimum risk training (Shen et al. 2016), the objective Wang & Sennrich (2020) found to
    reduce hallucination under domain shift (methods.md 5). The decoder sees the gold prefix
    (the token-level loss, as teacher forcing); ``extra_loss`` adds, per sentence x with
    reference y:

    1. ``mrt_samples`` candidates by ancestral sampling from the model (eval mode, no
       gradient), each at most ``mrt_max_len_a`` * |x| + ``mrt_max_len_b`` tokens (|x| with
       EOS, as ``decode.max_len_a/b``; never past the model's positions); duplicates count
       once (Shen et al.'s subspace S(x) is a set); ``mrt_reference``: y joins them;
    2. log p(c|x) of every candidate in one teacher-forced decoder pass, with gradient and
       dropout as in training (``candidate_log_probs``);
    3. risk(x) = sum_c Q(c) (1 - BLEU+1(c, y)), Q(c) ~ p(c|x)^alpha, alpha = ``mrt_alpha``,
       BLEU+1 the smoothed sentence BLEU on ids (``gapless.metrics.sentence_bleu``).

    The step's loss interpolates the two, w = ``mrt_weight`` (Edunov et al. 2018's weighted
    combination): (1 - w) * token-level loss + w * risk, the risk a mean over the batch's
    sentences scaled by its target tokens, so that after the trainer's division by tokens the
    objective is (1 - w) * loss per token + w * mean risk per sentence (Nematus' MRT
    normalisation: the ML term per token, the risk per sentence). w = 0: teacher forcing exactly
    (nothing is sampled); w = 1: MRT alone, as Shen et al. trained. Wang & Sennrich's released
    scripts (chaojun-wang/Exposure-Bias-Hallucination-Domain-Shift, train_MRT.sh) fine-tune a
    converged model with 4 samples, alpha 0.005, no reference and no token-level term (w = 1):
    the defaults here; their label smoothing 0 and small constant lr (1e-5) are the train
    section's to set."""

    def __init__(self, cfg: StrategyConfig):
        super().__init__(cfg)
        self._sums: dict[str, torch.Tensor | float] = {}

    def extra_loss(self, model, batch, memory, src_mask, cross=None):
        w, N = self.cfg.mrt_weight, self.cfg.mrt_samples
        if w == 0:
            return None
        refs = batch.tgt_in[:, 1:]  # y1 .. yn, PAD-padded
        cand = self.candidates(model, batch)  # [B,N,L]
        if self.cfg.mrt_reference:
            width = max(cand.shape[2], refs.shape[1])
            cand = torch.cat([F.pad(cand, (0, width - cand.shape[2]), value=PAD),
                              F.pad(refs, (0, width - refs.shape[1]), value=PAD)[:, None]], 1)
        B, M, L = cand.shape
        bleu = sentence_bleu(cand.reshape(B * M, L), refs.repeat_interleave(M, dim=0))
        bleu, keep = bleu.view(B, M), first_occurrences(cand)
        log_p = candidate_log_probs(model, cand, memory, src_mask, cross)  # [B,M]
        risk = expected_risk(log_p, bleu, self.cfg.mrt_alpha, keep)  # [B]
        self._record(risk.detach(), bleu[:, :N], keep[:, :N])
        tokens = batch.tgt_out.ne(PAD).sum()
        return ExtraLoss(w * risk.mean() * tokens, 1.0 - w, {"mrt_risk": risk.detach().sum()})

    def candidates(self, model, batch: Batch) -> torch.Tensor:
        """``mrt_samples`` ancestral samples per source of ``batch``, in eval mode without
        gradient -> ids [B,N,L] (without EOS, PAD-padded)."""
        cfg, N = self.cfg, self.cfg.mrt_samples
        src = batch.src.repeat_interleave(N, dim=0)  # [B*N,S]
        cap = model.cfg.max_positions - 1  # BOS + the candidate fit the positions
        max_len = (cfg.mrt_max_len_a * src.ne(PAD).sum(1) + cfg.mrt_max_len_b).long()
        limits = Limits.of(len(src), max_len.clamp(1, cap), 1, src.device)
        with searching(model) as searcher:
            hyps = greedy_search(ModelStepper(searcher, src), limits, sampler=make_sampler())
        tokens = [torch.tensor(h.tokens, dtype=torch.long) for h in hyps]
        return pad_sequence(tokens, batch_first=True, padding_value=PAD).to(src.device).view(
            batch.src.shape[0], N, -1)

    def _record(self, risk: torch.Tensor, bleu: torch.Tensor, unique: torch.Tensor) -> None:
        """Accumulate as tensors (no device sync per step) until ``stats``: risks [B], the
        sampled candidates' BLEU [B,N] and whether each is a first occurrence [B,N]."""
        add = {"risk": risk.sum(), "sentences": risk.numel(), "bleu": bleu.sum(),
               "samples": bleu.numel(), "unique": unique.sum()}
        for key, value in add.items():
            self._sums[key] = self._sums.get(key, 0) + value

    def stats(self) -> dict:
        """Since the last call: mrt_risk (mean expected risk per sentence), mrt_bleu (mean
        sentence BLEU of the sampled candidates), mrt_unique (fraction of them that are
        distinct); None without data."""
        s = {k: float(v) for k, v in self._sums.items()}
        self._sums = {}
        n, m = s.get("sentences", 0.0), s.get("samples", 0.0)
        return {"mrt_risk": round(s["risk"] / n, 4) if n else None,
                "mrt_bleu": round(s["bleu"] / m, 4) if m else None,
                "mrt_unique": round(s["unique"] / m, 4) if m else None}
