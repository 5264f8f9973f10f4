"""The Transformer of Vaswani et al. (2017), with every design choice of methods.md 1 switchable.

Shapes: B batch, S source length, T target length, D model dim, H heads, Dh head dim, V vocab.
Masks are boolean and mean "may attend" / "is a real token" (True), never the opposite.

The model only computes: ``encode``, ``decode`` (token ids *or* raw token embeddings, with an
optional KV cache) and the teacher-forced ``forward``. No loss, no search, no strategy flags.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig, register_choices
from .dropout import Dropout
from .layers import Cache, DecoderLayer, EncoderLayer, norm_layer

EMBED_SCALES = {"sqrt": math.sqrt, "none": lambda d: 1.0}  # embeddings x f(d_model)
POSITIONS = ("sinusoidal", "learned")  # a fixed table (Vaswani et al. 3.5) or a learned one
register_choices("model.embed_scale", EMBED_SCALES)
register_choices("model.positions", POSITIONS)


def sinusoidal_table(n: int, d: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...) (Vaswani et al. 3.5)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)[:, : d // 2]
    return table


class Positions(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.learned = cfg.positions == "learned"
        if self.learned:
            self.table = nn.Parameter(torch.randn(cfg.max_positions, cfg.d_model) * 0.02)
        else:
            self.register_buffer(
                "table", sinusoidal_table(cfg.max_positions, cfg.d_model), persistent=False
            )

    def forward(self, start: int, length: int) -> torch.Tensor:  # [length, D]
        if start + length > self.table.shape[0]:
            raise ValueError(f"sequence of {start + length} positions > max_positions")
        return self.table[start : start + length]


class Transformer(nn.Module):
    """Encoder-decoder Transformer. ``decode`` takes token ids [B,T] or raw token embeddings
    [B,T,D] and always adds the embedding scale, the true positions and dropout itself."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set (from the SentencePiece model)")
        self.cfg = cfg
        self.pad_id = cfg.pad_id
        d = cfg.d_model
        self.src_embed = nn.Embedding(cfg.vocab_size, d, padding_idx=cfg.pad_id)
        self.tgt_embed = (
            self.src_embed
            if cfg.tie_encoder_decoder
            else nn.Embedding(cfg.vocab_size, d, padding_idx=cfg.pad_id)
        )
        for emb in {id(self.src_embed): self.src_embed, id(self.tgt_embed): self.tgt_embed}.values():
            nn.init.normal_(emb.weight, 0.0, d**-0.5)  # with the sqrt(d) scale: unit variance
            nn.init.zeros_(emb.weight[cfg.pad_id])
        self.output = nn.Linear(d, cfg.vocab_size, bias=False)
        if cfg.tie_output:
            self.output.weight = self.tgt_embed.weight  # Press & Wolf 2017; Vaswani et al. 3.4
        else:
            nn.init.normal_(self.output.weight, 0.0, d**-0.5)
        self.embed_scale = EMBED_SCALES[cfg.embed_scale](d)
        self.src_pos = Positions(cfg)
        self.tgt_pos = Positions(cfg)
        self.dropout = Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        pre = cfg.norm_position == "pre"
        self.enc_norm = norm_layer(cfg) if pre else None  # pre-norm needs a final norm
        self.dec_norm = norm_layer(cfg) if pre else None

    # ------------------------------------------------------------------ encoder
    def encode(self, src: torch.Tensor,
               padded: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """src [B,S] ids -> (memory [B,S,D], src_mask [B,S] real tokens). ``padded=False``
        promises that src holds no PAD (the caller checked on the host): src_mask is then None
        and attention runs without a key mask (on GPU: the flash kernel)."""
        src_mask = src.ne(self.pad_id) if padded else None
        x = self.src_embed(src) * self.embed_scale + self.src_pos(0, src.shape[1])
        x = self.dropout(x)
        key_mask = None if src_mask is None else src_mask[:, None, None, :]  # [B,1,1,S]
        for layer in self.encoder:
            x = layer(x, key_mask, src_mask)
        if self.enc_norm is not None:
            x = self.enc_norm(x, src_mask)
        return x, src_mask

    # ------------------------------------------------------------------ decoder
    def embed_target(self, tgt: torch.Tensor) -> torch.Tensor:
        """Raw (unscaled, position-free) target token embeddings: ids [B,T] -> [B,T,D]."""
        return self.tgt_embed(tgt)

    def decode_hidden(
        self,
        tgt: torch.Tensor,  # ids [B,T] or raw embeddings [B,T,D]
        memory: torch.Tensor,  # [B,S,D]
        src_mask: torch.Tensor | None,  # [B,S]; None: no padding (``encode(padded=False)``)
        tgt_mask: torch.Tensor | None = None,  # [B,T] real target tokens (BatchNorm only)
        cache: list[Cache] | None = None,
        start: int = 0,  # position of tgt[:, 0] (cached decoding)
        rows: torch.Tensor | None = None,  # [B,R] positions wanted (position-wise models)
    ) -> torch.Tensor:
        """Hidden states [B,T,D], or [B,R,D] at positions ``rows``: the last layer then runs
        its cross-attention and feed-forward only there (a first pass of scheduled sampling
        needs the replaced slots' predictions only)."""
        if rows is not None and not self.position_wise:
            raise ValueError("decode_hidden(rows=...) needs position-wise norms (not batch)")
        emb = self.embed_target(tgt) if tgt.dtype == torch.long else tgt
        x = emb * self.embed_scale + self.tgt_pos(start, emb.shape[1])
        x = self.dropout(x)
        key_mask = None if src_mask is None else src_mask[:, None, None, :]
        last = len(self.decoder) - 1
        for i, layer in enumerate(self.decoder):
            x = layer(x, memory, key_mask, tgt_mask, None if cache is None else cache[i],
                      rows if i == last else None)
        if self.dec_norm is not None:
            if rows is not None and tgt_mask is not None:
                tgt_mask = tgt_mask.gather(1, rows)
            x = self.dec_norm(x, tgt_mask)
        return x  # [B,T,D] ([B,R,D] with rows)

    @property
    def position_wise(self) -> bool:
        """Each layer maps every position on its own given the attention (true unless
        BatchNorm, whose training statistics span the batch's positions)."""
        return self.cfg.norm != "batch"

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., D] -> logits [..., V]."""
        return self.output(hidden)

    def decode(self, tgt, memory, src_mask, tgt_mask=None, cache=None, start=0) -> torch.Tensor:
        """Logits [B,T,V] for ids or raw embeddings ``tgt``; see ``decode_hidden``."""
        return self.project(self.decode_hidden(tgt, memory, src_mask, tgt_mask, cache, start))

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B,T,V]."""
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask, tgt_in.ne(self.pad_id))

    # ------------------------------------------------------------------ cache
    def cross_cache(self, memory: torch.Tensor) -> list[Cache]:
        """Per decoder layer {"cross_k", "cross_v"} [B,H,S,Dh] of memory [B,S,D], to share
        between decoder passes over the same memory (the two passes of scheduled sampling):
        give each pass its own shallow copy (``[dict(c) for c in cross]``) as ``cache``."""
        return [dict(zip(("cross_k", "cross_v"), layer.cross_attn.memory_kv(memory)))
                for layer in self.decoder]

    def new_cache(self) -> list[Cache]:
        return [{} for _ in self.decoder]

    @staticmethod
    def reorder_cache(cache: list[Cache], index: torch.Tensor) -> None:
        """Keep rows ``index`` [N'] of the self-attention cache (beam reordering, pruning), in
        place and lazily: the selection is composed with any pending one and applied by the
        next step's append (``extend_cache``), one copy per step. The per-sentence cross
        cache is the caller's (it knows the sentences)."""
        for layer in cache:
            if "self_k" in layer:
                pending = layer.get("order")
                layer["order"] = index if pending is None else pending.index_select(0, index)


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied tables counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
