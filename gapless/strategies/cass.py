"""Confidence-aware scheduled sampling (Liu et al., Findings of ACL 2021): each target slot is
fed the gold token, the model's prediction or a noisy token, by the model's confidence in the
gold token (methods.md 5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import PAD
from .scheduled import ScheduledSampling, scatter_predicted


def sentence_tokens(tgt_in: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """For each slot of ``where`` [B,T] (row-major order), a token drawn uniformly from its own
    sentence's gold tokens y1 .. yn of ``tgt_in`` [B,T] -> ids [N]: the noisy input of the
    "w/ random" variant (the released code's default draws from the sentence, not the whole
    vocabulary: repeated words and a wrong word order)."""
    rows = where.nonzero()[:, 0]
    n = (tgt_in.ne(PAD).sum(1) - 1).clamp_min(1)[rows]  # tokens after BOS
    u = torch.rand(rows.shape, device=tgt_in.device)
    return tgt_in[rows, 1 + torch.minimum((u * n).long(), n - 1)]


class ConfidenceAware(ScheduledSampling):
    """Confidence-aware scheduled sampling (Liu et al. 2021), methods.md 5. A teacher-forced
    first pass (dropout as in training; no gradient unless first_pass_grad or mle_weight)
    gives each slot t >= 1, whose gold input is y_t, the confidence c_t = p(y_t | y_<t, x) at
    position t-1: the model's probability of the gold token where the prediction that slot t
    would be fed comes from. Per real slot (BOS and PAD slots stay gold):

    - c_t <= ``cass_low`` (the paper's t_golden): the gold token y_t (not learnt yet);
    - otherwise the prediction of position t-1 (``predicted``: argmax, soft, ...);
    - c_t > ``cass_high`` (t_rand), with ``cass_random`` (the "w/ random" variant): a token
      drawn from the sentence's own tokens instead (``sentence_tokens``): a confident
      prediction is the gold token, which would teach nothing.

    Gold takes precedence over random where cass_low > cass_high (as the released code's
    order of selections). Published: t_golden 0.9, t_rand 0.95, the soft prediction
    (``predicted: soft``) and the first pass's loss added (``mle_weight: 1``): the released
    fine-tuning command (Adaxry/conf_aware_ss4nmt). There is no schedule of p: progress,
    ``mix_unit`` and ``step_eps`` do not apply. cass_low >= 1 (and no mle_weight): every slot
    gold and the first pass skipped, teacher forcing exactly.

    Which confidence gates which slot: slot t by the confidence in y_t, its own gold input
    (methods.md 5: "the model's confidence in the gold token"), from the position whose
    prediction it would be fed. The released code gates slot t by position t's confidence (in
    y_{t+1}, the slot's own label), one position later; not followed here."""

    def decoder_inputs(self, model, batch, memory, src_mask, progress, cross=None):
        if self.cfg.cass_low >= 1.0 and self.cfg.mle_weight == 0:
            self._record(batch, 1.0, use_gold=None, differs=None)
            return batch.tgt_in
        return self.confident_inputs(model, batch, memory, src_mask, cross)

    def confidence(self, model, batch, memory, src_mask, cross=None):
        """(c [B,T]: c[:, t] = p(y_t | y_<t, x) from first-pass position t-1, 0 at slot 0;
        the first pass's logits [B,T,V]). Every position is projected: each slot's route
        depends on its confidence."""
        cfg, tgt_in = self.cfg, batch.tgt_in
        cache = None if cross is None else [dict(c) for c in cross]
        grad = torch.is_grad_enabled() and (cfg.first_pass_grad or cfg.mle_weight > 0)
        with torch.set_grad_enabled(grad):
            hidden1 = model.decode_hidden(tgt_in, memory, src_mask, batch.tgt_out.ne(PAD), cache)
        with torch.set_grad_enabled(grad and cfg.first_pass_grad):  # mle_weight: projected anew
            logits1 = model.project(hidden1)
        if cfg.mle_weight > 0 and hidden1.requires_grad:
            self._extra = [(cfg.mle_weight, hidden1)]
        with torch.no_grad():
            lsm = torch.log_softmax(logits1[:, :-1].float(), dim=-1)  # [B,T-1,V]
            conf = lsm.gather(-1, tgt_in[:, 1:, None]).squeeze(-1).exp()
        return F.pad(conf, (1, 0)), logits1

    def route(self, conf: torch.Tensor, real: torch.Tensor):
        """(gold, random) [B,T] by the thresholds, of the real slots ``real`` [B,T] (not BOS,
        not PAD; the others gold); the slots in neither are fed predictions."""
        gold = (conf <= self.cfg.cass_low) | ~real
        random = ~gold & (conf > self.cfg.cass_high) & self.cfg.cass_random
        return gold, random

    def confident_inputs(self, model, batch, memory, src_mask, cross=None) -> torch.Tensor:
        """The mixed input without the all-gold shortcut -> ids [B,T] or raw embeddings
        [B,T,D] (soft kinds)."""
        tgt_in = batch.tgt_in
        self._extra = []
        conf, logits1 = self.confidence(model, batch, memory, src_mask, cross)
        real = tgt_in.ne(PAD)
        real[:, 0] = False  # BOS slot
        gold, random = self.route(conf, real)
        fed = ~gold & ~random
        ids = tgt_in.masked_scatter(random, sentence_tokens(tgt_in, random))
        predicted, top = self.predicted_from(model, logits1[:, :-1][fed[:, 1:]])
        self._record(batch, gold.float(), gold, top.ne(tgt_in[fed]).sum(), fed.sum())
        for key, value in (("random", random.sum()), ("confidence", (conf * real).sum())):
            self._sums[key] = self._sums.get(key, 0) + value
        return scatter_predicted(model, ids, fed, predicted)

    def stats(self) -> dict:
        """ScheduledSampling's figures (p_gold: the fraction of slots fed gold; replaced: fed
        a prediction or a random token; pred_differs: of the predictions) plus random_fed (the
        fraction fed a random token) and gold_confidence (the mean confidence c_t)."""
        random, conf = self._sums.pop("random", None), self._sums.pop("confidence", None)
        slots = float(self._sums.get("slots", 0))
        out = super().stats()
        known = slots and random is not None
        return {**out, "random_fed": round(float(random) / slots, 4) if known else None,
                "gold_confidence": round(float(conf) / slots, 4) if known else None}
