"""gapless.strategies: two-pass scheduled sampling and the word oracle (methods.md 3-4).

Properties, not golden tensors: p = 1 is teacher forcing exactly; p = 0 feeds the shifted
first-pass predictions; BOS and PAD slots stay gold; a one-hot soft input is the gold token;
tau changes the sample's entropy; every strategy overfits one batch; training logs the stats.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gapless import config as config_mod
from gapless.checkpoint import RunDir
from gapless.config import ConfigError, ModelConfig, StrategyConfig
from gapless.data import BOS, EOS, PAD, Batch, pad_sequences
from gapless.model import Transformer
from gapless.strategies import (
    PREDICTED,
    STRATEGIES,
    Progress,
    TeacherForcing,
    build_strategy,
    categorical_sample,
    fed_positions,
    gumbel_noise,
    mix,
    topk_weights,
)
from gapless.training import Criterion, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
V = 24
KINDS = list(PREDICTED)
SOFT_KINDS = ["soft", "topk_soft", "gumbel_soft"]
VARIANTS = [("scheduled_sampling", {"predicted": kind}) for kind in KINDS] + [
    ("word_oracle", {}), ("sentence_oracle", {})]
VARIANT_IDS = [kw.get("predicted", name) for name, kw in VARIANTS]
AT = Progress(update=10, epoch=1)


def _model(dropout: float = 0.0, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=V, d_model=32, n_heads=2, ffn_dim=64, enc_layers=1,
                      dec_layers=1, dropout=dropout, max_positions=64)
    return Transformer(cfg)


def _batch(seed: int = 0, size: int = 6) -> Batch:
    """Random sentences of lengths 3..3+size-1: every row but the longest is padded."""
    g = torch.Generator().manual_seed(seed)
    src, tgt = [], []
    for b in range(size):
        src.append(torch.randint(4, V, (4 + b,), generator=g).tolist())
        tgt.append(torch.randint(4, V, (3 + b,), generator=g).tolist())
    return Batch(src=pad_sequences(src, suffix=EOS), tgt_in=pad_sequences(tgt, prefix=BOS),
                 tgt_out=pad_sequences(tgt, suffix=EOS), index=torch.arange(size))


def _strategy(name: str = "scheduled_sampling", p: float = 0.5, **kw):
    return build_strategy(StrategyConfig(name=name, schedule="constant", constant_p=p, **kw))


def _replaceable(batch: Batch) -> torch.Tensor:
    mask = batch.tgt_in.ne(PAD)
    mask[:, 0] = False
    return mask


def _inputs(model, batch, strategy, progress=AT):
    memory, src_mask = model.encode(batch.src)
    return strategy.decoder_inputs(model, batch, memory, src_mask, progress)


def _loss_and_grads(model, strategy, batch, seed=5, eps=0.1):
    torch.manual_seed(seed)
    model.zero_grad()
    loss, _, logging = Criterion(model, strategy, eps)(batch, AT)
    nll = logging["nll"]
    loss.backward()
    return loss.detach(), nll, [p.grad.clone() for p in model.parameters()]


def _assert_same(a, b):
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert all(torch.equal(x, y) for x, y in zip(a[2], b[2]))


# ----------------------------------------------------------------------------------------------
# p = 1 is teacher forcing


@pytest.mark.parametrize("name,kw", VARIANTS, ids=VARIANT_IDS)
def test_p1_gives_the_teacher_forcing_loss_exactly(name, kw):
    """Same seed, dropout on: loss, NLL and every gradient equal teacher forcing's."""
    model, batch = _model(dropout=0.1), _batch()
    ref = _loss_and_grads(model, TeacherForcing(StrategyConfig()), batch)
    _assert_same(_loss_and_grads(model, _strategy(name, p=1.0, **kw), batch), ref)


