"""Predicted inputs of the two-pass strategies: first-pass logits [N,V] of the replaced slots
(the projection's dtype, bf16 under autocast; PAD/BOS at -inf) -> ids [N] (a token) or raw
embeddings [N,D] (a mixture of rows of the target table E [V,D]), methods.md 3. Probabilities
are taken in float32."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..config import StrategyConfig
from ..decode import row_argmax


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
