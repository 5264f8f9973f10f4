"""Training strategies: each answers "what does the decoder see for this batch?".

A strategy returns the decoder input as token ids [B,T] or as *raw* token embeddings [B,T,D];
the model adds the embedding scale, the true positions and dropout. The training step is the
same for every strategy. Adding one = one class + one entry in ``STRATEGIES``.
"""

from __future__ import annotations

import torch

from .config import StrategyConfig
from .data import Batch


class Strategy:
    """Base: teacher forcing. Subclasses override ``decoder_inputs``."""

    def __init__(self, cfg: StrategyConfig):
        self.cfg = cfg

    def decoder_inputs(
        self, model, batch: Batch, memory: torch.Tensor, src_mask: torch.Tensor, progress: float
    ) -> torch.Tensor:
        """Ids [B,T] or raw embeddings [B,T,D] for the (second) decoder pass."""
        return batch.tgt_in

    def stats(self) -> dict:
        """Figures to log for the last interval (replaced fraction, p, ...)."""
        return {}


class TeacherForcing(Strategy):
    """The decoder sees the gold prefix ``tgt_in`` (methods.md 2)."""


STRATEGIES: dict[str, type[Strategy]] = {"teacher_forcing": TeacherForcing}


def build_strategy(cfg: StrategyConfig) -> Strategy:
    if cfg.name not in STRATEGIES:
        raise ValueError(f"unknown strategy {cfg.name!r} (known: {', '.join(STRATEGIES)})")
    return STRATEGIES[cfg.name](cfg)
