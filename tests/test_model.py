"""Transformer properties: cached == uncached, causality, padding invariance, every switch trains
and decodes, tying shares storage, shared_qk is symmetric, decode takes raw embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gapless.layers as gm
from gapless.config import ModelConfig
from gapless.data import BOS, EOS, PAD
from gapless.decode import Limits, ModelStepper, beam_search
from gapless.layers import MaskedBatchNorm, extend_cache
from gapless.model import Transformer, count_parameters

VOCAB, D = 24, 32


def make_model(seed: int = 0, train_bn_stats: bool = True, **switches) -> Transformer:
    """A tiny model; BatchNorm running statistics are made non-trivial so eval mode is tested
    with real statistics rather than the identity (mean 0, var 1)."""
    torch.manual_seed(seed)
    cfg = {
        "d_model": D,
        "n_heads": 2,
        "ffn_dim": 48,
        "enc_layers": 2,
        "dec_layers": 2,
        "dropout": 0.0,
        "vocab_size": VOCAB,
        "max_positions": 64,
    }
    cfg.update(switches)
    model = Transformer(ModelConfig(**cfg))
    if train_bn_stats:
        for mod in model.modules():
            if isinstance(mod, MaskedBatchNorm):
                mod.bn.running_mean.normal_(0.0, 0.3)
                mod.bn.running_var.uniform_(0.5, 2.0)
    return model


def rand_ids(shape, seed=0, low=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, VOCAB, shape, generator=g)


def pad_batch(lengths, seed=0, first=None):
    """[B, max(lengths)] ids with PAD after each row's length; ``first`` token optional (BOS)."""
    ids = rand_ids((len(lengths), max(lengths)), seed)
    for i, n in enumerate(lengths):
        ids[i, n:] = PAD
    if first is not None:
        ids[:, 0] = first
    return ids


# a spread of switch combinations for the property tests
COMBOS = {
    "paper": {},
    "pre_rms_qknorm_learned": {
        "norm_position": "pre",
        "norm": "rms",
        "score": "qk_norm",
        "positions": "learned",
    },
    "sharedqk_noscale_untied": {
        "projections": "shared_qk",
        "embed_scale": "none",
        "tie_encoder_decoder": False,
        "tie_output": False,
    },
    "noproj_batchnorm_unscaled": {"projections": "none", "norm": "batch", "score": "none"},
    "headdim_pre_batch_gelu": {
        "head_dim": 8,
        "norm_position": "pre",
        "norm": "batch",
        "activation": "gelu",
    },
}


def _src_tgt(B=3):
    src = pad_batch([7, 4, 6][:B], seed=1)
    tgt = rand_ids((B, 6), seed=2)
    tgt[:, 0] = BOS
    return src, tgt


# ---------------------------------------------------------------------------------------------
# KV cache


@pytest.mark.parametrize("combo", list(COMBOS))
def test_cached_decoding_equals_uncached(combo):
    model = make_model(**COMBOS[combo]).eval()
    src, tgt = _src_tgt()
    with torch.no_grad():
        memory, src_mask = model.encode(src)
        full = model.decode(tgt, memory, src_mask)  # [B,T,V]
        cache = model.new_cache()
        steps = [
            model.decode(tgt[:, t : t + 1], memory, src_mask, cache=cache, start=t)
            for t in range(tgt.shape[1])
        ]
    assert cache[0]["self_k"].shape[2] == tgt.shape[1]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("combo", ["paper", "pre_rms_qknorm_learned"])
