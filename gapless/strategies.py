"""Training strategies: each answers "what does the decoder see for this batch?".

A strategy returns the decoder input as token ids [B,T] or as *raw* token embeddings [B,T,D];
the model adds the embedding scale, the true positions and dropout. The training step is the
same for every strategy. Adding one = one class + one entry in ``STRATEGIES``.

Shapes: B sentences, T target slots (``tgt_in`` = [BOS, y1 .. y_{T-1}]), D model dim, V vocab.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch

from .config import StrategyConfig, register_choices
from .data import BOS, PAD, Batch
from .decode import Limits, ModelStepper, beam_search, row_argmax
from .metrics import sentence_bleu
from .packing import pack_linears
from .schedules import Progress, gold_probability, step_probability

__all__ = [
    "PREDICTED", "STRATEGIES", "Progress", "ScheduledSampling", "SentenceOracle", "Strategy",
    "TeacherForcing", "WordOracle", "build_strategy", "categorical_sample", "fed_positions",
    "gumbel_noise", "mix", "topk_weights",
]


class Strategy:
    """Base: teacher forcing. Subclasses override ``decoder_inputs``."""

    def __init__(self, cfg: StrategyConfig):
        self.cfg = cfg

    def decoder_inputs(
        self, model, batch: Batch, memory: torch.Tensor, src_mask: torch.Tensor,
        progress: Progress, cross: list | None = None,
    ) -> torch.Tensor:
        """Ids [B,T] or raw embeddings [B,T,D] for the (second) decoder pass. ``cross``: the
        memory's cross-attention K/V (``model.cross_cache``), for a first pass to reuse."""
        return batch.tgt_in

    def extra_hidden(self) -> list[tuple[float, torch.Tensor]]:
        """[(weight, hidden [B,T,D])] of further decoder passes of the last ``decoder_inputs``
        call whose loss against ``tgt_out`` the training step adds, weighted (e.g. the first
        pass under ``mle_weight``). Handed over once: the list is emptied."""
        return []

    def stats(self) -> dict:
        """Figures to log for the last interval (replaced fraction, p, ...)."""
        return {}

    def state_dict(self) -> dict:
        """JSON-able state a checkpoint must keep for exact resume (e.g. cached oracles)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""


class TeacherForcing(Strategy):
    """The decoder sees the gold prefix ``tgt_in`` (methods.md 2)."""


# ----------------------------------------------------------------------------------------------
# predicted inputs: first-pass logits [N,V] of the replaced slots (the projection's dtype, bf16
# under autocast; PAD/BOS at -inf) -> ids [N] (a token) or raw embeddings [N,D] (a mixture of
# rows of the target table E [V,D]). Probabilities are taken in float32.


def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    """G = -log(-log U), U ~ Uniform clamped to (1e-6, 1 - 1e-6) so G is finite."""
    u = torch.rand_like(like, dtype=torch.float32).clamp_(1e-6, 1 - 1e-6)
    return -torch.log(-torch.log(u))


def topk_weights(logits: torch.Tensor, k: int, alpha: float = 1.0):
    """(weights [..., k], ids [..., k]): softmax(alpha * top-k logits). A proper distribution
    (the original code divided raw logits by their sum: negative weights)."""
    top, ids = logits.topk(min(k, logits.shape[-1]), dim=-1)
    return (alpha * top).softmax(-1), ids


def _argmax(logits, table, cfg):
    return row_argmax(logits)


def categorical_sample(logits: torch.Tensor, temperature: float = 1.0,
                       rows: int = 128) -> torch.Tensor:
    """ids [...] ~ softmax(logits [..., V] / temperature), one draw per row, by inverse CDF:
    one uniform u per row, the first id whose cumulative probability exceeds u * total
    (``right=True``: ids of probability 0, e.g. PAD/BOS at -inf, are never drawn). The same
    distribution as the Gumbel-max argmax(logits / tau + G) of OR-NMT (Zhang et al. 2019,
    eq. 10-11), without [N,V] uniforms and two logs per element. Probabilities in float32,
    ``rows`` rows at a time, so the [rows, V] block stays in cache and in the heap instead of
    a fresh [N, V] block per call. The caller's logits are never modified."""
    V = logits.shape[-1]
    flat = logits.reshape(-1, V)
    N = flat.shape[0]
    u = torch.rand(N, 1, device=flat.device)  # all rows' uniforms first: the same draws
    ids = torch.empty(N, dtype=torch.long, device=flat.device)
    for start in range(0, N, rows):
        block = flat[start:start + rows].to(torch.float32, copy=True)  # [r,V], ours to scale
        if temperature != 1.0:
            block.div_(temperature)
        cdf = block.softmax(-1).cumsum_(-1)  # [r,V]
        total = cdf[:, -1:]
        point = u[start:start + rows] * total
        point = torch.minimum(point, total.nextafter(torch.zeros_like(total)))  # < total
        ids[start:start + rows] = torch.searchsorted(cdf, point, right=True).squeeze(-1)
    return ids.view(logits.shape[:-1])


