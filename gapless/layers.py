"""The Transformer's building blocks, one object per design choice (methods.md 1): norms,
residual placement, score scaling, Q/K/V projections, attention, feed-forward, the layers.

Shapes: B batch, S source length, T target length, D model dim, H heads, Dh head dim.
Masks are boolean and mean "may attend" / "is a real token" (True), never the opposite.
Each registry (``NORMS``, ``RESIDUALS``, ``SCORES``, ``PROJECTIONS``, ``ACTIVATIONS``) is the
list of values its config setting accepts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, register_choices
from .dropout import Dropout
from .dropout import dropout as _dropout

# per decoder layer: {"self_k", "self_v": [N,H,t,Dh], "order": [N'] rows of self_k/v that the
# next step continues (a pending beam reorder, applied with the next append), "cross_k",
# "cross_v": [B,H,S,Dh]}
Cache = dict


def extend_cache(past: torch.Tensor | None, new: torch.Tensor, order: torch.Tensor | None):
    """``cat([past[order], new], dim=2)`` written with one copy of the cached steps: past
    [N,H,t,Dh] (None: nothing cached), order [N'] rows of past or None (all), new [N',H,T,Dh]
    -> [N',H,t+T,Dh]. A beam step both reorders and appends, so a reorder-then-cat would copy
    the cache twice per step."""
    if past is None:
        return new
    if torch.is_grad_enabled() and (new.requires_grad or past.requires_grad):  # out= has no grad
        return torch.cat([past if order is None else past.index_select(0, order), new], dim=2)
    n, h, t, dh = new.shape[0], past.shape[1], past.shape[2], past.shape[3]
    out = new.new_empty(n, h, t + new.shape[2], dh)
    if order is None:
        out[:, :, :t].copy_(past)
    else:
        torch.index_select(past, 0, order, out=out[:, :, :t])
    out[:, :, t:].copy_(new)
    return out


# ----------------------------------------------------------------------------------------------
# normalisation: one object per choice, all called as norm(x, mask)


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class RMSNorm(nn.RMSNorm):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class MaskedBatchNorm(nn.Module):
    """BatchNorm over the real (non-pad) tokens of a batch: statistics per feature across all
    B*T real positions (the LN-vs-BN study of methods.md 7.2). Eval uses running statistics."""

    def __init__(self, dim: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape  # [B,T,D]
        if mask is None:
            return self.bn(x.reshape(-1, shape[-1])).reshape(shape)
        out = torch.zeros_like(x)
        out[mask] = self.bn(x[mask]).to(x.dtype)  # only real tokens feed the statistics
        return out


NORMS = {"layer": LayerNorm, "rms": RMSNorm, "batch": MaskedBatchNorm}


# ----------------------------------------------------------------------------------------------
# residual placement: post-norm (paper: LayerNorm(x + Sublayer(x))) or pre-norm


class PostNorm(nn.Module):
    def __init__(self, norm: nn.Module, dropout: float):
        super().__init__()
        self.norm, self.dropout = norm, Dropout(dropout)

    def forward(self, x, sublayer, mask=None):
        return self.norm(x + self.dropout(sublayer(x)), mask)  # Vaswani et al. 2017, sec. 5.4


class PreNorm(nn.Module):
    def __init__(self, norm: nn.Module, dropout: float):
        super().__init__()
        self.norm, self.dropout = norm, Dropout(dropout)

    def forward(self, x, sublayer, mask=None):
        return x + self.dropout(sublayer(self.norm(x, mask)))


RESIDUALS = {"post": PostNorm, "pre": PreNorm}


# ----------------------------------------------------------------------------------------------
# attention scores: scale by 1/sqrt(d_k), not at all, or LayerNorm on q and k


class SqrtScale(nn.Module):
    """q.k / sqrt(d_k): keeps score variance 1 for unit-variance q, k (Vaswani et al., eq. 1)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.scale = head_dim**-0.5

    def forward(self, q, k):
        return q, k, self.scale


class NoScale(nn.Module):
    """Unscaled q.k: variance d_k, softmax saturates (the ablation)."""

    def __init__(self, head_dim: int):
        super().__init__()

    def forward(self, q, k):
        return q, k, 1.0


class QKNorm(nn.Module):
    """LayerNorm on q and k per head instead of the 1/sqrt(d_k) factor. Gains start at
    d_k**-0.25 so initial scores have unit variance; they are learned from there."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.q_norm = nn.LayerNorm(head_dim)
        self.k_norm = nn.LayerNorm(head_dim)
        for ln in (self.q_norm, self.k_norm):
            nn.init.constant_(ln.weight, head_dim**-0.25)

    def forward(self, q, k):
        return self.q_norm(q), self.k_norm(k), 1.0


SCORES = {"sqrt": SqrtScale, "none": NoScale, "qk_norm": QKNorm}


# ----------------------------------------------------------------------------------------------
# Q/K/V projections: separate (one fused matmul over three separate weight blocks), W_q = W_k,
# or none at all (q = k = v = x)


def _init_blocks(weight: torch.Tensor, n_blocks: int) -> None:
    """Xavier-uniform init of each [out, in] block separately, as separate Linears would be."""
    for block in weight.chunk(n_blocks, dim=0):
        nn.init.xavier_uniform_(block)


class SeparateQKV(nn.Module):
    """Separate W_q, W_k, W_v. Self-attention stores them as blocks of one matrix (one matmul);
    cross-attention has W_q for the decoder side and [W_k; W_v] for the memory."""

    def __init__(self, d_model: int, inner: int, cross: bool):
        super().__init__()
        self.inner = inner
        if cross:
            self.q_proj = nn.Linear(d_model, inner)
            self.kv_proj = nn.Linear(d_model, 2 * inner)  # rows: [W_k; W_v]
            nn.init.xavier_uniform_(self.q_proj.weight)
            _init_blocks(self.kv_proj.weight, 2)
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * inner)  # rows: [W_q; W_k; W_v]
            _init_blocks(self.qkv_proj.weight, 3)

    def self_qkv(self, x):  # [B,T,D] -> 3 x [B,T,inner]
        return self.qkv_proj(x).split(self.inner, dim=-1)

    def cross_q(self, x):
        return self.q_proj(x)

    def cross_kv(self, memory):
        return self.kv_proj(memory).split(self.inner, dim=-1)


class SharedQK(nn.Module):
    """W_q = W_k: the score matrix q_i.k_j is symmetric (methods.md 7.5)."""

    def __init__(self, d_model: int, inner: int, cross: bool):
        super().__init__()
        self.inner = inner
        self.qk_proj = nn.Linear(d_model, inner)
        self.v_proj = nn.Linear(d_model, inner)
        nn.init.xavier_uniform_(self.qk_proj.weight)
        nn.init.xavier_uniform_(self.v_proj.weight)

    def self_qkv(self, x):
        qk = self.qk_proj(x)
        return qk, qk, self.v_proj(x)

    def cross_q(self, x):
        return self.qk_proj(x)

    def cross_kv(self, memory):
        return self.qk_proj(memory), self.v_proj(memory)


class NoProjection(nn.Module):
    """q = k = v = x: a token's score with itself dominates (methods.md 7.7)."""

    def __init__(self, d_model: int, inner: int, cross: bool):
        super().__init__()

    def self_qkv(self, x):
        return x, x, x

    def cross_q(self, x):
        return x

    def cross_kv(self, memory):
        return memory, memory


PROJECTIONS = {"separate": SeparateQKV, "shared_qk": SharedQK, "none": NoProjection}


def attend(q, k, v, key_mask, causal: bool, scale: float, dropout: float) -> torch.Tensor:
    """softmax(scale * q k^T + mask) v, Vaswani et al. eq. 1. q [B,H,T,Dh], k/v [B,H,S,Dh],
    key_mask [B,1,1,S] (may attend) or None (no padding). On GPU the fused SDPA kernels
    (``attend_fused``); on CPU plain matmuls (``attend_matmul``), faster there than the CPU
    flash kernel for sentence-length sequences (docs/benchmarks.md)."""
    if q.is_cuda:
        return attend_fused(q, k, v, key_mask, causal, scale, dropout)
    return attend_matmul(q, k, v, key_mask, causal, scale, dropout)


def attend_fused(q, k, v, key_mask, causal: bool, scale: float, dropout: float) -> torch.Tensor:
    """``attend`` with ``F.scaled_dot_product_attention``. The flash kernel takes no mask: a
    causal square block (training's decoder self-attention) goes as ``is_causal`` and no mask,
    so does a source without padding (key_mask None); a padded source's key mask goes to the
    kernels that take one (memory-efficient, cuDNN). SDPA's ``is_causal`` aligns top-left, so
    a causal chunk after cached steps (t < s) gets the bottom-right triangle as a mask."""
    t, s = q.shape[-2], k.shape[-2]
    if causal and t != s:
        allowed = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
        key_mask = allowed if key_mask is None else key_mask & allowed
        causal = False
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=key_mask, dropout_p=dropout, is_causal=causal, scale=scale
    )


