"""gapless.strategies: two-pass scheduled sampling, the oracles, minimum risk training and
confidence-aware scheduled sampling (methods.md 3-5).

Properties, not golden tensors: p = 1 is teacher forcing exactly; p = 0 feeds the shifted
first-pass predictions; BOS and PAD slots stay gold; a one-hot soft input is the gold token;
tau changes the sample's entropy; every strategy overfits one batch; training logs the stats;
MRT's risk is the hand-computed expectation and its gradient favours the better candidate;
CASS routes each slot by its scripted confidence.
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
from gapless.data import BOS, EOS, PAD, UNK, Batch, pad_sequences
from gapless.metrics import sentence_bleu
from gapless.model import Transformer
from gapless.strategies import (
    PREDICTED,
    STRATEGIES,
    Progress,
    TeacherForcing,
    build_strategy,
    candidate_log_probs,
    categorical_sample,
    expected_risk,
    fed_positions,
    first_occurrences,
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
                {"strategy.name": "scheduled_sampling", "strategy.sigmoid_k": 0.5},
                {"strategy.name": "minimum_risk", "strategy.mle_weight": 0.5},
                {"strategy.mrt_alpha": 0}, {"strategy.cass_high": 1.5}):
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
    import gapless.strategies.oracle as strategies_mod
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


# ----------------------------------------------------------------------------------------------
# minimum risk training (Shen et al. 2016) and confidence-aware scheduled sampling (Liu et al.
# 2021): the settings that reduce each to teacher forcing


DEGENERATE = [("minimum_risk", {"mrt_weight": 0.0}), ("confidence_aware", {"cass_low": 1.0}),
              ("confidence_aware", {"cass_low": 1.0, "predicted": "soft"})]


@pytest.mark.parametrize("name,kw", DEGENERATE, ids=["mrt_w0", "cass_argmax", "cass_soft"])
def test_degenerate_settings_give_the_teacher_forcing_step_exactly(name, kw, monkeypatch):
    """mrt_weight 0 samples nothing; cass_low 1 sends every slot to gold and skips the first
    pass: loss, NLL and every gradient equal teacher forcing's, dropout on, same seed."""
    model, batch = _model(dropout=0.1), _batch()
    ref = _loss_and_grads(model, TeacherForcing(StrategyConfig()), batch)
    strategy = build_strategy(StrategyConfig(name=name, **kw))
    if name == "minimum_risk":
        monkeypatch.setattr(strategy, "candidates", lambda *a: pytest.fail("sampled"))
    _assert_same(_loss_and_grads(model, strategy, batch), ref)


@pytest.mark.parametrize("predicted", ["argmax", "soft"])
def test_cass_with_every_slot_gold_through_the_first_pass_is_teacher_forcing(predicted):
    """The routing path itself (no shortcut): the first pass runs, every slot goes to gold."""
    model, batch = _model(), _batch()
    ref = _loss_and_grads(model, TeacherForcing(StrategyConfig()), batch)
    strategy = build_strategy(StrategyConfig(name="confidence_aware", cass_low=1.0,
                                             predicted=predicted))
    strategy.decoder_inputs = lambda m, b, mem, sm, progress, cross=None: (
        strategy.confident_inputs(m, b, mem, sm, cross))
    _assert_same(_loss_and_grads(model, strategy, batch), ref)
    stats = strategy.stats()
    assert stats["p_gold"] == 1.0 and stats["replaced"] == 0.0 and stats["random_fed"] == 0.0


def test_cass_mle_weight_adds_the_first_pass_loss():
    """All gold with mle_weight (the published recipe's first-pass loss): dropout off, the first
    pass is the teacher-forced pass, so the loss is (1 + w) x teacher forcing's."""
    model, batch = _model(), _batch()
    ref_loss, ref_nll, _ = _loss_and_grads(model, TeacherForcing(StrategyConfig()), batch)
    strategy = build_strategy(StrategyConfig(name="confidence_aware", cass_low=1.0,
                                             mle_weight=1.0))
    loss, nll, _ = _loss_and_grads(model, strategy, batch)
    torch.testing.assert_close(loss, 2.0 * ref_loss)
    assert torch.equal(nll, ref_nll)


# ----------------------------------------------------------------------------------------------
# minimum risk training