def _sample(logits, table, cfg):
    # a categorical sample at temperature tau: tau *before* the noise (OR-NMT's code divided
    # after, where it cannot change the argmax)
    return categorical_sample(logits, cfg.temperature)


def _soft(logits, table, cfg):
    # the expected embedding. The softmax stays in the logits' dtype (bf16 under autocast: the
    # kernel accumulates in fp32 and rounds each weight once, as the autocast cast of an fp32
    # softmax would before the bf16 matmul), so no [N,V] fp32 copy is made and cast back
    scaled = logits if cfg.alpha == 1.0 else cfg.alpha * logits.float()
    weights = scaled.softmax(-1)
    if not torch.is_autocast_enabled(weights.device.type):
        weights = weights.to(table.dtype)
    return weights @ table


def _topk_soft(logits, table, cfg):
    weights, ids = topk_weights(logits.float(), cfg.topk, cfg.alpha)  # [B,T,k]
    return torch.einsum("...k,...kd->...d", weights.to(table.dtype), table[ids])


def _gumbel_soft(logits, table, cfg):
    logits = logits.float()
    weights = ((logits + gumbel_noise(logits)) / cfg.temperature).softmax(-1)
    return weights.to(table.dtype) @ table


PREDICTED: dict[str, Callable[[torch.Tensor, torch.Tensor, StrategyConfig], torch.Tensor]] = {
    "argmax": _argmax,
    "sample": _sample,
    "soft": _soft,
    "topk_soft": _topk_soft,
    "gumbel_soft": _gumbel_soft,
}


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
        if not cfg.first_pass_grad:
            logits1 = logits1.detach()
        # the model's own output never holds PAD or BOS (decode.py forbids them); in place:
        # logits1 is the projection's fresh output (mm keeps its inputs, not its output)
        logits1.index_fill_(-1, torch.tensor([PAD, BOS], device=logits1.device), float("-inf"))
        predicted = PREDICTED[self.predicted](logits1, model.tgt_embed.weight, cfg)
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
        if predicted.dtype == torch.long:
            return tgt_in.masked_scatter(replace, predicted)  # ids [B,T]
        gold = model.embed_target(tgt_in)  # raw [B,T,D]
        return gold.masked_scatter(replace[..., None], predicted.to(gold.dtype))

    def extra_hidden(self):
        extra, self._extra = self._extra, []
        return extra

    # ------------------------------------------------------------------ logging
    def _record(self, batch, p, use_gold, differs) -> None:
        """Accumulate as tensors (no device sync per step) until ``stats``. differs: how many
        fed predictions differ from gold (a 0-dim tensor)."""
        replaceable = batch.tgt_in.ne(PAD)
        replaceable[:, 0] = False
        n = replaceable.sum()
        p_slots = torch.as_tensor(p, dtype=torch.float32, device=replaceable.device)
        add = {"slots": n, "p_sum": (replaceable * p_slots).sum()}
        if use_gold is not None:
            replaced = (replaceable & ~use_gold).sum()
            add["replaced"] = replaced
            add["predicted_slots"] = replaced
            add["differs"] = differs
        for key, value in add.items():
            self._sums[key] = self._sums.get(key, 0) + value

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