def attend_matmul(q, k, v, key_mask, causal: bool, scale: float, dropout: float) -> torch.Tensor:
    """``attend`` as explicit matmuls, masked_fill and softmax (dropout: gapless's CPU masks)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B,H,T,S]
    if causal:
        t, s = scores.shape[-2:]
        allowed = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
        scores = scores.masked_fill(~allowed, float("-inf"))
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    if dropout > 0:
        probs = _dropout(probs, dropout)
    return torch.matmul(probs, v)


class Attention(nn.Module):
    """Multi-head attention (self or cross) with the configured projections and score."""

    def __init__(self, cfg: ModelConfig, cross: bool):
        super().__init__()
        self.h = cfg.n_heads
        self.dh = cfg.head_dim or cfg.d_model // cfg.n_heads
        inner = self.h * self.dh
        self.cross = cross
        self.proj = PROJECTIONS[cfg.projections](cfg.d_model, inner, cross)
        self.score = SCORES[cfg.score](self.dh)
        self.out = nn.Linear(inner, cfg.d_model)
        nn.init.xavier_uniform_(self.out.weight)
        self.attn_dropout = cfg.attn_dropout

    def _heads(self, x):  # [B,L,H*Dh] -> [B,H,L,Dh]
        return x.unflatten(-1, (self.h, self.dh)).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,  # [B,T,D]
        memory: torch.Tensor | None = None,  # [B,S,D] (cross attention)
        key_mask: torch.Tensor | None = None,  # [B,1,1,S] may attend
        causal: bool = False,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        if self.cross:
            q = self._heads(self.proj.cross_q(x))
            if cache is not None and "cross_k" in cache:
                k, v = cache["cross_k"], cache["cross_v"]
            else:
                k, v = self.memory_kv(memory)
                if cache is not None:  # contiguous once, so no step copies them for matmul
                    k, v = k.contiguous(), v.contiguous()
                    cache["cross_k"], cache["cross_v"] = k, v
        else:
            q, k, v = (self._heads(t) for t in self.proj.self_qkv(x))
            if cache is not None:  # append this step's keys/values to the (reordered) cache
                order = cache.pop("order", None)
                k = extend_cache(cache.get("self_k"), k, order)
                v = extend_cache(cache.get("self_v"), v, order)
                cache["self_k"], cache["self_v"] = k, v
                causal = causal and q.shape[2] > 1  # a chunk after cached steps is causal too
        q, k, scale = self.score(q, k)
        p = self.attn_dropout if self.training else 0.0
        G = q.shape[0] // k.shape[0]
        if G > 1:  # beam search: G rows (one step each) share one sentence's memory
            y = self._grouped(q, k, v, key_mask, scale, p, G)
        else:
            y = attend(q, k, v, key_mask, causal, scale, p)  # [B,H,T,Dh]
        return self.out(y.transpose(1, 2).flatten(2))  # [B,T,D]

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of memory [B,S,D] -> 2 x [B,H,S,Dh]."""
        k, v = self.proj.cross_kv(memory)
        return self._heads(k), self._heads(v)

    @staticmethod
    def _grouped(q, k, v, key_mask, scale, p, G):
        """Cross-attention of G single-step queries per memory row: the G beams become the
        query axis, so memory and its K/V are never copied G times and the score product is
        a [G,Dh] x [Dh,S] matrix product per head. q [B*G,H,1,Dh], k/v [B,H,S,Dh]."""
        BG, H, T, Dh = q.shape
        if T != 1:
            raise ValueError(f"grouped cross-attention takes one step per row, got {T}")
        q = q.view(BG // G, G, H, Dh).transpose(1, 2)  # [B,H,G,Dh]
        y = attend(q, k, v, key_mask, False, scale, p)  # [B,H,G,Dh]
        return y.transpose(1, 2).reshape(BG, H, 1, Dh)


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.d_model)
        self.act = ACTIVATIONS[cfg.activation]
        self.dropout = Dropout(cfg.act_dropout)
        nn.init.xavier_uniform_(self.fc1.weight)
        nn.init.xavier_uniform_(self.fc2.weight)

    def forward(self, x):
        return self.fc2(self.dropout(self.act(self.fc1(x))))


