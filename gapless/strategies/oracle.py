"""OR-NMT's sentence-level oracle (Zhang et al. 2019): a length-constrained beam per source,
the best smoothed sentence-BLEU candidate fed as the predicted input; and the search model
that every search inside a training step decodes with."""

from __future__ import annotations

import contextlib
import copy

import torch

from ..config import StrategyConfig
from ..data import PAD, Batch
from ..decode import Limits, ModelStepper, beam_search
from ..metrics import sentence_bleu
from ..packing import pack_linears
from .predicted import gumbel_noise
from .scheduled import ScheduledSampling


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


@contextlib.contextmanager
def searching(model):
    """``with searching(model) as searcher:`` a search inside a training step: the model in
    eval mode, ``search_model``'s model and context, no gradient; the mode restored after."""
    was_training = model.training
    model.eval()
    try:
        searcher, context = search_model(model)
        with torch.no_grad(), context:
            yield searcher
    finally:
        model.train(was_training)


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
        with searching(model) as searcher:
            stepper = ModelStepper(searcher, batch.src, repeat=K)
            # min_len = max_len = n: EOS forbidden before step n, only EOS at step n
            nbest = beam_search(stepper, Limits.of(B, lengths, lengths, device), K,
                                nbest=K, step_hook=hook)
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
