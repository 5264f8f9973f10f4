"""A run's Transformer as a CTranslate2 ``TransformerSpec``: which switches it can express, and
the weights copied into the spec (fused Q/K/V, explicit position tables, embedding scale)."""

from __future__ import annotations

import numpy as np
import torch

from ..config import Config, ConfigError
from ..model import Transformer

QUANTIZATIONS = ("float32", "bfloat16", "int8", "int8_float32", "int8_bfloat16")


class ExportError(ConfigError):
    """A run or a request that the export cannot serve (listed all at once); a ValueError."""


def require_ctranslate2():
    """The ``ctranslate2`` module, or an ExportError saying how to install it."""
    try:
        import ctranslate2
    except ImportError as exc:
        raise ExportError("the ctranslate2 package is not installed: "
                          "pip install 'gapless[export]' (or pip install ctranslate2)") from exc
    return ctranslate2


def unsupported(cfg: Config) -> list[str]:
    """Every model switch of ``cfg`` that a CTranslate2 Transformer cannot compute exactly
    (dropout settings do not matter at inference)."""
    m = cfg.model
    problems = []
    if m.norm == "batch":
        problems.append("model.norm=batch: CTranslate2 has LayerNorm and RMSNorm only")
    if m.score == "qk_norm":
        problems.append("model.score=qk_norm: CTranslate2's cross-attention normalises the "
                        "query over all heads at once, gapless per head")
    if m.pad_id != 0:
        problems.append(f"model.pad_id={m.pad_id}: the SentencePiece ids are fixed (pad 0)")
    if m.vocab_size <= 0:
        problems.append("model.vocab_size is not set (the run was never prepared)")
    return problems


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().contiguous().numpy()


def _linear(spec, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    spec.weight = _np(weight)
    if bias is not None:
        spec.bias = _np(bias)


def _norm(spec, norm) -> None:
    spec.gamma = _np(norm.weight)
    if getattr(norm, "bias", None) is not None:
        spec.beta = _np(norm.bias)


def _projection_weights(proj, d_model: int, cross: bool):
    """(query [, key+value]) or fused (query+key+value) weights and biases of one attention's
    input projections, for any ``model.projections``: W_q = W_k is written twice, no
    projection is an identity."""
    name = type(proj).__name__
    if name == "SeparateQKV":
        if cross:
            return [(proj.q_proj.weight, proj.q_proj.bias),
                    (proj.kv_proj.weight, proj.kv_proj.bias)]
        return [(proj.qkv_proj.weight, proj.qkv_proj.bias)]
    if name == "SharedQK":
        qk, v = proj.qk_proj, proj.v_proj
        kv = (torch.cat([qk.weight, v.weight]), torch.cat([qk.bias, v.bias]))
        if cross:
            return [(qk.weight, qk.bias), kv]
        return [(torch.cat([qk.weight, kv[0]]), torch.cat([qk.bias, kv[1]]))]
    eye, zero = torch.eye(d_model), torch.zeros(d_model)  # NoProjection: q = k = v = x
    if cross:
        return [(eye, zero), (torch.cat([eye, eye]), torch.cat([zero, zero]))]
    return [(torch.cat([eye, eye, eye]), torch.cat([zero, zero, zero]))]


def _attention(spec, attn, cfg) -> None:
    blocks = _projection_weights(attn.proj, cfg.d_model, attn.cross)
    for lin, (w, b) in zip(spec.linear, blocks):
        _linear(lin, w, b)
    _linear(spec.linear[-1], attn.out.weight, attn.out.bias)
    if cfg.score == "none":  # unscaled q.k (CTranslate2's default is 1 / sqrt(head_dim))
        spec.queries_scale = np.float32(1.0)


def _ffn(spec, ffn, norm) -> None:
    _norm(spec.layer_norm, norm)
    _linear(spec.linear_0, ffn.fc1.weight, ffn.fc1.bias)
    _linear(spec.linear_1, ffn.fc2.weight, ffn.fc2.bias)


def _inputs(spec, embed, positions, scale: str) -> None:
    """Token table, the position table as it is (gapless's sin/cos interleaving, or the
    learned one) and the embedding scale: sqrt(d_model) (CTranslate2's default) or none."""
    emb = spec.embeddings[0] if isinstance(spec.embeddings, list) else spec.embeddings
    emb.weight = _np(embed.weight)
    spec.position_encodings.encodings = _np(positions.table)
    spec.scale_embeddings = scale == "sqrt"


def _specs(cfg):
    """Empty encoder and decoder specs shaped like the gapless model."""
    from ctranslate2.specs import common_spec, transformer_spec

    m = cfg.model
    head_dim = m.head_dim or m.d_model // m.n_heads
    common = {
        "pre_norm": m.norm_position == "pre",
        "activation": {"relu": common_spec.Activation.RELU,
                       "gelu": common_spec.Activation.GELU}[m.activation],
        "rms_norm": m.norm == "rms",
        "head_dim": head_dim if head_dim * m.n_heads != m.d_model else None,
    }
    encoder = transformer_spec.TransformerEncoderSpec(m.enc_layers, m.n_heads, **common)
    decoder = transformer_spec.TransformerDecoderSpec(m.dec_layers, m.n_heads, **common)
    return transformer_spec.TransformerSpec(encoder, decoder)


def build_spec(model: Transformer, cfg: Config, pieces: list[str]):
    """The CTranslate2 ``TransformerSpec`` of ``model`` (weights copied, vocabulary
    ``pieces``, source EOS appended by CTranslate2, decoding started from ``<s>``)."""
    require_ctranslate2()
    m = cfg.model
    spec = _specs(cfg)
    enc, dec = spec.encoder, spec.decoder
    _inputs(enc, model.src_embed, model.src_pos, m.embed_scale)
    _inputs(dec, model.tgt_embed, model.tgt_pos, m.embed_scale)
    for ls, layer in zip(enc.layer, model.encoder):
        _attention(ls.self_attention, layer.attn, m)
        _norm(ls.self_attention.layer_norm, layer.res1.norm)
        _ffn(ls.ffn, layer.ffn, layer.res2.norm)
    for ls, layer in zip(dec.layer, model.decoder):
        _attention(ls.self_attention, layer.self_attn, m)
        _norm(ls.self_attention.layer_norm, layer.res1.norm)
        _attention(ls.attention, layer.cross_attn, m)
        _norm(ls.attention.layer_norm, layer.res2.norm)
        _ffn(ls.ffn, layer.ffn, layer.res3.norm)
    if model.enc_norm is not None:
        _norm(enc.layer_norm, model.enc_norm)
        _norm(dec.layer_norm, model.dec_norm)
    _linear(dec.projection, model.output.weight, None)
    spec.register_source_vocabulary(list(pieces))
    spec.register_target_vocabulary(list(pieces))
    spec.config.add_source_eos = True
    spec.config.decoder_start_token = pieces[2]  # BOS
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = pieces[1:4]
    if m.norm == "rms":  # torch's RMSNorm default eps; LayerNorm's 1e-5 is CTranslate2's default
        spec.config.layer_norm_epsilon = float(torch.finfo(torch.float32).eps)
    return spec