def norm_layer(cfg: ModelConfig) -> nn.Module:
    return NORMS[cfg.norm](cfg.d_model)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        residual = RESIDUALS[cfg.norm_position]
        self.attn = Attention(cfg, cross=False)
        self.ffn = FeedForward(cfg)
        self.res1 = residual(norm_layer(cfg), cfg.dropout)
        self.res2 = residual(norm_layer(cfg), cfg.dropout)

    def forward(self, x, key_mask, mask):
        x = self.res1(x, lambda h: self.attn(h, key_mask=key_mask), mask)
        return self.res2(x, self.ffn, mask)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        residual = RESIDUALS[cfg.norm_position]
        self.self_attn = Attention(cfg, cross=False)
        self.cross_attn = Attention(cfg, cross=True)
        self.ffn = FeedForward(cfg)
        self.res1 = residual(norm_layer(cfg), cfg.dropout)
        self.res2 = residual(norm_layer(cfg), cfg.dropout)
        self.res3 = residual(norm_layer(cfg), cfg.dropout)

    def forward(self, x, memory, src_key_mask, mask, cache, rows=None):
        """x [B,T,D] -> [B,T,D]; with rows [B,R] (positions) only those positions continue
        after the self-attention, which still gives every position its keys: -> [B,R,D]."""
        x = self.res1(x, lambda h: self.self_attn(h, causal=True, cache=cache), mask)
        if rows is not None:
            x = x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))
            mask = None if mask is None else mask.gather(1, rows)
        x = self.res2(
            x, lambda h: self.cross_attn(h, memory, key_mask=src_key_mask, cache=cache), mask
        )
        return self.res3(x, self.ffn, mask)


register_choices("model.norm", NORMS)
register_choices("model.norm_position", RESIDUALS)
register_choices("model.score", SCORES)
register_choices("model.projections", PROJECTIONS)
register_choices("model.activation", ACTIVATIONS)