def test_expected_risk_is_the_hand_computed_expectation():
    """Two candidates, log p = -1 and -3, BLEU 1.0 and 0.2, alpha 0.5: Q = softmax(0.5 log p)
    = (1 / (1 + e^-1), e^-1 / (1 + e^-1)), risk = Q2 * (1 - 0.2). A duplicate of the second
    candidate (keep False) changes nothing."""
    log_p = torch.tensor([[-1.0, -3.0]])
    bleu = torch.tensor([[1.0, 0.2]])
    q2 = math.exp(-1) / (1 + math.exp(-1))
    risk = expected_risk(log_p, bleu, 0.5)
    torch.testing.assert_close(risk, torch.tensor([q2 * 0.8]))
    with_dup = expected_risk(torch.tensor([[-1.0, -3.0, -3.0]]), torch.tensor([[1.0, 0.2, 0.2]]),
                             0.5, keep=torch.tensor([[True, True, False]]))
    torch.testing.assert_close(with_dup, risk)
    cand = torch.tensor([[[5, 6, 0], [7, 0, 0], [5, 6, 0], [7, 0, 0]]])
    assert first_occurrences(cand).tolist() == [[True, True, False, False]]


def test_risk_gradient_favours_the_higher_bleu_candidate():
    """d risk / d log p(c) = alpha Q(c) (Delta(c) - risk): negative for the better candidate,
    positive for the worse, so a descent step moves probability to the higher BLEU."""
    log_p = torch.tensor([[-2.0, -2.5, -1.0]], requires_grad=True)
    bleu = torch.tensor([[0.9, 0.4, 0.1]])
    expected_risk(log_p, bleu, 0.7).sum().backward()
    grad = log_p.grad[0]
    assert grad[0] < 0 < grad[2]
    q = (0.7 * log_p.detach()).softmax(-1)[0]
    risk = float((q * (1 - bleu[0])).sum())
    torch.testing.assert_close(grad, 0.7 * q * (1 - bleu[0] - risk))


def test_alpha_sharpens_the_candidate_distribution():
    """alpha -> 0: Q uniform (the risk is the mean of 1 - BLEU); larger alpha: a sharper Q, the
    risk moves to the most probable candidate's (here the worst)."""
    log_p = torch.tensor([[-1.0, -4.0, -9.0]])
    bleu = torch.tensor([[0.2, 0.5, 0.9]])
    entropies, risks = [], []
    for alpha in (1e-6, 0.005, 0.5, 5.0):
        q = (alpha * log_p).softmax(-1)
        entropies.append(float(-(q * q.log()).sum()))
        risks.append(float(expected_risk(log_p, bleu, alpha)))
    assert entropies == sorted(entropies, reverse=True) and len(set(entropies)) == 4
    assert risks[0] == pytest.approx(float((1 - bleu).mean()), abs=1e-5)
    assert risks == sorted(risks) and risks[-1] == pytest.approx(0.8, abs=1e-6)