def test_cached_decoding_in_chunks_equals_uncached(combo):
    """A prefix fed in one call, then more tokens several at a time (forced-prefix decoding)."""
    model = make_model(**COMBOS[combo]).eval()
    src, _ = _src_tgt()
    tgt = rand_ids((3, 8), seed=5)
    with torch.no_grad():
        memory, src_mask = model.encode(src)
        full = model.decode(tgt, memory, src_mask)
        cache = model.new_cache()
        parts, start = [], 0
        for size in (3, 1, 4):
            chunk = tgt[:, start : start + size]
            parts.append(model.decode(chunk, memory, src_mask, cache=cache, start=start))
            start += size
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_model_stepper_log_probs_and_reorder():
    model = make_model(**COMBOS["pre_rms_qknorm_learned"]).eval()
    src, tgt = _src_tgt()
    K = 2
    with torch.no_grad():
        full_lp = model(src, tgt).log_softmax(-1)  # [B,T,V]
        stepper = ModelStepper(model, src, repeat=K)
        # rows sentence-major; beam 1 of each sentence is fed a different token at step 0
        tokens = tgt.repeat_interleave(K, dim=0)  # [B*K,T]
        other = tokens.clone()
        other[1::K, 1] = (other[1::K, 1] - 4 + 1) % (VOCAB - 4) + 4
        for t in range(tgt.shape[1]):
            feed = other[:, t] if t == 1 else tokens[:, t]
            lp = stepper.step(feed)  # [B*K,V]
            if t == 1:  # swap the beams within each sentence: beam 0 takes beam 1's state
                swap = torch.arange(len(feed)).view(-1, K).flip(1).reshape(-1)
                stepper.reorder(swap, rows_changed_sentence=False)
                tokens = tokens[swap]
                other = other[swap]
        # after the swap beam 1 of each sentence holds the true history: its last log-probs
        # must equal the teacher-forced ones of the whole sentence
        torch.testing.assert_close(lp[1::K], full_lp[:, -1], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(lp[0::K], full_lp[:, -1], atol=1e-3)
        # pruning: keep sentence 2 only (both beams)
        keep = torch.tensor([2 * K, 2 * K + 1])
        stepper.reorder(keep, rows_changed_sentence=True)
        lp2 = stepper.step(torch.tensor([EOS, EOS]))
        ext = torch.cat([tgt[2:3], torch.tensor([[EOS]])], dim=1)
        ref = model(src[2:3], ext).log_softmax(-1)[0, -1]
        torch.testing.assert_close(lp2[1], ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# causality and padding


@pytest.mark.parametrize("combo", list(COMBOS))
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_causality(combo, mode):
    switches = COMBOS[combo]
    if mode == "train" and switches.get("norm") == "batch":
        pytest.skip("BatchNorm's training statistics pool all positions by design")
    model = make_model(**switches)
    model.train(mode == "train")  # dropout is 0, so train mode is deterministic
    src, tgt = _src_tgt()
    changed = tgt.clone()
    j = 3
    changed[:, j:] = rand_ids(changed[:, j:].shape, seed=9)
    assert bool((changed[:, j] != tgt[:, j]).all())
    with torch.no_grad():
        a, b = model(src, tgt), model(src, changed)
    torch.testing.assert_close(a[:, :j], b[:, :j], atol=1e-5, rtol=1e-5)
    assert (a[:, j] - b[:, j]).abs().max() > 1e-3  # position j sees its own (changed) input


@pytest.mark.parametrize("combo", list(COMBOS))
def test_padding_invariance_eval(combo):
    # float64: in fp32 a batch's different matmul shapes alone move logits of size ~40 by ~5e-5
    model = make_model(**COMBOS[combo]).eval().double()
    src_len, tgt_len = [3, 8, 5], [2, 7, 4]
    src = pad_batch(src_len, seed=3)
    tgt = pad_batch(tgt_len, seed=4, first=BOS)
    with torch.no_grad():
        batch = model(src, tgt)
        for i, (s, t) in enumerate(zip(src_len, tgt_len)):
            alone = model(src[i : i + 1, :s], tgt[i : i + 1, :t])
            torch.testing.assert_close(batch[i, :t], alone[0], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("norm", ["layer", "rms", "batch"])
def test_extra_padding_columns_change_nothing_in_training(norm):
    """Training mode (dropout 0): appending all-PAD columns must not change real positions, in
    particular BatchNorm statistics must ignore pads."""
    model = make_model(norm=norm, norm_position="pre").train()
    src = pad_batch([5, 3], seed=6)
    tgt = pad_batch([4, 2], seed=7, first=BOS)
    src_wide = F.pad(src, (0, 3), value=PAD)
    tgt_wide = F.pad(tgt, (0, 2), value=PAD)
    with torch.no_grad():
        a = model(src, tgt)
        b = model(src_wide, tgt_wide)
    real = tgt.ne(PAD)
    torch.testing.assert_close(a[real], b[:, : tgt.shape[1]][real], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# every switch trains and decodes

SWITCHES = {
    "default": {},
    "score_none": {"score": "none"},
    "score_qk_norm": {"score": "qk_norm"},
    "norm_rms": {"norm": "rms"},
    "norm_batch": {"norm": "batch"},
    "pre_norm": {"norm_position": "pre"},
    "pre_batch": {"norm_position": "pre", "norm": "batch"},
    "shared_qk": {"projections": "shared_qk"},
    "no_projections": {"projections": "none"},
    "head_dim_override": {"head_dim": 24},
    "no_projections_head_dim": {"projections": "none", "n_heads": 4, "head_dim": 8},
    "untied_enc_dec": {"tie_encoder_decoder": False},
    "untied_output": {"tie_output": False},
    "untied_all": {"tie_encoder_decoder": False, "tie_output": False},
    "embed_scale_none": {"embed_scale": "none"},
    "learned_positions": {"positions": "learned"},
    "gelu": {"activation": "gelu"},
}


def _batch():
    src = pad_batch([6, 4, 5, 3], seed=12)
    tgt_out = pad_batch([5, 3, 4, 5], seed=13)
    for i, n in enumerate([5, 3, 4, 5]):
        tgt_out[i, n - 1] = EOS
    tgt_in = torch.cat([torch.full((4, 1), BOS), tgt_out[:, :-1]], dim=1)
    tgt_in[tgt_in == EOS] = PAD
    return src, tgt_in, tgt_out


def _loss(model, src, tgt_in, tgt_out):
    logits = model(src, tgt_in)
    return F.cross_entropy(logits.reshape(-1, VOCAB), tgt_out.reshape(-1), ignore_index=PAD)


@pytest.mark.parametrize("name", list(SWITCHES))
def test_every_switch_trains_and_decodes(name):
    model = make_model(seed=11, train_bn_stats=False, dropout=0.1, **SWITCHES[name])
    src, tgt_in, tgt_out = _batch()

    model.eval()
    with torch.no_grad():
        before = _loss(model, src, tgt_in, tgt_out).item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(3):
        opt.zero_grad()
        loss = _loss(model, src, tgt_in, tgt_out)
        assert torch.isfinite(loss)
        loss.backward()
        if step == 0:
            for pname, p in model.named_parameters():
                assert p.grad is not None, f"{pname} got no gradient"
                assert torch.isfinite(p.grad).all(), pname
                if pname.endswith("k_norm.bias"):
                    continue  # a bias shared by all keys shifts every score equally: zero grad
                assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"
        opt.step()
    model.eval()
    with torch.no_grad():
        after = _loss(model, src, tgt_in, tgt_out).item()
    assert after < before

    K, max_len = 3, 5
    out = beam_search(ModelStepper(model, src, repeat=K), Limits.of(4, max_len), K, nbest=K)
    assert len(out) == 4
    for hyps in out:
        assert len(hyps) == K
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            assert 1 <= len(h.tokens) <= max_len
            assert all(4 <= t < VOCAB or t == 1 for t in h.tokens)  # no PAD/BOS/EOS
            assert h.log_prob < 0 and h.score == pytest.approx(h.log_prob / (len(h.tokens) + 1))


def test_every_parameter_gets_a_gradient():
    model = make_model(seed=11).train()
    src, tgt_in, tgt_out = _batch()
    _loss(model, src, tgt_in, tgt_out).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None]
    assert dead == []


# ---------------------------------------------------------------------------------------------
# tying


def test_tying_shares_storage_and_counts_once():
    counts = {}
    for enc_dec in (True, False):
        for out in (True, False):
            model = make_model(tie_encoder_decoder=enc_dec, tie_output=out)
            counts[enc_dec, out] = count_parameters(model)
            assert (model.src_embed.weight is model.tgt_embed.weight) == enc_dec
            assert (model.output.weight is model.tgt_embed.weight) == out
            assert (model.output.weight is model.src_embed.weight) == (out and enc_dec)
            if out:
                assert model.output.weight.data_ptr() == model.tgt_embed.weight.data_ptr()
    table = VOCAB * D
    assert counts[True, False] - counts[True, True] == table
    assert counts[False, True] - counts[True, True] == table
    assert counts[False, False] - counts[True, True] == 2 * table


def test_tied_weights_stay_one_table_after_a_step():
    model = make_model(dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    src, tgt = _src_tgt()
    model(src, tgt).logsumexp(-1).mean().backward()
    opt.step()
    assert model.output.weight is model.tgt_embed.weight is model.src_embed.weight


# ---------------------------------------------------------------------------------------------
# attention score symmetry


def _captured_scores(model, monkeypatch, src, tgt):
    scores = []
    real_attend = gm.attend

    def spy(q, k, v, key_mask, causal, scale, dropout):
        scores.append(torch.matmul(q, k.transpose(-1, -2)) * scale)  # [B,H,T,S] before masking
        return real_attend(q, k, v, key_mask, causal, scale, dropout)

    monkeypatch.setattr(gm, "attend", spy)
    with torch.no_grad():
        model(src, tgt)
    return [s for s in scores if s.shape[-1] == s.shape[-2]]  # self-attention only


@pytest.mark.parametrize(
    "projections, symmetric", [("shared_qk", True), ("none", True), ("separate", False)]
)
def test_self_attention_scores_symmetry(monkeypatch, projections, symmetric):
    model = make_model(projections=projections).eval()
    src = rand_ids((2, 7), seed=20)
    tgt = rand_ids((2, 5), seed=21)
    selfs = _captured_scores(model, monkeypatch, src, tgt)
    assert len(selfs) == 4  # 2 encoder + 2 decoder layers
    for s in selfs:
        is_sym = torch.allclose(s, s.transpose(-1, -2), atol=1e-5)
        assert is_sym == symmetric


# ---------------------------------------------------------------------------------------------
# decode takes raw embeddings


@pytest.mark.parametrize("combo", ["paper", "sharedqk_noscale_untied", "pre_rms_qknorm_learned"])
def test_decode_accepts_raw_and_soft_embeddings(combo):
    model = make_model(**COMBOS[combo]).eval()
    src, tgt = _src_tgt()
    with torch.no_grad():
        memory, src_mask = model.encode(src)
        by_ids = model.decode(tgt, memory, src_mask)
        by_emb = model.decode(model.embed_target(tgt), memory, src_mask)
        soft = F.one_hot(tgt, VOCAB).float() @ model.tgt_embed.weight  # [B,T,D]
        by_soft = model.decode(soft, memory, src_mask)
    assert torch.equal(by_ids, by_emb)
    torch.testing.assert_close(by_soft, by_ids, atol=1e-5, rtol=1e-5)
    # embed_target is raw: no scale, no positions (those are added by decode)
    assert torch.equal(model.embed_target(tgt), model.tgt_embed.weight[tgt])


def test_soft_mixture_is_differentiable():
    model = make_model().eval()
    src, tgt = _src_tgt()
    weights = torch.randn(*tgt.shape, VOCAB, requires_grad=True)
    memory, src_mask = model.encode(src)
    mix = weights.softmax(-1) @ model.tgt_embed.weight
    model.decode(mix, memory, src_mask).sum().backward()
    assert weights.grad is not None and weights.grad.abs().sum() > 0


def test_too_long_sequence_is_an_error():
    model = make_model(max_positions=8).eval()
    with pytest.raises(ValueError, match="max_positions"):
        model(rand_ids((1, 9)), rand_ids((1, 3)))


def test_extend_cache_reorders_and_appends_in_one_copy():
    """Pending reorders compose (beam step, then a prune) and apply with the next append:
    the same tensor as reordering eagerly and concatenating."""
    g = torch.Generator().manual_seed(0)
    past = torch.randn(6, 2, 3, 4, generator=g)
    first, second = torch.tensor([5, 5, 0, 2, 1, 3]), torch.tensor([4, 0, 1])
    new = torch.randn(3, 2, 1, 4, generator=g)
    cache = [{"self_k": past, "self_v": past + 1}]
    Transformer.reorder_cache(cache, first)
    Transformer.reorder_cache(cache, second)
    expected = torch.cat([past[first][second], new], dim=2)
    with torch.no_grad():
        got = extend_cache(cache[0]["self_k"], new, cache[0]["order"])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert extend_cache(None, new, None) is new
    torch.testing.assert_close(extend_cache(past[:3], new, None), torch.cat([past[:3], new], 2))
    # under autograd the copy falls back to differentiable ops
    leaf = new.clone().requires_grad_()
    extend_cache(past, leaf, second).sum().backward()
    torch.testing.assert_close(leaf.grad, torch.ones_like(new))


@pytest.mark.parametrize("combo", ["paper", "pre_rms_qknorm_learned", "sharedqk_noscale_untied"])
def test_decode_hidden_at_rows_equals_the_full_pass_there(combo):
    """rows [B,R]: the last layer continues only at those positions after its self-attention
    (the first pass of scheduled sampling); the states there equal the full pass's."""
    model = make_model(**COMBOS[combo]).eval()
    src, tgt = _src_tgt()
    rows = torch.tensor([[0, 2, 5], [1, 1, 0], [4, 3, 2]])  # any order, repeats allowed
    seen = []
    last_ffn = model.decoder[-1].ffn
    hook = last_ffn.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    with torch.no_grad():
        memory, src_mask = model.encode(src)
        full = model.decode_hidden(tgt, memory, src_mask)
        part = model.decode_hidden(tgt, memory, src_mask, rows=rows)
    hook.remove()
    assert part.shape == (3, 3, D)
    torch.testing.assert_close(part, full.gather(1, rows[..., None].expand(-1, -1, D)))
    assert seen == [tgt.shape[1], 3]  # the full pass, then only R positions
    assert model.position_wise


def test_decode_hidden_rows_refuses_batchnorm():
    model = make_model(**COMBOS["noproj_batchnorm_unscaled"]).eval()
    src, tgt = _src_tgt()
    memory, src_mask = model.encode(src)
    assert not model.position_wise
    with pytest.raises(ValueError, match="position-wise"):
        model.decode_hidden(tgt, memory, src_mask, rows=torch.zeros(3, 1, dtype=torch.long))
