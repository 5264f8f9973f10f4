"""Dropout (Srivastava et al. 2014) with masks drawn cheaply on the CPU.

``torch.nn.functional.dropout`` on the CPU draws one float per element with ``bernoulli_``,
serially on non-Intel CPUs (no MKL stream), a visible share of a small model's training step
(docs/benchmarks.md). This module draws 64 random bits per *four* elements and compares 16-bit
slices with a threshold, so an element is dropped with probability round(p * 2**16) / 2**16
(p = 0.1 -> 0.1000061). Same semantics as ``F.dropout``: kept elements are scaled by
1 / (1 - p), identity in eval mode, masks from the default generator (seeded, checkpointed
with the other RNG states). On other devices ``F.dropout`` (fused there).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Dropout", "dropout", "keep_mask"]

_SLICES = 4  # 16-bit slices per 64-bit random word


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device=None) -> torch.Tensor:
    """Boolean [*shape]: True = keep, each element dropped with probability
    round(p * 65536) / 65536, independently (disjoint 16-bit slices of uniform 64-bit words)."""
    n = math.prod(shape)
    words = torch.empty((n + _SLICES - 1) // _SLICES, dtype=torch.int64, device=device)
    words.random_(-(2**63), None)  # all 64 bits uniform (random_() alone leaves the sign at 0)
    bits = words.view(torch.int16)[:n].view(shape)  # uniform on [-32768, 32767]
    return bits >= -32768 + round(p * 65536)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """x with elements zeroed with probability p and the rest scaled by 1 / (1 - p)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    # {0, 1/(1-p)} in x's dtype; bool -> float has no vectorised CPU kernel, uint8 -> float
    # has (the same 0/1 bytes); A/B against F.dropout in benchmarks/cpu_tweaks.py
    mask = keep_mask(x.shape, p, x.device).view(torch.uint8).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * mask  # backward: grad * mask (autograd keeps mask)


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout`` using ``dropout`` above."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