@pytest.mark.parametrize("name,kw", VARIANTS, ids=VARIANT_IDS)
def test_two_pass_path_with_all_gold_is_teacher_forcing(name, kw):
    """The mixing path itself (no p = 1 shortcut): first pass runs, every slot is gold."""
    model, batch = _model(), _batch()
    ref = _loss_and_grads(model, TeacherForcing(StrategyConfig()), batch)
    strategy = _strategy(name, p=1.0, **kw)
    strategy.decoder_inputs = lambda m, b, mem, sm, progress, cross=None: strategy.mixed_inputs(
        m, b, mem, sm, 1.0, cross)
    _assert_same(_loss_and_grads(model, strategy, batch), ref)
    stats = strategy.stats()
    assert stats["replaced"] == 0.0 and stats["pred_differs"] is None  # nothing was fed


def test_mle_weight_adds_the_first_pass_loss():
    """Dropout off, p = 1: the first pass *is* the teacher-forced pass, so the loss is
    (1 + w) x teacher forcing's and the NLL (second pass only) is unchanged."""
    model, batch = _model(), _batch()
    ref_loss, ref_nll, _ = _loss_and_grads(model, TeacherForcing(StrategyConfig()), batch)
    loss, nll, grads = _loss_and_grads(model, _strategy(p=1.0, mle_weight=0.5), batch)
    torch.testing.assert_close(loss, 1.5 * ref_loss)
    assert torch.equal(nll, ref_nll)
    assert all(torch.isfinite(g).all() for g in grads)
    strategy = _strategy(p=1.0, mle_weight=0.5)
    _inputs(model, batch, strategy)
    assert len(strategy.extra_hidden()) == 1 and strategy.extra_hidden() == []  # handed once


# ----------------------------------------------------------------------------------------------
# p = 0: the predictions, shifted; BOS and PAD untouched


def _first_pass_logits(model, batch) -> torch.Tensor:
    memory, src_mask = model.encode(batch.src)
    logits = model.decode(batch.tgt_in, memory, src_mask).float()  # [B,T,V]
    logits[..., [PAD, BOS]] = -math.inf  # the model's own output never holds PAD/BOS
    return logits


def test_p0_argmax_inputs_are_the_shifted_first_pass_argmax():
    model, batch = _model(), _batch()
    with torch.no_grad():
        inputs = _inputs(model, batch, _strategy(p=0.0))
        logits = _first_pass_logits(model, batch)
    expected = torch.cat([batch.tgt_in[:, :1], logits.argmax(-1)[:, :-1]], dim=1)
    expected[batch.tgt_in.eq(PAD)] = PAD
    assert inputs.dtype == torch.long
    assert torch.equal(inputs, expected)
    assert not torch.equal(inputs, batch.tgt_in)  # an untrained model: predictions differ


@pytest.mark.parametrize("name,kw", VARIANTS, ids=VARIANT_IDS)
def test_p0_bos_and_pad_slots_stay_gold(name, kw):
    model, batch = _model(), _batch()
    with torch.no_grad():
        inputs = _inputs(model, batch, _strategy(name, p=0.0, **kw))
        gold = model.embed_target(batch.tgt_in)
    pad, real = batch.tgt_in.eq(PAD), _replaceable(batch)
    assert pad.any()
    if inputs.dtype == torch.long:
        assert bool((inputs[:, 0] == BOS).all()) and bool((inputs[pad] == PAD).all())
        assert not bool(inputs[real].eq(PAD).any() | inputs[real].eq(BOS).any())
    else:
        assert inputs.shape == (*batch.tgt_in.shape, 32)
        assert torch.equal(inputs[:, 0], gold[:, 0]) and torch.equal(inputs[pad], gold[pad])
        assert not torch.equal(inputs[real], gold[real])  # every real slot replaced