def search_model(model) -> tuple:
    """(model to decode with, context to decode in) for a search inside a training step.
    On CPU under bf16 autocast: a frozen bf16 copy of the (eval-mode) model with prepacked
    linears (``gapless/packing.py``), run without autocast, so the search neither re-casts
    activations at every op nor re-packs weights at every GEMM; otherwise the model itself
    in the current context. The copy costs one pass over the weights per search."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    if not (on_cpu and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16):
        return model, contextlib.nullcontext()
    twin = copy.deepcopy(model).requires_grad_(False).to(torch.bfloat16)
    pack_linears(twin)
    return twin, torch.autocast("cpu", enabled=False)


class SentenceOracle(ScheduledSampling):
    """OR-NMT's sentence-level oracle (Zhang et al. 2019), methods.md 4: per source, a
    length-constrained beam search (eval mode, no grad) gives candidates of exactly the
    reference's length; the one with the best smoothed sentence BLEU against the reference
    (ties and all-zero: the better beam rank) supplies the predicted input of every slot,
    mixed per token with the schedule's p. Labels stay gold. Best as fine-tuning."""

    default_schedule = "or_nmt"

    def __init__(self, cfg: StrategyConfig):
        super().__init__(cfg)
        self.predicted = "oracle"
        # oracle_refresh > 0: corpus row -> (update searched, oracle ids y'1..y'n)
        self._cache: dict[int, tuple[int, list[int]]] = {}
        self._update = 0

    def decoder_inputs(self, model, batch, memory, src_mask, progress, cross=None):
        self._update = progress.update
        return super().decoder_inputs(model, batch, memory, src_mask, progress, cross)

    def predict_at(self, model, batch, memory, src_mask, replace, cross=None):
        oracle = self.oracle(model, batch)[replace[:, 1:]]  # [N]
        return oracle, oracle

    def oracle(self, model, batch: Batch) -> torch.Tensor:
        """Oracle ids [B,T-1] (aligned with ``tgt_out`` minus EOS, PAD-padded). With
        ``oracle_refresh`` = N > 0 a sentence's oracle is reused until it is N updates old, so
        only the stale rows are searched (a row recurs once per epoch: N spans epochs)."""
        refresh = self.cfg.oracle_refresh
        B, T = batch.tgt_in.shape
        self._sums["oracle_sentences"] = self._sums.get("oracle_sentences", 0) + B
        if refresh <= 0:
            return self.search(model, batch)
        rows = batch.index.tolist()
        stale = [i for i, r in enumerate(rows)
                 if r not in self._cache or self._update - self._cache[r][0] >= refresh]
        if stale:
            sel = torch.tensor(stale, device=batch.src.device)
            sub = Batch(batch.src[sel], batch.tgt_in[sel], batch.tgt_out[sel], batch.index[sel])
            found = self.search(model, sub).cpu()
            lengths = sub.tgt_in.ne(PAD).sum(1) - 1
            for j, i in enumerate(stale):
                self._cache[rows[i]] = (self._update, found[j, : int(lengths[j])].tolist())
        out = torch.full((B, T - 1), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            tokens = self._cache[r][1]
            out[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return out.to(batch.tgt_in.device)

    def search(self, model, batch: Batch) -> torch.Tensor:
        """A length-constrained beam for every row of ``batch``; the best sentence-BLEU
        candidate per row -> ids [B,T-1]."""
        cfg, K = self.cfg, self.cfg.oracle_beam
        B, T = batch.tgt_in.shape
        device = batch.tgt_in.device
        lengths = batch.tgt_in.ne(PAD).sum(1) - 1  # reference tokens without EOS: n
        hook = None
        if cfg.oracle_noise:  # OR-NMT's optional Gumbel noise on the logits
            def hook(log_probs, t):
                noisy = (log_probs + gumbel_noise(log_probs)) / cfg.temperature
                return torch.log_softmax(noisy, dim=-1)
        was_training = model.training
        model.eval()
        try:
            searcher, context = search_model(model)
            with torch.no_grad(), context:
                stepper = ModelStepper(searcher, batch.src, repeat=K)
                # min_len = max_len = n: EOS forbidden before step n, only EOS at step n
                nbest = beam_search(stepper, Limits.of(B, lengths, lengths, device), K,
                                    nbest=K, step_hook=hook)
        finally:
            model.train(was_training)
        cand = torch.full((B, K, T - 1), PAD, dtype=torch.long)  # filled on the CPU, moved once
        found = torch.zeros(B, K, dtype=torch.bool)
        for b, hyps in enumerate(nbest):
            for k, h in enumerate(hyps):  # best beam score first
                cand[b, k, : len(h.tokens)] = torch.tensor(h.tokens, dtype=torch.long)
                found[b, k] = True
        cand, found = cand.to(device), found.to(device)
        refs = batch.tgt_in[:, 1:]  # y1 .. yn, PAD-padded
        bleu = sentence_bleu(cand.view(B * K, -1), refs.repeat_interleave(K, dim=0)).view(B, K)
        bleu = bleu.masked_fill(~found, -1.0)
        best = bleu.argmax(1)  # first maximum: ties and all-zero go to the better beam rank
        score = bleu.gather(1, best[:, None]).clamp_min(0)
        self._sums["oracle_bleu"] = self._sums.get("oracle_bleu", 0) + score.sum()
        self._sums["oracle_searched"] = self._sums.get("oracle_searched", 0) + B
        return cand[torch.arange(B, device=device), best]

    def state_dict(self) -> dict:
        return {"oracle_cache": {str(r): v for r, v in self._cache.items()}} if self._cache else {}

    def load_state_dict(self, state: dict) -> None:
        self._cache = {int(r): (int(u), list(t))
                       for r, (u, t) in state.get("oracle_cache", {}).items()}

    def stats(self) -> dict:
        """ScheduledSampling's figures plus oracle_bleu (mean sentence BLEU of the oracles
        searched) and oracle_searched (fraction of sentences searched, not taken from the
        cache)."""
        bleu = self._sums.pop("oracle_bleu", None)
        searched = float(self._sums.pop("oracle_searched", 0))
        n = float(self._sums.pop("oracle_sentences", 0))
        return {**super().stats(),
                "oracle_bleu": round(float(bleu) / searched, 4) if searched else None,
                "oracle_searched": round(searched / n, 4) if n else None}


STRATEGIES: dict[str, type[Strategy]] = {
    "teacher_forcing": TeacherForcing,
    "scheduled_sampling": ScheduledSampling,
    "word_oracle": WordOracle,
    "sentence_oracle": SentenceOracle,
}


register_choices("strategy.name", STRATEGIES)
register_choices("strategy.predicted", PREDICTED)


def build_strategy(cfg: StrategyConfig) -> Strategy:
    if cfg.name not in STRATEGIES:
        raise ValueError(f"unknown strategy {cfg.name!r} (known: {', '.join(STRATEGIES)})")
    return STRATEGIES[cfg.name](cfg)
