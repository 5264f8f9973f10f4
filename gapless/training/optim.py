"""Adam and the inverse-square-root learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainConfig

__all__ = ["build_optimizer", "inverse_sqrt", "set_lr"]


def build_optimizer(model: nn.Module, t: TrainConfig) -> torch.optim.Adam:
    """Adam (Kingma & Ba 2015) with ``t``'s lr, betas, eps and weight decay; fused (one kernel
    for all tensors) where every parameter lives on a device that has the fused kernel (CPU,
    CUDA). The same update to float rounding and the same state dict as the looping Adam, so
    checkpoints move between the two."""
    params = list(model.parameters())
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None  # None: the default
    return torch.optim.Adam(params, lr=t.lr, betas=tuple(t.betas), eps=t.adam_eps,
                            weight_decay=t.weight_decay, fused=fused)


def inverse_sqrt(update: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak``, then peak * sqrt(warmup / update) (Vaswani et al. 5.3)."""
    update = max(update, 1)
    if warmup <= 0:
        return peak
    return peak * min(update / warmup, math.sqrt(warmup / update))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