def test_mixing_ids_equals_mixing_embeddings():
    model, batch = _model(), _batch()
    torch.manual_seed(3)
    use_gold = torch.rand(batch.tgt_in.shape) < 0.5
    predicted = torch.randint(4, V, batch.tgt_in.shape)
    by_ids = model.embed_target(mix(use_gold, batch.tgt_in, predicted))
    by_embeddings = mix(use_gold, model.embed_target(batch.tgt_in), model.embed_target(predicted))
    assert torch.equal(by_ids, by_embeddings)
    memory, src_mask = model.encode(batch.src)
    assert torch.equal(
        model.decode_hidden(mix(use_gold, batch.tgt_in, predicted), memory, src_mask),
        model.decode_hidden(by_embeddings, memory, src_mask),
    )


@pytest.mark.parametrize("kind", SOFT_KINDS)
def test_one_hot_soft_input_equals_the_gold_token_path(kind):
    """Logits peaked on the gold token -> the soft input is exactly that token's embedding,
    and the decoder gives exactly what the ids give."""
    model, batch = _model(), _batch()
    table = model.tgt_embed.weight
    logits = F.one_hot(batch.tgt_in, V).float() * 1e3  # [B,T,V]
    cfg = StrategyConfig(predicted=kind, topk=3, temperature=1.0)
    with torch.no_grad():
        soft = PREDICTED[kind](logits, table, cfg)
        assert torch.equal(soft, model.embed_target(batch.tgt_in))
        memory, src_mask = model.encode(batch.src)
        assert torch.equal(model.decode_hidden(soft, memory, src_mask),
                           model.decode_hidden(batch.tgt_in, memory, src_mask))


def test_temperature_changes_the_sample_entropy():
    """tau is applied *before* the Gumbel noise: frequencies follow softmax(logits / tau)
    (applied after, as in OR-NMT's code, every tau would give the same distribution)."""
    base = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    logits = base.expand(1, 20_000, 5).contiguous()
    entropies = []
    for tau in (0.5, 1.0, 2.0):
        torch.manual_seed(0)
        ids = PREDICTED["sample"](logits, None, StrategyConfig(temperature=tau))
        freq = torch.bincount(ids.view(-1), minlength=5).float() / ids.numel()
        torch.testing.assert_close(freq, (base / tau).softmax(-1), atol=0.015, rtol=0)
        entropies.append(float(-(freq * freq.clamp_min(1e-12).log()).sum()))
    assert entropies[0] < entropies[1] < entropies[2]


def test_sample_never_draws_impossible_ids():
    """PAD/BOS at -inf (also the first and last id) are never drawn, even with u near 1."""
    logits = torch.randn(50_000, 6)
    logits[:, [0, 2, 5]] = float("-inf")
    torch.manual_seed(0)
    ids = categorical_sample(logits, 0.7)
    assert set(ids.unique().tolist()) == {1, 3, 4}
    one = torch.tensor([[float("-inf"), 0.0, float("-inf")]])
    assert categorical_sample(one).tolist() == [1]


def test_sample_with_u_at_one_draws_the_last_possible_id(monkeypatch):
    """A generator whose uniforms reach 1 (u * total == total) still draws the last id with
    probability mass, not the impossible ids after it (or an index out of range)."""
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.ones(shape, **kw))
    logits = torch.tensor([[0.3, 1.1, -0.4, 0.9, float("-inf"), float("-inf")]]).repeat(4, 1)
    logits[1:, 3] = torch.tensor([2.0, -3.0, 0.0])
    assert categorical_sample(logits, 1.3).tolist() == [3, 3, 3, 3]


def test_gumbel_noise_is_finite():
    assert bool(torch.isfinite(gumbel_noise(torch.zeros(200_000))).all())


def test_topk_soft_weights_are_a_distribution():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, V) * 3 - 5  # mostly negative: raw-sum normalisation would fail
    weights, ids = topk_weights(logits, 5)
    assert bool((weights >= 0).all())
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 7))
    assert torch.equal(ids, logits.topk(5, dim=-1).indices)
    table = torch.randn(V, 8)
    emb = PREDICTED["topk_soft"](logits, table, StrategyConfig(topk=5))
    torch.testing.assert_close(emb, (weights[..., None] * table[ids]).sum(-2))


