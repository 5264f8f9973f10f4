"""Two-pass scheduled sampling (Mihaylova & Martins 2019; Bengio et al. 2015) and OR-NMT's word
oracle: a teacher-forced first pass predicts the slots that the second pass is fed."""

from __future__ import annotations

import torch

from ..config import StrategyConfig
from ..data import BOS, PAD
from ..decode import row_argmax
from ..schedules import Progress, gold_probability, resolve, step_probability
from .base import Strategy
from .predicted import PREDICTED


def fed_positions(replace: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first-pass positions whose prediction is fed: replace [B,T] (slot t takes the
    prediction of position t-1) -> (rows [B,R], valid [B,R]): each sentence's positions in
    ascending order, padded with position 0 (valid False); R = the most in one sentence.
    ``hidden[valid]`` of a [B,R,D] read at ``rows`` lists them as ``hidden[:, :-1][replace[:, 1:]]``."""
    sel = replace[:, 1:]  # [B,T-1]
    width = sel.shape[1]
    R = int(sel.sum(1).max()) if sel.numel() else 0
    pos = torch.arange(width, device=sel.device).expand_as(sel)
    rows = torch.where(sel, pos, width).sort(dim=1).values[:, :R]  # unselected sort last
    valid = rows < width
    return rows.masked_fill(~valid, 0), valid


def mix(use_gold: torch.Tensor, gold: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """Per slot gold or predicted: use_gold [B,T]; gold / predicted both ids [B,T] or both raw
    embeddings [B,T,D]. Mixing ids then embedding == embedding then mixing."""
    if gold.dim() == 3:
        use_gold = use_gold[..., None]
    return torch.where(use_gold, gold, predicted.to(gold.dtype))


def scatter_predicted(model, ids: torch.Tensor, replace: torch.Tensor,
                      predicted: torch.Tensor) -> torch.Tensor:
    """ids [B,T] with the slots ``replace`` [B,T] fed ``predicted``: ids [N] -> ids [B,T]; raw
    embeddings [N,D] -> raw embeddings [B,T,D] (the others embedded)."""
    if predicted.dtype == torch.long:
        return ids.masked_scatter(replace, predicted)
    gold = model.embed_target(ids)  # raw [B,T,D]
    return gold.masked_scatter(replace[..., None], predicted.to(gold.dtype))


class ScheduledSampling(Strategy):
    """Two-pass scheduled sampling (Mihaylova & Martins 2019; Bengio et al. 2015), methods.md 3.

    1. per slot gold with probability p (the schedule; a [T] vector with step_eps), BOS and PAD
       slots always gold, drawn first;
    2. first pass: teacher-forced decoder on ``tgt_in`` (no_grad unless first_pass_grad or
       mle_weight; dropout as in training; cross-attention K/V shared with the second pass);
       position t-1 predicts slot t, and only the positions feeding a replaced slot go
       through the last layer's cross-attention and feed-forward and the projection;
    3. predicted input per replaced slot (``cfg.predicted``, PREDICTED); raw embeddings mixed,
       so the model scales, adds the true position and drops out once. Token predictions are
       mixed as ids (identical, cheaper).
    With p = 1 everywhere (and no mle_weight) the first pass is skipped: teacher forcing exactly.
    """

    default_schedule = "inverse_sigmoid"

    def __init__(self, cfg: StrategyConfig):
        super().__init__(cfg)
        self.predicted = cfg.predicted
        self._extra: list[tuple[float, torch.Tensor]] = []
        self._sums: dict[str, torch.Tensor | float] = {}

    def gold_p(self, progress: Progress, length: int, device=None) -> float | torch.Tensor:
        """p of the gold token: a float, or [T] per slot with the decoding-step schedule."""
        f = gold_probability(self.cfg, progress, self.default_schedule)
        if self.cfg.step_eps <= 0:
            return f
        return step_probability(f, self.cfg.step_eps, length, self.cfg.p_min, device)

    def decoder_inputs(self, model, batch, memory, src_mask, progress, cross=None):
        p = self.gold_p(progress, batch.tgt_in.shape[1], batch.tgt_in.device)
        all_gold = p >= 1.0 if isinstance(p, float) else bool((p >= 1.0).all())
        if all_gold and self.cfg.mle_weight == 0:
            self._record(batch, p, use_gold=None, differs=None)
            return batch.tgt_in
        return self.mixed_inputs(model, batch, memory, src_mask, p, cross)

    def draw_gold_mask(self, tgt_in: torch.Tensor, p) -> torch.Tensor:
        """use_gold [B,T]: Bernoulli(p) per token (or one draw per sentence / per batch with
        ``mix_unit``, the latter OR-NMT's replication option); BOS and PAD slots always gold.
        Drawn *before* the first pass, so only replaced slots are projected to the vocab."""
        B, T = tgt_in.shape
        p_slots = torch.as_tensor(p, dtype=torch.float32, device=tgt_in.device)  # [] or [T]
        shape = {"token": (B, T), "sentence": (B, 1), "batch": (1, 1)}[self.cfg.mix_unit]
        u = torch.rand(shape, device=tgt_in.device).expand(B, T)
        replaceable = tgt_in.ne(PAD)
        replaceable[:, 0] = False  # BOS slot
        return (u < p_slots) | ~replaceable

    def predict_at(self, model, batch, memory, src_mask, replace: torch.Tensor, cross=None):
        """The first pass, read only where needed. replace [B,T] (slot 0 never set): the slots
        fed a prediction; slot t is predicted from first-pass position t-1.
        -> (predicted: ids [N] or raw embeddings [N,D]; its top token [N]), N = replace.sum()."""
        cfg, tgt_in = self.cfg, batch.tgt_in
        cache = None if cross is None else [dict(c) for c in cross]
        tgt_mask = batch.tgt_out.ne(PAD)
        with torch.set_grad_enabled(torch.is_grad_enabled() and (
                cfg.first_pass_grad or cfg.mle_weight > 0)):
            # only the N positions whose prediction is fed go through the last layer's
            # cross-attention and feed-forward and the projection (p = 0.5: about half);
            # the first-pass loss (mle_weight) needs every position
            if cfg.mle_weight == 0 and model.position_wise:
                rows, valid = fed_positions(replace)
                hidden1 = model.decode_hidden(tgt_in, memory, src_mask, tgt_mask, cache,
                                              rows=rows)  # [B,R,D]
                fed = hidden1[valid]  # [N,D]
            else:
                hidden1 = model.decode_hidden(tgt_in, memory, src_mask, tgt_mask, cache)
                fed = hidden1[:, :-1][replace[:, 1:]]
            # [N,V], kept in the projection's dtype: argmax needs no float32 copy (the bf16
            # values upcast are the same values), the probability kinds take their own
            logits1 = model.project(fed)
        if cfg.mle_weight > 0 and hidden1.requires_grad:
            self._extra = [(cfg.mle_weight, hidden1)]
        return self.predicted_from(model, logits1)

    def predicted_from(self, model, logits1: torch.Tensor):
        """First-pass logits [N,V] of the fed slots, a fresh tensor of this step's (modified in
        place) -> (predicted: ids [N] or raw embeddings [N,D] by ``self.predicted``; its top
        token [N]). Detached unless ``first_pass_grad``."""
        if not self.cfg.first_pass_grad:
            logits1 = logits1.detach()
        # the model's own output never holds PAD or BOS (decode.py forbids them); in place:
        # logits1 is the projection's fresh output (mm keeps its inputs, not its output)
        logits1.index_fill_(-1, torch.tensor([PAD, BOS], device=logits1.device), float("-inf"))
        predicted = PREDICTED[self.predicted](logits1, model.tgt_embed.weight, self.cfg)
        top = predicted if predicted.dtype == torch.long else row_argmax(logits1)  # [N]
        return predicted, top

    def mixed_inputs(self, model, batch, memory, src_mask, p, cross=None) -> torch.Tensor:
        """Predictions mixed with gold for a given p (float or [T]), without the p = 1 shortcut.
        -> ids [B,T] (argmax, sample, oracle) or raw embeddings [B,T,D] (soft kinds)."""
        tgt_in = batch.tgt_in
        self._extra = []
        use_gold = self.draw_gold_mask(tgt_in, p)
        replace = ~use_gold
        predicted, top = self.predict_at(model, batch, memory, src_mask, replace, cross)
        self._record(batch, p, use_gold, top.ne(tgt_in[replace]).sum())
        return scatter_predicted(model, tgt_in, replace, predicted)

    def extra_hidden(self):
        extra, self._extra = self._extra, []
        return extra

    # ------------------------------------------------------------------ logging
    def _record(self, batch, p, use_gold, differs, fed=None) -> None:
        """Accumulate as tensors (no device sync per step) until ``stats``. differs: how many
        fed predictions differ from gold (a 0-dim tensor); fed: how many slots were fed a
        prediction (default: every slot not gold)."""
        replaceable = batch.tgt_in.ne(PAD)
        replaceable[:, 0] = False
        n = replaceable.sum()
        p_slots = torch.as_tensor(p, dtype=torch.float32, device=replaceable.device)
        add = {"slots": n, "p_sum": (replaceable * p_slots).sum()}
        if use_gold is not None:
            replaced = (replaceable & ~use_gold).sum()
            add["replaced"] = replaced
            add["predicted_slots"] = replaced if fed is None else fed
            add["differs"] = differs
        for key, value in add.items():
            self._sums[key] = self._sums.get(key, 0) + value

    def signature(self) -> dict:
        """The base's, with the input kind and the schedule as used (``auto`` resolved)."""
        schedule, unit = resolve(self.cfg, self.default_schedule)
        return {**super().signature(), "predicted": self.predicted, "schedule": schedule,
                "schedule_unit": unit}

    def stats(self) -> dict:
        """Since the last call: p_gold (mean p over non-pad, non-BOS slots), replaced (fraction
        of those slots fed a prediction), pred_differs (fraction of the fed predictions that
        differ from gold; when ~0, scheduled sampling is silently teacher forcing). None: no
        data (e.g. every batch at p = 1 skipped the first pass, or nothing was replaced)."""
        s = {k: float(v) for k, v in self._sums.items()}
        self._sums = {}
        slots, predicted = s.get("slots", 0.0), s.get("predicted_slots", 0.0)
        return {
            "p_gold": round(s["p_sum"] / slots, 4) if slots else None,
            "replaced": round(s.get("replaced", 0.0) / slots, 4) if slots else None,
            "pred_differs": round(s["differs"] / predicted, 4) if predicted else None,
        }


class WordOracle(ScheduledSampling):
    """OR-NMT's word-level oracle (Zhang et al. 2019): the ``sample`` input (Gumbel-max at
    temperature tau), mixed per token with p = mu / (mu + exp(e / mu)) by default, e = epoch.
    Only the decoder inputs change; the labels stay gold."""

    default_schedule = "or_nmt"

    def __init__(self, cfg: StrategyConfig):
        super().__init__(cfg)
        self.predicted = "sample"

    def signature(self) -> dict:
        """Scheduled sampling's: only the defaults differ (the sample input, OR-NMT's decay), so
        on the same schedule and temperature the two are one computation."""
        return {**super().signature(), "class": ScheduledSampling.__name__}
