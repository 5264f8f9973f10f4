"""What the exposure-bias measurements ask of a model: the ``Probe`` protocol and
``ModelProbe``, the probe of a trained Transformer (with ``ForcedPrefix`` decoding)."""

from __future__ import annotations

import math
from typing import Protocol

import torch

from ..data import BOS, EOS, pad_sequences
from ..decode import ModelStepper, Stepper, greedy_search
from ..inference import Translator, search_batches


class Probe(Protocol):
    """A model as the measurements see it. Ids exclude BOS/EOS unless said otherwise."""

    def log_probs(self, src: list[list[int]], tgt: list[list[int]]) -> torch.Tensor:
        """Teacher forcing: float log-probs [B, T+1, V], T = longest ``tgt``; [b, t] is the
        distribution of the token after ``tgt[b][:t]`` (rows past ``len(tgt[b])`` are padding)."""

    def greedy(self, src: list[list[int]], prefixes: list[list[int]]) -> list[list[int]]:
        """Greedy decoding forced through ``prefixes[b]`` first -> prefix + continuation."""

    def search(self, src: list[list[int]], beam: int) -> list[list[int]]:
        """The best beam-search hypothesis of each source."""

    def detokenize(self, ids: list[list[int]]) -> list[str]:
        """Token ids -> text, as compared with the raw references."""


class ForcedPrefix:
    """A stepper whose rows first follow a forced prefix (log-prob 0 for the prefix token, -inf
    for all others), then decode freely; works under greedy and beam search pruning."""

    def __init__(self, inner: Stepper, prefixes: list[list[int]], device="cpu"):
        self.inner = inner
        self.forced = pad_sequences(prefixes).to(device) if prefixes else None  # [N,P]
        self.lengths = torch.tensor([len(p) for p in prefixes], device=device)  # [N]
        self.t = 0

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        lp = self.inner.step(tokens)  # [N,V]
        if self.forced is not None and self.t < self.forced.shape[1]:
            rows = (self.lengths > self.t).nonzero().view(-1)
            if rows.numel():
                forced = torch.full_like(lp[rows], -math.inf)
                forced.scatter_(1, self.forced[rows, self.t, None], 0.0)
                lp[rows] = forced
        self.t += 1
        return lp

    def reorder(self, index: torch.Tensor, rows_changed_sentence: bool) -> None:
        self.inner.reorder(index, rows_changed_sentence)
        if self.forced is not None:
            self.forced = self.forced.index_select(0, index)
            self.lengths = self.lengths.index_select(0, index)


class ModelProbe:
    """The probe of a trained model: teacher forcing on its forward, searches through its
    ``Translator`` (batching and length limits as in translation)."""

    def __init__(self, translator: Translator, batch_size: int | None = None):
        self.translator = translator
        self.model, self.device = translator.model, translator.device
        self.batch_size = batch_size or translator.decode_cfg.batch_size

    @torch.no_grad()
    def log_probs(self, src: list[list[int]], tgt: list[list[int]]) -> torch.Tensor:
        src_t = pad_sequences(src, suffix=EOS).to(self.device)  # [B,S]
        tgt_in = pad_sequences(tgt, prefix=BOS).to(self.device)  # [B,T+1]
        self.model.eval()
        logits = self.model(src_t, tgt_in)  # [B,T+1,V]
        return torch.log_softmax(logits.float(), dim=-1).cpu()

    @torch.no_grad()
    def greedy(self, src: list[list[int]], prefixes: list[list[int]]) -> list[list[int]]:
        settings = self.translator.settings(batch_size=self.batch_size)
        out: list[list[int]] = [[] for _ in src]
        self.model.eval()
        # the translator's length limits, raised to fit the forced prefix
        batches = search_batches(src, settings, self.model.cfg.max_positions, self.device,
                                 at_least=[len(p) + 1 for p in prefixes])
        for batch in batches:
            stepper = ForcedPrefix(ModelStepper(self.model, batch.src),
                                   [prefixes[i] for i in batch.index], self.device)
            for i, h in zip(batch.index, greedy_search(stepper, batch.limits)):
                out[int(i)] = h.tokens
        return out

    def search(self, src: list[list[int]], beam: int) -> list[list[int]]:
        # at most about 1024 rows (sentences x beam) per batch: bounds the cache of wide beams
        batch = max(1, min(self.batch_size, 1024 // beam))
        return self.translator.translate_ids(src, beam=beam, batch_size=batch)

    def detokenize(self, ids: list[list[int]]) -> list[str]:
        return self.translator.vocab.decode(ids)