def test_soft_and_gumbel_soft_are_mixtures_of_the_table():
    """A soft input is a convex combination of embedding rows: with a table of one-hot rows
    it is the weight vector itself, non-negative and summing to 1."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, V)
    eye = torch.eye(V)
    soft = PREDICTED["soft"](logits, eye, StrategyConfig(alpha=2.0))
    torch.testing.assert_close(soft, (2.0 * logits).softmax(-1))
    torch.manual_seed(1)
    hot = PREDICTED["gumbel_soft"](logits, eye, StrategyConfig(temperature=0.05))
    cold = PREDICTED["gumbel_soft"](logits, eye, StrategyConfig(temperature=5.0))
    for w in (hot, cold):
        assert bool((w >= 0).all())
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 5))
    assert hot.max(-1).values.mean() > cold.max(-1).values.mean()  # low tau: nearly one-hot


def test_first_pass_grad_changes_the_gradient():
    model, batch = _model(), _batch()
    frozen = _loss_and_grads(model, _strategy(p=0.0, predicted="soft"), batch)
    through = _loss_and_grads(model, _strategy(p=0.0, predicted="soft", first_pass_grad=True),
                              batch)
    assert torch.equal(frozen[0], through[0])  # same forward
    assert not all(torch.equal(a, b) for a, b in zip(frozen[2], through[2]))


# ----------------------------------------------------------------------------------------------
# schedules inside the strategy, and the logged stats


def test_stats_report_p_replaced_and_prediction_mismatch():
    model, batch = _model(), _batch()
    real = _replaceable(batch)
    strategy = _strategy(p=0.0)
    with torch.no_grad():
        inputs = _inputs(model, batch, strategy)
    stats = strategy.stats()
    assert stats["p_gold"] == 0.0 and stats["replaced"] == 1.0
    differs = float(inputs[real].ne(batch.tgt_in[real]).float().mean())
    assert stats["pred_differs"] == pytest.approx(differs, abs=1e-4)
    assert strategy.stats() == {"p_gold": None, "replaced": None, "pred_differs": None}  # reset

    half = _strategy(p=0.5)
    with torch.no_grad():
        for _ in range(20):
            _inputs(model, batch, half)
    stats = half.stats()
    assert stats["p_gold"] == 0.5 and abs(stats["replaced"] - 0.5) < 0.1

    gold = _strategy(p=1.0)
    _inputs(model, batch, gold)
    assert gold.stats() == {"p_gold": 1.0, "replaced": 0.0, "pred_differs": None}


def test_decoding_step_schedule_makes_p_a_vector():
    """step_eps with f(i) = 0: p_t = eps ** t; the logged p is its mean over real slots."""
    model, batch = _model(), _batch()
    strategy = _strategy(p=0.0, step_eps=0.5)
    T = batch.tgt_in.shape[1]
    p = strategy.gold_p(AT, T)
    torch.testing.assert_close(p, 0.5 ** torch.arange(T, dtype=torch.float32))
    with torch.no_grad():
        _inputs(model, batch, strategy)
    real = _replaceable(batch)
    expected = float((real * p).sum() / real.sum())
    assert strategy.stats()["p_gold"] == pytest.approx(expected, abs=1e-4)


def test_schedule_follows_progress():
    inv = build_strategy(StrategyConfig(name="scheduled_sampling", half_at=100))
    assert inv.gold_p(Progress(100, 1), 5) == pytest.approx(0.5)
    assert inv.gold_p(Progress(0, 1), 5) > inv.gold_p(Progress(50, 1), 5) > 0.5
    oracle = build_strategy(StrategyConfig(name="word_oracle", predicted="soft"))
    assert oracle.predicted == "sample"  # the word oracle always samples
    assert oracle.gold_p(Progress(9999, 1), 5) == pytest.approx(15 / (15 + math.exp(1 / 15)))


# ----------------------------------------------------------------------------------------------
# training


@pytest.mark.parametrize("name,kw", VARIANTS, ids=VARIANT_IDS)
def test_each_strategy_overfits_one_batch(name, kw):
    model, batch = _model(), _batch()
    strategy = _strategy(name, p=0.5, **kw)
    criterion = Criterion(model, strategy, 0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    losses = []
    for _ in range(50):
        loss, _, _ = criterion(batch, AT)
        optimizer.zero_grad()
        (loss / batch.n_tokens).backward()
        optimizer.step()
        losses.append(float(loss.detach()) / batch.n_tokens)
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
    assert strategy.stats()["replaced"] > 0.3  # it really fed predictions


def test_train_end_to_end_logs_strategy_stats(tiny_corpus, tmp_path):
    """`gapless train configs/tiny.yaml --strategy.name scheduled_sampling ...` in-process."""
    overrides = [
        "--data.corpus", str(tiny_corpus), "--train.device", "cpu", "--train.dtype", "fp32",
        "--train.threads", "1", "--train.max_updates", "10", "--train.log_every", "5",
        "--train.valid_every", "10", "--train.save_every", "10",
        "--train.valid_max_sentences", "10", "--decode.beam", "1",
        "--strategy.name", "scheduled_sampling", "--strategy.predicted", "soft",
        "--strategy.schedule", "linear", "--strategy.linear_start", "1.0", "--strategy.linear_slope", "0.05",
    ]
    state = train(config_mod.load(TINY, overrides), tmp_path / "run")  # threads: the fixture
    assert state.update == 10
    records = [r for r in RunDir(tmp_path / "run").read_log() if r["kind"] == "train"]
    assert [r["update"] for r in records] == [5, 10]
    for r in records:
        assert {"p_gold", "replaced", "pred_differs", "strategy_s_per_update"} <= r.keys()
        assert 0.0 < r["replaced"] < 1.0 and 0.0 <= r["pred_differs"] <= 1.0
        # the first pass costs time: the step is slower than the same step without it
        assert 0 < r["strategy_s_per_update"] < r["s_per_update"] and 0 < r["strategy_share"] < 1
    # updates 0-4 then 5-9 of p = 1 - 0.05 i: the logged p is the interval's (slot-weighted) mean
    assert 0.8 <= records[0]["p_gold"] <= 1.0 and 0.55 <= records[1]["p_gold"] <= 0.8
    assert records[1]["replaced"] > records[0]["replaced"]


def test_config_choices_and_ranges():
    assert config_mod.from_dict(None).strategy.name == "teacher_forcing"
    for bad in ({"strategy.predicted": "bogus"}, {"strategy.name": "nope"},
                {"strategy.schedule": "constant", "strategy.constant_p": 2.0},
                {"strategy.temperature": 0.0}, {"strategy.schedule_unit": "step"},
                {"strategy.name": "scheduled_sampling", "strategy.sigmoid_k": 0.5}):
        with pytest.raises(ConfigError):
            config_mod.from_dict(None, bad)
    ok = config_mod.from_dict(None, {"strategy.name": "word_oracle", "strategy.or_nmt_mu": 50,
                                     "strategy.temperature": 0.8})
    assert ok.strategy.or_nmt_mu == 50.0
    assert set(STRATEGIES) == set(config_mod.CHOICES["strategy.name"])


# ----------------------------------------------------------------------------------------------
# the sentence-level oracle


def _oracle_strategy(**kw):
    return build_strategy(StrategyConfig(name="sentence_oracle", schedule="constant", constant_p=0.0,
                                         **kw))


@pytest.mark.parametrize("training", [True, False])
def test_sentence_oracle_has_the_reference_length_and_restores_the_mode(training):
    model, batch = _model(dropout=0.1), _batch()
    model.train(training)
    oracle = _oracle_strategy().oracle(model, batch)  # [B,T-1]
    assert model.training == training
    assert torch.equal(oracle.ne(PAD), batch.tgt_in[:, 1:].ne(PAD))  # exactly |y*| tokens
    assert not bool((oracle.eq(BOS) | oracle.eq(EOS)).any())


def test_oracle_search_under_cpu_bf16_autocast_uses_a_packed_bf16_twin():
    """Under CPU bf16 autocast the search decodes a frozen bf16 copy with prepacked linears
    (outside autocast); the training model keeps its fp32 weights, gradients and mode, and
    the oracle still has exactly the reference length."""
    from gapless.packing import PackedLinear, packing_available
    from gapless.strategies import search_model

    model, batch = _model(dropout=0.1), _batch()
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        twin, context = search_model(model)
        oracle = _oracle_strategy().oracle(model, batch)
    assert twin is not model and next(twin.parameters()).dtype == torch.bfloat16
    assert isinstance(context, torch.autocast)  # decoded with autocast off
    assert not any(p.requires_grad for p in twin.parameters())
    assert any(isinstance(m, PackedLinear) for m in twin.modules()) == packing_available()
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    assert model.training
    assert torch.equal(oracle.ne(PAD), batch.tgt_in[:, 1:].ne(PAD))
    same, _ = search_model(model)  # no autocast: the model itself
    assert same is model


def test_sentence_oracle_picks_the_best_bleu_candidate(monkeypatch):
    """Scripted beams: sentence 0's second beam is the reference (BLEU 1) and wins; sentence 1
    has only zero-BLEU candidates: the beam's best (first) is kept."""
    import gapless.strategies as strategies_mod
    from gapless.decode import Hypothesis

    batch = _batch(size=2)
    refs = [batch.tgt_in[b, 1 : 4 + b].tolist() for b in range(2)]  # lengths 3 and 4
    others = [[t for t in range(4, V) if t not in ref] for ref in refs]
    scripted = [
        [Hypothesis([others[0][0]] * 3, -1.0, -1.0), Hypothesis(refs[0], -2.0, -2.0)],
        [Hypothesis([others[1][0]] * 4, -1.0, -1.0), Hypothesis([others[1][1]] * 4, -3.0, -3.0)],
    ]
    calls = []

    def fake_beam_search(stepper, limits, beam, **kw):
        calls.append((beam, limits.max_len.tolist(), limits.min_len.tolist()))
        return scripted

    monkeypatch.setattr(strategies_mod, "beam_search", fake_beam_search)
    strategy = _oracle_strategy(oracle_beam=2)
    oracle = strategy.oracle(_model(), batch)
    assert calls == [(2, [3, 4], [3, 4])]  # min_len = max_len = reference length
    assert oracle[0, :3].tolist() == refs[0]
    assert oracle[1, :4].tolist() == [others[1][0]] * 4
    assert strategy.stats()["oracle_bleu"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------
# the mask is drawn first: only replaced slots are projected; mixing units; cached oracles


def test_only_replaced_slots_are_projected_and_they_get_the_shifted_argmax(monkeypatch):
    model, batch = _model(), _batch()
    rows = []
    project = model.project
    monkeypatch.setattr(model, "project", lambda h: rows.append(h.shape[0]) or project(h))
    strategy = _strategy(p=0.5)
    with torch.no_grad():
        inputs = _inputs(model, batch, strategy)
        logits = _first_pass_logits(model, batch)
    replaced = inputs.ne(batch.tgt_in)  # differs here, except where a prediction equals gold
    shifted = torch.cat([batch.tgt_in[:, :1], logits.argmax(-1)[:, :-1]], dim=1)
    real = _replaceable(batch)
    fed = (inputs.eq(shifted) & real) | replaced
    n_replaced = round(strategy.stats()["replaced"] * int(real.sum()))
    assert rows[0] == n_replaced  # [N,D] projected, N = replaced slots, not B x (T-1)
    assert 0 < n_replaced < int(real.sum())
    assert torch.equal(inputs[replaced], shifted[replaced])  # every change is a prediction
    assert bool(fed.sum() >= n_replaced)


@pytest.mark.parametrize("unit", ["sentence", "batch"])
def test_mix_unit_draws_once_per_sentence_or_batch(unit):
    batch = _batch(size=6)
    real = _replaceable(batch)
    strategy = _strategy(p=0.5, mix_unit=unit)
    kinds = set()
    with torch.no_grad():
        for seed in range(12):
            torch.manual_seed(seed)
            use_gold = strategy.draw_gold_mask(batch.tgt_in, 0.5)
            rows = [bool(use_gold[b][real[b]].all()) or bool((~use_gold[b][real[b]]).all())
                    for b in range(len(real))]
            assert all(rows)  # a sentence is all gold or all predicted
            per_row = [bool(use_gold[b][real[b]].all()) for b in range(len(real))]
            if unit == "batch":
                assert len(set(per_row)) == 1
            kinds.add(tuple(per_row))
    assert len(kinds) > 1  # the draw is random
    assert bool(use_gold[~real].all())  # BOS and PAD always gold


def test_cached_oracles_are_reused_until_refresh(monkeypatch):
    strategy = _oracle_strategy(oracle_refresh=5)
    searched = []
    search = strategy.search
    monkeypatch.setattr(strategy, "search",
                        lambda m, b: searched.append(b.index.tolist()) or search(m, b))
    model, batch = _model(), _batch(size=4)
    with torch.no_grad():
        first = strategy.oracle(model, batch)
        strategy._update = 4  # younger than 5 updates: reused
        assert torch.equal(strategy.oracle(model, batch), first)
        part = Batch(batch.src[2:], batch.tgt_in[2:], batch.tgt_out[2:], batch.index[2:])
        strategy._update = 5  # rows 2, 3 are 5 updates old: searched again
        strategy.oracle(model, part)
    assert searched == [[0, 1, 2, 3], [2, 3]]
    stats = strategy.stats()
    assert stats["oracle_searched"] == pytest.approx(6 / 10)
    state = strategy.state_dict()
    restored = _oracle_strategy(oracle_refresh=5)
    restored.load_state_dict(json_roundtrip(state))
    restored._update = strategy._update = 4  # every row younger than 5 updates
    with torch.no_grad():
        assert torch.equal(restored.oracle(model, batch), strategy.oracle(model, batch))
    assert restored.stats()["oracle_searched"] == 0.0


def json_roundtrip(obj):
    import json

    return json.loads(json.dumps(obj))


@pytest.mark.parametrize("alpha", [1.0, 2.5])
def test_soft_input_under_bf16_autocast_matches_the_float32_softmax(alpha):
    """The soft input's softmax runs in the logits' dtype (bf16 under autocast) without an fp32
    copy; its weights are what the bf16 matmul got from an fp32 softmax, to bf16 rounding."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, 40, generator=g) * 3).to(torch.bfloat16)
    table = torch.randn(40, 8, generator=g)
    cfg = StrategyConfig(name="scheduled_sampling", predicted="soft", alpha=alpha)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = PREDICTED["soft"](logits, table, cfg)
    want = (alpha * logits.float()).softmax(-1) @ table
    assert got.shape == (6, 8)
    torch.testing.assert_close(got.float(), want, rtol=0.02, atol=0.02)
    # without autocast (fp32 training) the weights take the table's dtype
    got32 = PREDICTED["soft"](logits.float(), table, cfg)
    torch.testing.assert_close(got32, want, rtol=1e-5, atol=1e-5)


def test_first_pass_shares_the_cross_attention_kv_and_changes_nothing():
    """The criterion computes the memory's cross-attention K/V once (``cross_cache``); the first
    pass and the second reuse them. Loss and gradients equal the unshared computation (each
    pass projecting memory itself), dropout on, same seed."""
    import gapless.layers as gm
    from gapless.training import label_smoothed_nll

    model, batch = _model(dropout=0.1), _batch()
    strategy = _strategy(p=0.5, predicted="argmax")
    calls = []
    original = gm.Attention.memory_kv

    def counting(self, memory):
        calls.append(1)
        return original(self, memory)

    gm.Attention.memory_kv = counting
    try:
        shared = _loss_and_grads(model, strategy, batch)
    finally:
        gm.Attention.memory_kv = original
    assert len(calls) == model.cfg.dec_layers  # once per layer, not once per pass

    torch.manual_seed(5)  # the unshared reference, by hand
    model.zero_grad()
    memory, src_mask = model.encode(batch.src)
    inputs = strategy.decoder_inputs(model, batch, memory, src_mask, AT)  # no cross: own K/V
    mask = batch.tgt_out.ne(PAD)
    hidden = model.decode_hidden(inputs, memory, src_mask, mask)
    loss, nll = label_smoothed_nll(model.project(hidden[mask]), batch.tgt_out[mask], 0.1)
    loss.backward()
    unshared = (loss.detach(), nll, [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(shared[0], unshared[0])
    for a, b in zip(shared[2], unshared[2]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_categorical_sample_draws_the_reference_inverse_cdf(temperature):
    """bf16 logits: the same draws as the plain float32 inverse CDF with the same uniforms."""
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(50, 30, generator=g) * 2).to(torch.bfloat16)
    for x in (logits, logits.float()):  # the caller's logits are never scaled in place
        before = x.clone()
        categorical_sample(x, temperature)
        assert torch.equal(x, before)
    torch.manual_seed(11)
    got = categorical_sample(logits, temperature)
    torch.manual_seed(11)
    cdf = (logits.float() / temperature).softmax(-1).cumsum(-1)
    u = torch.rand(50, 1) * cdf[:, -1:]
    want = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max(29)
    assert torch.equal(got, want)


def test_fed_positions_list_the_replaced_slots_predictors_in_order():
    replace = torch.tensor([[False, True, False, True, True],
                            [False, False, False, False, False],
                            [False, False, True, False, False]])
    rows, valid = fed_positions(replace)
    assert rows.tolist() == [[0, 2, 3], [0, 0, 0], [1, 0, 0]]
    assert valid.tolist() == [[True, True, True], [False, False, False], [True, False, False]]
    hidden = torch.arange(3 * 5).view(3, 5, 1).float()  # position id as the state
    read = hidden.gather(1, rows[..., None])
    assert torch.equal(read[valid], hidden[:, :-1][replace[:, 1:]])
    none_rows, none_valid = fed_positions(torch.zeros(2, 4, dtype=torch.bool))
    assert none_rows.shape == none_valid.shape == (2, 0)


def test_soft_costs_two_table_products_more_than_argmax():
    """With the same mask, the soft input's extra arithmetic over argmax is the expected
    embedding [N,V] x [V,D] forward and the table's gradient through it backward: 4 N V D
    FLOPs (the floor behind its step ratio in ``benchmarks/strategy_speed.py``)."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = _batch()
    flops, replaced = {}, {}
    for kind in ("argmax", "soft"):
        model, strategy = _model(), _strategy(predicted=kind)
        counter = FlopCounterMode(display=False)
        torch.manual_seed(5)
        with counter:
            Criterion(model, strategy, 0.1)(batch, AT)[0].backward()
        flops[kind] = counter.get_total_flops()
        replaced[kind] = round(strategy.stats()["replaced"] * int(_replaceable(batch).sum()))
    assert replaced["argmax"] == replaced["soft"] > 0
    assert flops["soft"] - flops["argmax"] == 4 * replaced["soft"] * V * model.cfg.d_model