def test_candidate_log_probs_are_the_teacher_forced_sums():
    """A candidate equal to its reference scores the reference's teacher-forced log-likelihood
    (EOS included), whatever the other candidates' lengths; dropout off."""
    model, batch = _model(), _batch(size=3)
    refs = batch.tgt_in[:, 1:]
    short = refs.clone()
    short[:, 1:] = PAD  # a one-token candidate
    cand = torch.stack([short, refs], 1)  # [B,2,L]
    memory, src_mask = model.encode(batch.src)
    with torch.no_grad():
        got = candidate_log_probs(model, cand, memory, src_mask, model.cross_cache(memory))
        lp = torch.log_softmax(model.decode(batch.tgt_in, memory, src_mask).float(), -1)
        mask = batch.tgt_out.ne(PAD)
        want = (lp.gather(-1, batch.tgt_out[..., None]).squeeze(-1) * mask).sum(1)
        one = lp[:, 0].gather(-1, refs[:, :1]).squeeze(-1)
        eos = torch.log_softmax(model.decode(torch.stack([batch.tgt_in[:, 0], refs[:, 0]], 1),
                                             memory, src_mask).float(), -1)[:, 1, EOS]
    torch.testing.assert_close(got[:, 1], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[:, 0], one + eos, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # a source without padding: encode may give no source mask
        unpadded, _ = model.encode(batch.src[-1:])
        assert torch.equal(candidate_log_probs(model, cand[-1:], unpadded, None),
                           candidate_log_probs(model, cand[-1:], unpadded, src_mask[-1:]))


def _mrt(monkeypatch, batch, **kw):
    """A minimum_risk strategy whose candidates are scripted: per sentence the reference and a
    sentence of UNK of the same length (BLEU 1 and 0)."""
    strategy = build_strategy(StrategyConfig(name="minimum_risk", **kw))
    refs = batch.tgt_in[:, 1:]
    bad = torch.where(refs.ne(PAD), torch.full_like(refs, UNK), refs)
    monkeypatch.setattr(strategy, "candidates", lambda model, b: torch.stack([refs, bad], 1))
    return strategy


def test_mrt_loss_interpolates_the_token_loss_and_the_scripted_risk(monkeypatch):
    """loss = (1 - w) x the token-level loss + w x mean risk x target tokens, the risk by hand
    from the candidates' log-probs and BLEU (1 and 0); the logging output carries it."""
    model, batch = _model(), _batch(size=4)
    ref_loss, ref_nll, _ = _loss_and_grads(model, TeacherForcing(StrategyConfig()), batch)
    strategy = _mrt(monkeypatch, batch, mrt_weight=0.3, mrt_alpha=0.5)
    loss, _, logging = Criterion(model, strategy, 0.1)(batch, AT)
    cand = strategy.candidates(model, batch)
    B, M, L = cand.shape
    bleu = sentence_bleu(cand.view(B * M, L), batch.tgt_in[:, 1:].repeat_interleave(M, 0))
    assert bleu.view(B, M).tolist() == [[1.0, 0.0]] * B
    with torch.no_grad():
        memory, src_mask = model.encode(batch.src)
        q = (0.5 * candidate_log_probs(model, cand, memory, src_mask)).softmax(-1)
    risk = q[:, 1]  # only the UNK candidate has a risk (1 - 0)
    tokens = int(batch.tgt_out.ne(PAD).sum())
    torch.testing.assert_close(loss.detach(), 0.7 * ref_loss + 0.3 * risk.mean() * tokens)
    assert torch.equal(logging["nll"], ref_nll)
    torch.testing.assert_close(logging["mrt_risk"], risk.sum())
    stats = strategy.stats()
    assert stats["mrt_risk"] == pytest.approx(float(risk.mean()), abs=1e-4)
    assert stats["mrt_bleu"] == 0.5 and stats["mrt_unique"] == 1.0


def test_mrt_step_moves_probability_to_the_higher_bleu_candidate(monkeypatch):
    """MRT alone (w = 1): a few descent steps raise log p(reference) - log p(UNK sentence)."""
    model, batch = _model(), _batch(size=4)
    strategy = _mrt(monkeypatch, batch, mrt_weight=1.0, mrt_alpha=1.0)
    cand = strategy.candidates(model, batch)

    def margin():
        with torch.no_grad():
            memory, src_mask = model.encode(batch.src)
            lp = candidate_log_probs(model, cand, memory, src_mask)
        return float((lp[:, 0] - lp[:, 1]).mean())

    before = margin()
    criterion = Criterion(model, strategy, 0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        criterion(batch, AT)[0].backward()
        optimizer.step()
    assert margin() > before + 0.1


def test_mrt_samples_candidates_within_the_length_limits():
    """Ancestral samples in eval mode (mode restored): N per sentence, no BOS / EOS / PAD
    inside, at most a x (source tokens + EOS) + b tokens; the reference joins with
    mrt_reference (its copies count once)."""
    model, batch = _model(dropout=0.1), _batch(size=3)
    strategy = build_strategy(StrategyConfig(name="minimum_risk", mrt_samples=5,
                                             mrt_max_len_a=0.5, mrt_max_len_b=1))
    torch.manual_seed(0)
    cand = strategy.candidates(model.train(), batch)
    assert model.training and cand.shape[:2] == (3, 5)
    lengths = cand.ne(PAD).sum(-1)  # [B,N]
    limit = (0.5 * batch.src.ne(PAD).sum(1) + 1).long()
    assert bool((lengths >= 1).all()) and bool((lengths <= limit[:, None]).all())
    real = cand[cand.ne(PAD)]
    assert not bool((real.eq(BOS) | real.eq(EOS)).any())
    assert bool((cand.ne(PAD).long().diff(dim=-1) <= 0).all())  # right-padded
    ref = build_strategy(StrategyConfig(name="minimum_risk", mrt_samples=3, mrt_reference=True,
                                        mrt_alpha=1.0))
    refs = batch.tgt_in[:, 1:]
    ref.candidates = lambda m, b: refs[:, None].expand(-1, 3, -1)  # every sample = reference
    extra = ref.extra_loss(model, batch, *model.encode(batch.src))
    assert float(extra.term.detach()) == 0.0 and extra.token_weight == 0.0  # BLEU 1: no risk
    assert ref.stats() == {"mrt_risk": 0.0, "mrt_bleu": 1.0, "mrt_unique": round(1 / 3, 4)}


# ----------------------------------------------------------------------------------------------
# confidence-aware scheduled sampling


def _scripted_confidences(batch: Batch, levels=(0.1, 0.4, 0.95)):
    """First-pass logits [B,T,V] under which slot t's confidence p(y_t) at position t-1 is
    levels[t % 3]; the rest of the mass goes mostly to an 'alternative' token (the argmax at
    level 0.1 and 0.4), the remainder spread evenly."""
    B, T = batch.tgt_in.shape
    gold = batch.tgt_in[:, 1:]  # y_t, predicted at position t-1
    alt = (gold - 4 + 1) % (V - 4) + 4  # != gold, never special
    level = torch.tensor([levels[t % 3] for t in range(1, T)]).expand(B, -1)
    other = torch.where(level < 0.5, 0.95 - level, 0.04)
    probs = ((1 - level - other) / (V - 2))[..., None].repeat(1, 1, V)
    probs.scatter_(-1, gold[..., None], level[..., None])
    probs.scatter_(-1, alt[..., None], other[..., None])
    logits = torch.cat([probs.log(), torch.zeros(B, 1, V)], dim=1)  # the last position unused
    return logits, level, alt


@pytest.mark.parametrize("random", [True, False])
def test_cass_routes_each_slot_by_its_confidence(random, monkeypatch):
    """Thresholds 0.3 / 0.7: confidence 0.1 -> gold, 0.4 -> the prediction of position t-1,
    0.95 -> a token of the same sentence (cass_random) or the prediction (then the gold token,
    the argmax there). BOS and PAD slots stay gold."""
    model, batch = _model(), _batch()
    logits, level, alt = _scripted_confidences(batch)
    monkeypatch.setattr(model, "project", lambda hidden: logits)
    strategy = build_strategy(StrategyConfig(name="confidence_aware", cass_low=0.3,
                                             cass_high=0.7, cass_random=random))
    tgt_in, real = batch.tgt_in, _replaceable(batch)
    seen = set()
    with torch.no_grad():
        for seed in range(5):
            torch.manual_seed(seed)
            inputs = _inputs(model, batch, strategy)
            slots = inputs[:, 1:]
            low, mid, high = ((level == x) & real[:, 1:] for x in (0.1, 0.4, 0.95))
            assert torch.equal(slots[low], tgt_in[:, 1:][low])
            assert torch.equal(slots[mid], alt[mid])
            if random:
                for b, t in high.nonzero().tolist():
                    own = set(tgt_in[b, 1:][tgt_in[b, 1:].ne(PAD)].tolist())
                    assert slots[b, t].item() in own
                    seen.add((b, t, slots[b, t].item()))
            else:
                assert torch.equal(slots[high], tgt_in[:, 1:][high])
            assert torch.equal(inputs[~real], tgt_in[~real])
    stats = strategy.stats()
    n_high, n_real = int(high.sum()), int(real.sum())
    assert stats["random_fed"] == pytest.approx(n_high / n_real if random else 0.0, abs=1e-4)
    assert stats["p_gold"] == pytest.approx(int(low.sum()) / n_real, abs=1e-4)
    assert stats["gold_confidence"] == pytest.approx(float(level[real[:, 1:]].mean()), abs=1e-4)
    if random:
        assert len(seen) > n_high  # the noisy tokens are drawn anew


def test_cass_confidence_is_the_first_pass_probability_of_the_gold_token():
    """c[:, t] = softmax(first pass at position t-1)[y_t]; slot 0 (BOS) gets 0."""
    model, batch = _model(), _batch()
    strategy = build_strategy(StrategyConfig(name="confidence_aware"))
    with torch.no_grad():
        memory, src_mask = model.encode(batch.src)
        conf, logits1 = strategy.confidence(model, batch, memory, src_mask)
        probs = model.decode(batch.tgt_in, memory, src_mask).float().softmax(-1)
    want = probs[:, :-1].gather(-1, batch.tgt_in[:, 1:, None]).squeeze(-1)
    assert bool((conf[:, 0] == 0).all()) and logits1.shape == (*batch.tgt_in.shape, V)
    torch.testing.assert_close(conf[:, 1:], want)


@pytest.mark.parametrize("name,kw", [
    ("minimum_risk", {"mrt_weight": 0.5, "mrt_samples": 2}),
    ("confidence_aware", {"cass_low": 0.2, "cass_high": 0.9}),
], ids=["mrt", "cass"])
def test_mrt_and_cass_overfit_one_batch(name, kw):
    """Trained on one batch, the model learns it: its teacher-forced NLL falls (CASS's own
    second-pass NLL oscillates on a tiny model: confident slots get noisy inputs)."""
    model, batch = _model(), _batch()
    teacher = Criterion(model, TeacherForcing(StrategyConfig()), 0.0)
    with torch.no_grad():
        before = float(teacher(batch, AT)[2]["nll"])
    strategy = build_strategy(StrategyConfig(name=name, **kw))
    criterion = Criterion(model, strategy, 0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    stats = []
    for _ in range(40):
        loss = criterion(batch, AT)[0]
        optimizer.zero_grad()
        (loss / batch.n_tokens).backward()
        optimizer.step()
        stats.append(strategy.stats())
    with torch.no_grad():
        after = float(teacher(batch, AT)[2]["nll"])
    assert after < 0.25 * before, (before, after)
    if name == "minimum_risk":  # the samples approach the references
        assert stats[-1]["mrt_risk"] < 0.6 * stats[0]["mrt_risk"]
    else:  # confident slots are fed predictions and random tokens
        assert stats[-1]["replaced"] > 0.3 and stats[-1]["random_fed"] > 0


@pytest.mark.parametrize("name,keys", [
    ("minimum_risk", {"mrt_risk", "mrt_bleu", "mrt_unique"}),
    ("confidence_aware", {"p_gold", "replaced", "random_fed", "gold_confidence"}),
], ids=["mrt", "cass"])
def test_train_end_to_end_logs_mrt_and_cass_stats(name, keys, tiny_corpus, tmp_path):
    """`gapless train configs/tiny.yaml --strategy.name NAME` in-process: the interval records
    carry the strategy's figures and its share of the step time."""
    overrides = [
        "--data.corpus", str(tiny_corpus), "--train.device", "cpu", "--train.dtype", "fp32",
        "--train.threads", "1", "--train.max_updates", "4", "--train.log_every", "2",
        "--train.valid_every", "4", "--train.save_every", "4",
        "--train.valid_max_sentences", "4", "--decode.beam", "1", "--strategy.name", name,
        "--strategy.mrt_samples", "2", "--strategy.mrt_weight", "0.5",
    ]
    state = train(config_mod.load(TINY, overrides), tmp_path / "run")
    assert state.update == 4
    records = [r for r in RunDir(tmp_path / "run").read_log() if r["kind"] == "train"]
    assert [r["update"] for r in records] == [2, 4]
    for r in records:
        assert keys <= r.keys() and r["strategy_s_per_update"] > 0
        assert math.isfinite(r["loss"])
    if name == "minimum_risk":
        assert all(0.0 <= r["mrt_risk"] <= 1.0 for r in records)


# ----------------------------------------------------------------------------------------------
# signatures: equal ones train identically


def test_equal_signatures_mean_the_same_loss_and_gradients():
    """The word oracle on scheduled sampling's schedule is scheduled sampling's sample input:
    equal signatures, and the same loss and gradients from the same seed."""
    from gapless.strategies import same_computation

    ss = StrategyConfig(name="scheduled_sampling", predicted="sample",
                        schedule="inverse_sigmoid", half_at=4)
    oracle = StrategyConfig(name="word_oracle", schedule="inverse_sigmoid", half_at=4)
    assert build_strategy(ss).signature() == build_strategy(oracle).signature()
    model, batch = _model(), _batch()
    _assert_same(_loss_and_grads(model, build_strategy(ss), batch),
                 _loss_and_grads(model, build_strategy(oracle), batch))
    hotter = StrategyConfig(name="word_oracle", schedule="inverse_sigmoid", half_at=4,
                            temperature=0.5)
    own_schedule = StrategyConfig(name="word_oracle")  # OR-NMT's decay per epoch
    argmax = StrategyConfig(name="scheduled_sampling", schedule="inverse_sigmoid", half_at=4)
    configs = {"ss": ss, "oracle": oracle, "hotter": hotter, "own": own_schedule,
               "argmax": argmax, "sentence": StrategyConfig(name="sentence_oracle"),
               "tf": StrategyConfig(name="teacher_forcing")}
    assert same_computation(configs) == [["ss", "oracle"]]
    assert build_strategy(own_schedule).signature()["schedule_unit"] == "epoch"
