"""The strategy protocol: what the decoder sees, what the training step adds to the loss, what
is logged and what a checkpoint keeps; teacher forcing is the protocol's defaults."""

from __future__ import annotations

from dataclasses import asdict
from typing import NamedTuple

import torch

from ..config import StrategyConfig
from ..data import Batch
from ..schedules import Progress


class ExtraLoss(NamedTuple):
    """A loss term a strategy adds to the training step: the step's loss becomes
    ``token_weight * token-level loss + term``. ``term`` is on the token-level loss's scale (a
    sum over the batch that the trainer divides by its target tokens); ``figures``: detached
    tensors for the criterion's logging output."""

    term: torch.Tensor
    token_weight: float = 1.0
    figures: dict | None = None


class Strategy:
    """Base: teacher forcing. Subclasses override ``decoder_inputs`` (and ``extra_loss`` for a
    sequence-level term)."""

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

    def extra_loss(
        self, model, batch: Batch, memory: torch.Tensor, src_mask: torch.Tensor,
        cross: list | None = None,
    ) -> ExtraLoss | None:
        """A further loss term for this batch, with gradient (e.g. minimum risk training's
        expected risk), asked for right after ``decoder_inputs``; None (the default): the
        token-level loss alone, unchanged."""
        return None

    def stats(self) -> dict:
        """Figures to log for the last interval (replaced fraction, p, ...)."""
        return {}

    def signature(self) -> dict:
        """What fixes this strategy's computation: two strategies whose signatures are equal
        train identically from the same seed (a comparison of the two compares a method with
        itself). The class and every setting but the registry name, which only picks them."""
        return {**asdict(self.cfg), "name": None, "class": type(self).__name__}

    def state_dict(self) -> dict:
        """JSON-able state a checkpoint must keep for exact resume (e.g. cached oracles)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""


class TeacherForcing(Strategy):
    """The decoder sees the gold prefix ``tgt_in`` (methods.md 2)."""
