"""Search tests: beam search against hand-computed results on scripted probability tables
(fairseq's idea), beam 1 == greedy on a real model, batched == alone, and the sampler."""

from __future__ import annotations

import math

import pytest
import torch

from gapless.config import ModelConfig
from gapless.data import BOS, EOS, PAD
from gapless.decode import (
    Limits,
    ModelStepper,
    beam_search,
    bucket,
    greedy_search,
    make_sampler,
    pad_source,
    row_argmax,
    row_topk,
)
from gapless.model import Transformer

# token names for the scripted tables (PAD 0, UNK 1, BOS 2, EOS 3 are fixed)
E, A, B, C, D = EOS, 4, 5, 6, 7
V = 8


class TableStepper:
    """A Stepper whose next-token distribution is read from a table keyed by the prefix.

    ``tables[s]`` maps a prefix (tuple of tokens after BOS) to {token: probability}; tokens not
    listed have probability 0. Rows start sentence-major (row = sentence * repeat + beam) and
    each row keeps its own prefix, so a wrong ``reorder`` gives wrong distributions.
    """

    def __init__(self, tables: list[dict], repeat: int = 1):
        self.tables = tables
        self.sent = [s for s in range(len(tables)) for _ in range(repeat)]
        self.prefix: list[list[int]] = [[] for _ in self.sent]
        self.started = False
        self.rows_per_step: list[int] = []
        self.queries: list[tuple[int, tuple[int, ...]]] = []

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        assert tokens.shape == (len(self.sent),), "stepper and search disagree on the rows"
        if not self.started:
            assert bool((tokens == BOS).all()), "the first step must feed BOS"
            self.started = True
        else:
            for row, tok in enumerate(tokens.tolist()):
                self.prefix[row].append(tok)
        self.rows_per_step.append(len(self.sent))
        lp = torch.full((len(self.sent), V), -math.inf)
        for row, (s, prefix) in enumerate(zip(self.sent, self.prefix)):
            self.queries.append((s, tuple(prefix)))
            dist = self.tables[s].get(tuple(prefix), {E: 1.0})
            for tok, p in dist.items():
                lp[row, tok] = math.log(p)
        return lp

    def reorder(self, index: torch.Tensor, rows_changed_sentence: bool) -> None:
        index = index.tolist()
        new_sent = [self.sent[i] for i in index]
        if not rows_changed_sentence:  # the protocol: beams only move within their sentence
            assert new_sent == self.sent, "rows moved across sentences without saying so"
        self.sent = new_sent
        self.prefix = [list(self.prefix[i]) for i in index]


def run_beam(tables, beam, max_len=10, **kw):
    stepper = TableStepper(tables, repeat=beam)
    limits = Limits.of(len(tables), max_len, kw.pop("min_len", 1))
    return beam_search(stepper, limits, beam, **kw), stepper


def run_greedy(tables, max_len=10, **kw):
    stepper = TableStepper(tables)
    limits = Limits.of(len(tables), max_len, kw.pop("min_len", 1))
    return greedy_search(stepper, limits, **kw), stepper


def L(*probs: float) -> float:  # log of a product of probabilities
    return sum(math.log(p) for p in probs)


def check(hyp, tokens, log_prob, n_norm, len_penalty=1.0):
    assert hyp.tokens == tokens
    assert hyp.log_prob == pytest.approx(log_prob, rel=1e-6, abs=1e-6)
    assert hyp.score == pytest.approx(log_prob / n_norm**len_penalty, rel=1e-6, abs=1e-6)


# greedy takes A (0.5) and then EOS: 0.5 * 0.4 = 0.20; B then EOS is 0.4 * 0.9 = 0.36
GREEDY_TRAP = {
    (): {A: 0.5, B: 0.4, E: 0.1},
    (A,): {E: 0.4, A: 0.35, B: 0.25},
    (B,): {E: 0.9, A: 0.1},
    (A, A): {E: 1.0},
}


def test_greedy_follows_argmax_and_misses_better_sequence():
    (hyp,), _ = run_greedy([GREEDY_TRAP])
    check(hyp, [A], L(0.5, 0.4), 2)


def test_beam1_on_table_equals_greedy():
    (hyps,), _ = run_beam([GREEDY_TRAP], beam=1)
    assert len(hyps) == 1
    check(hyps[0], [A], L(0.5, 0.4), 2)


def test_beam2_finds_what_greedy_misses():
    # t=0: EOS (0.1) is ranked 3rd, outside the first K=2 -> not finalised; beams A, B.
    # t=1: B.E 0.36, A.E 0.20, A.A 0.175, A.B 0.125: both EOS in the top 2 -> 2 finished, stop.
    (hyps,), _ = run_beam([GREEDY_TRAP], beam=2, nbest=2)
    assert len(hyps) == 2
    check(hyps[0], [B], L(0.4, 0.9), 2)
    check(hyps[1], [A], L(0.5, 0.4), 2)
    (greedy,), _ = run_greedy([GREEDY_TRAP])
    assert hyps[0].score > greedy.score and hyps[0].tokens != greedy.tokens


def test_nbest_truncates_to_best():
    (hyps,), _ = run_beam([GREEDY_TRAP], beam=2, nbest=1)
    assert len(hyps) == 1
    check(hyps[0], [B], L(0.4, 0.9), 2)


# beam 3 with length normalisation and early stopping
TABLE3 = {
    (): {A: 0.6, B: 0.4},
    (A,): {A: 0.5, E: 0.3, B: 0.2},
    (B,): {E: 0.6, A: 0.4},
    (A, A): {E: 0.55, B: 0.45},
    (A, B): {E: 1.0},
    (B, A): {E: 1.0},
    (A, A, B): {E: 1.0},
}
# hand search, K=3 (same path for every len_penalty: normalisation only scores finished hyps):
# t=0: A .6, B .4 (third beam stays -inf)
# t=1: AA .30, BE .24, AE .18, BA .16, AB .12 -> finalise [B] .24 and [A] .18 (top 3);
#      continue AA, BA, AB
# t=2: AAE .165, BAE .16, AAB .135, ABE .12 -> finalise [A,A] .165 -> 3 finished: stop, and the
#      equally top-3 BAE is NOT added (sentence already has K finished: early stopping)
FIN3 = {(B,): L(0.4, 0.6), (A,): L(0.6, 0.3), (A, A): L(0.6, 0.5, 0.55)}


@pytest.mark.parametrize(
    "len_penalty, order",
    [
        (1.0, [(A, A), (B,), (A,)]),  # -0.601, -0.714, -0.857
        (0.0, [(B,), (A,), (A, A)]),  # raw: -1.427, -1.715, -1.802
        (2.0, [(A, A), (B,), (A,)]),  # -0.200, -0.357, -0.429
    ],
)
def test_beam3_length_penalty_and_nbest_order(len_penalty, order):
    (hyps,), stepper = run_beam([TABLE3], beam=3, nbest=3, len_penalty=len_penalty)
    assert [tuple(h.tokens) for h in hyps] == order
    for h in hyps:
        check(h, list(h.tokens), FIN3[tuple(h.tokens)], len(h.tokens) + 1, len_penalty)
    assert (B, A) not in [tuple(h.tokens) for h in hyps]  # early stopping
    assert len(stepper.rows_per_step) == 3  # stopped after step t=2


def test_beam3_nbest2_keeps_the_two_best():
    (hyps,), _ = run_beam([TABLE3], beam=3, nbest=2, len_penalty=1.0)
    assert [tuple(h.tokens) for h in hyps] == [(A, A), (B,)]


# EOS is the most likely first token; min_len forbids it
MIN_TABLE = {
    (): {E: 0.5, A: 0.3, B: 0.2},
    (A,): {E: 0.6, C: 0.4},
    (B,): {E: 0.7, C: 0.3},
    (A, C): {E: 0.8, D: 0.2},
    (B, C): {E: 0.9, D: 0.1},
}


def test_min_len_zero_allows_empty_hypothesis():
    (hyp,), _ = run_greedy([MIN_TABLE], min_len=0)
    check(hyp, [], L(0.5), 1)
    (hyps,), _ = run_beam([MIN_TABLE], beam=2, nbest=2, min_len=0)
    # t=0: E .5, A .3 in top 2 -> finalise [] ; continue A, B
    # t=1: AE .18, BE .14, AC .12, BC .06 -> finalise [A]: 2 finished
    check(hyps[0], [], L(0.5), 1)
    check(hyps[1], [A], L(0.3, 0.6), 2)


@pytest.mark.parametrize("min_len", [1, 2])
def test_min_len_forbids_early_eos(min_len):
    (hyp,), _ = run_greedy([MIN_TABLE], min_len=min_len)
    if min_len == 1:
        check(hyp, [A], L(0.3, 0.6), 2)
    else:
        check(hyp, [A, C], L(0.3, 0.4, 0.8), 3)
    (hyps,), _ = run_beam([MIN_TABLE], beam=2, nbest=2, min_len=min_len)
    if min_len == 1:
        # t=1: AE .18, BE .14 -> both finished
        check(hyps[0], [A], L(0.3, 0.6), 2)
        check(hyps[1], [B], L(0.2, 0.7), 2)
    else:
        # t=1: EOS forbidden: AC .12, BC .06; t=2: ACE .096, BCE .054 -> both finished
        check(hyps[0], [A, C], L(0.3, 0.4, 0.8), 3)
        check(hyps[1], [B, C], L(0.2, 0.3, 0.9), 3)
    for h in hyps:
        assert len(h.tokens) >= min_len


# EOS has probability 0 until the 4th token: max_len forces it (log-prob 0 when it was -inf)
LONG_TABLE = {
    (): {A: 0.7, B: 0.3},
    (A,): {A: 0.6, C: 0.4},
    (B,): {C: 1.0},
    (A, A): {D: 0.4, E: 0.6},
    (A, C): {D: 1.0},
    (B, C): {D: 1.0},
}


def test_max_len_forces_eos():
    (hyp,), _ = run_greedy([LONG_TABLE], max_len=1)
    check(hyp, [A], L(0.7), 2)  # EOS had p=0, forced with log-prob 0
    (hyp,), _ = run_greedy([LONG_TABLE], max_len=2)
    check(hyp, [A, A], L(0.7, 0.6, 0.6), 3)  # EOS is finite here: its own log-prob is kept
    (hyps,), _ = run_beam([LONG_TABLE], beam=2, nbest=2, max_len=1)
    check(hyps[0], [A], L(0.7), 2)
    check(hyps[1], [B], L(0.3), 2)
    for max_len in (0, 1, 2, 3):
        (hyps,), _ = run_beam([LONG_TABLE], beam=2, nbest=2, max_len=max_len, min_len=0)
        assert all(len(h.tokens) <= max_len for h in hyps)


def test_per_sentence_max_len_in_one_batch():
    tables = [LONG_TABLE, GREEDY_TRAP, TABLE3]
    max_len = torch.tensor([1, 5, 2])
    out, stepper = run_beam(tables, beam=2, nbest=2, max_len=max_len)
    # sentence 0, max_len 1: as alone
    check(out[0][0], [A], L(0.7), 2)
    check(out[0][1], [B], L(0.3), 2)
    # sentence 1: unconstrained result
    check(out[1][0], [B], L(0.4, 0.9), 2)
    check(out[1][1], [A], L(0.5, 0.4), 2)
    # sentence 2, K=2, max_len 2: t=1: AA .30, BE .24 -> [B]; continue AA, BA
    # t=2 (at max): only EOS: AAE .165, BAE .16 -> [A,A] finished second (2 finished)
    check(out[2][0], [A, A], L(0.6, 0.5, 0.55), 3)
    check(out[2][1], [B], L(0.4, 0.6), 2)
    # each sentence alone with its own max_len gives the same
    for s, table in enumerate(tables):
        (alone,), _ = run_beam([table], beam=2, nbest=2, max_len=int(max_len[s]))
        assert [(h.tokens, h.score) for h in alone] == [(h.tokens, h.score) for h in out[s]]
    # finished sentences were pruned from the stepper's rows
    assert stepper.rows_per_step[0] == 6 and stepper.rows_per_step[-1] < 6


def test_greedy_per_sentence_max_len():
    tables = [LONG_TABLE, LONG_TABLE, MIN_TABLE]
    out, stepper = run_greedy(tables, max_len=torch.tensor([1, 3, 4]))
    check(out[0], [A], L(0.7), 2)
    check(out[1], [A, A], L(0.7, 0.6, 0.6), 3)
    check(out[2], [A], L(0.3, 0.6), 2)
    assert stepper.rows_per_step == [3, 3, 1]  # the ended sentences were pruned


def test_batched_table_beam_equals_alone():
    tables = [TABLE3, MIN_TABLE, GREEDY_TRAP, LONG_TABLE]
    for beam in (1, 2, 3):
        out, _ = run_beam(tables, beam=beam, nbest=beam, max_len=4)
        for s, table in enumerate(tables):
            (alone,), _ = run_beam([table], beam=beam, nbest=beam, max_len=4)
            assert [(h.tokens, h.score, h.log_prob) for h in alone] == [
                (h.tokens, h.score, h.log_prob) for h in out[s]
            ]


def test_step_hook_sees_every_step_and_can_change_result():
    calls = []

    def ban_b(lp, t):
        calls.append(t)
        lp = lp.clone()
        lp[:, B] = -math.inf
        return lp

    (hyps,), _ = run_beam([GREEDY_TRAP], beam=2, nbest=2, step_hook=ban_b)
    assert calls == sorted(calls) and calls[0] == 0
    # t=0: only A (EOS below min_len, B banned); t=1: AE .2, AA .175 -> [A]; t=2: AAE .175
    assert all(B not in h.tokens for h in hyps)
    check(hyps[0], [A, A], L(0.5, 0.35, 1.0), 3)
    check(hyps[1], [A], L(0.5, 0.4), 2)


# ---------------------------------------------------------------------------------------------
# on a real (random, untrained) Transformer


def tiny_model(seed=0, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = {
        "d_model": 32,
        "n_heads": 2,
        "ffn_dim": 64,
        "enc_layers": 1,
        "dec_layers": 2,
        "dropout": 0.0,
        "vocab_size": 24,
        "max_positions": 64,
    }
    cfg.update(kw)
    return Transformer(ModelConfig(**cfg)).eval()


def padded_src(lengths, vocab=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), max(lengths)), PAD)
    for i, n in enumerate(lengths):
        src[i, : n - 1] = torch.randint(4, vocab, (n - 1,), generator=g)
        src[i, n - 1] = EOS
    return src


def eos_boost(lp, t):  # makes EOS plausible in an untrained model so lengths vary
    lp = lp.clone()
    lp[:, EOS] += 0.7 * t
    return lp


def test_beam1_equals_greedy_on_model():
    model = tiny_model()
    src = padded_src([5, 3, 7, 2, 6])
    max_len = torch.tensor([6, 3, 8, 1, 5])
    greedy = greedy_search(ModelStepper(model, src), Limits.of(5, max_len), step_hook=eos_boost)
    beam = beam_search(ModelStepper(model, src, repeat=1), Limits.of(5, max_len), 1,
                       step_hook=eos_boost)
    lengths = set()
    for g, (b,) in zip(greedy, beam):
        assert b.tokens == g.tokens
        assert b.log_prob == pytest.approx(g.log_prob, abs=1e-4)
        assert b.score == pytest.approx(g.score, abs=1e-4)
        lengths.add(len(g.tokens))
    assert len(lengths) > 1  # the batch really had sentences ending at different steps


def _rescore(model, src_row, tokens):
    """Teacher-forced log-prob of tokens + EOS (uncached)."""
    tgt_in = torch.tensor([[BOS] + tokens])
    tgt_out = torch.tensor(tokens + [EOS])
    with torch.no_grad():
        lp = model(src_row[None], tgt_in)[0].log_softmax(-1)
    return float(lp.gather(1, tgt_out[:, None]).sum())


def test_model_beam_scores_match_teacher_forced_rescoring():
    model = tiny_model(seed=3)
    src = padded_src([4, 6, 3], seed=4)
    src_alone = [src[i, : int(src[i].ne(PAD).sum())] for i in range(3)]
    out = beam_search(ModelStepper(model, src, repeat=3), Limits.of(3, 6), 3, nbest=3)
    for s in range(3):
        assert len(out[s]) == 3
        assert [h.score for h in out[s]] == sorted((h.score for h in out[s]), reverse=True)
        for h in out[s]:
            assert all(t not in (PAD, BOS, EOS) for t in h.tokens)
            assert h.log_prob == pytest.approx(_rescore(model, src_alone[s], h.tokens), abs=1e-4)
            assert h.score == pytest.approx(h.log_prob / (len(h.tokens) + 1), abs=1e-6)


class UnpaddedStepper:
    """The stepper before row buckets: the model on exactly the active rows."""

    first_step_per_sentence = True

    def __init__(self, model, src, repeat=1):
        self.memory, self.src_mask = model.encode(src)
        self.model, self.repeat = model, repeat
        self.cache = model.new_cache()
        self.t = 0

    def step(self, tokens):
        hidden = self.model.decode_hidden(tokens[:, None], self.memory, self.src_mask,
                                          cache=self.cache, start=self.t)
        self.t += 1
        return torch.log_softmax(self.model.project(hidden[:, 0]), dim=-1, dtype=torch.float32)

    def reorder(self, index, rows_changed_sentence):
        self.model.reorder_cache(self.cache, index)
        if rows_changed_sentence:
            sentences = index.view(-1, self.repeat)[:, 0] // self.repeat
            for layer in self.cache:
                for key in ("cross_k", "cross_v"):
                    layer[key] = layer[key].index_select(0, sentences)
            self.src_mask = self.src_mask.index_select(0, sentences)
            self.memory = self.memory.index_select(0, sentences)


def test_bucket_rounds_up_by_at_most_an_eighth_to_few_sizes():
    sizes = [bucket(n) for n in range(1, 641)]
    assert sizes[:8] == list(range(1, 9))
    assert all(n <= b <= n + n / 8 for n, b in zip(range(1, 641), sizes))
    assert bucket(17) == 18 and bucket(94) == 96 and bucket(129) == 144
    assert len(set(sizes)) <= 8 * 7 + 8  # eight per doubling


def mild_eos_boost(lp, t):  # hypotheses of 1 to about 10 tokens: beams reorder and prune
    lp = lp.clone()
    lp[:, EOS] += 0.15 * t
    return lp


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bucketed_rows_decode_the_same_ids(dtype):
    """Filler rows change no output: the same ids (and log-probs) as the model on exactly the
    active rows, greedy and beam, while sentences end at different steps and the active
    sentences pass through several buckets (19 -> 20, 17 -> 18, ...)."""
    model = tiny_model(seed=7).to(dtype)
    lengths = [5, 3, 7, 2, 6, 9, 1, 4, 8, 3, 5, 2, 6, 7, 4, 9, 5, 3, 6]  # 19: bucket 20
    src = padded_src(lengths, seed=8)
    max_len = torch.tensor([3 + n % 9 for n in range(len(lengths))])
    limits = Limits.of(len(lengths), max_len)
    with torch.no_grad():
        for K in (1, 4):
            new = beam_search(ModelStepper(model, src, K), limits, K, nbest=K,
                              step_hook=mild_eos_boost)
            old = beam_search(UnpaddedStepper(model, src, K), limits, K, nbest=K,
                              step_hook=mild_eos_boost)
            assert [[h.tokens for h in x] for x in new] == [[h.tokens for h in x] for x in old]
            assert [h.log_prob for x in new for h in x] == \
                pytest.approx([h.log_prob for x in old for h in x], abs=1e-5)
        new = greedy_search(ModelStepper(model, src), limits, step_hook=mild_eos_boost)
        old = greedy_search(UnpaddedStepper(model, src), limits, step_hook=mild_eos_boost)
    assert [h.tokens for h in new] == [h.tokens for h in old]
    assert len({len(h.tokens) for h in new}) > 4  # sentences ended at different steps


def test_pad_source_appends_pad_columns_up_to_a_multiple_within_the_positions():
    src = padded_src([5, 3, 9])  # [3,9]
    padded = pad_source(src, 8, limit=64)
    assert padded.shape == (3, 16) and torch.equal(padded[:, :9], src)
    assert (padded[:, 9:] == PAD).all()
    assert pad_source(src, 0, limit=64) is src and pad_source(src, 9, limit=64) is src
    assert pad_source(src, 8, limit=12).shape == (3, 12)  # never past the positions
    assert pad_source(src, 8, limit=5) is src  # nor shorter than it was


def test_source_padded_to_a_multiple_decodes_the_same_ids():
    """A source padded with PAD columns (masked keys) gives the unpadded path's ids in fp32,
    greedy and beam, over batches whose lengths fall in several multiples of 8; log-probs
    equal up to the order of the longer reductions."""
    model = tiny_model(seed=11)
    for lengths in ([5, 3, 7, 2, 6, 9, 1, 4, 8, 3, 5], [12, 4, 17, 6], [16, 8]):
        src = padded_src(lengths, seed=len(lengths))
        limits = Limits.of(len(lengths), torch.tensor([3 + n % 7 for n in lengths]))
        with torch.no_grad():
            for K in (1, 3):
                found = [beam_search(ModelStepper(model, src, K, source_multiple=m), limits, K,
                                     nbest=K, step_hook=mild_eos_boost) for m in (0, 8)]
                assert [[h.tokens for h in x] for x in found[0]] == \
                    [[h.tokens for h in x] for x in found[1]]
                assert [h.log_prob for x in found[1] for h in x] == \
                    pytest.approx([h.log_prob for x in found[0] for h in x], abs=1e-5)
            greedy = [greedy_search(ModelStepper(model, src, source_multiple=m), limits,
                                    step_hook=mild_eos_boost) for m in (0, 8)]
        assert [h.tokens for h in greedy[0]] == [h.tokens for h in greedy[1]]


def test_model_batched_beam_equals_alone():
    model = tiny_model(seed=5)
    lengths = [6, 2, 5, 3]
    src = padded_src(lengths, seed=6)
    max_len = torch.tensor([7, 2, 5, 4])
    K = 3
    out = beam_search(
        ModelStepper(model, src, repeat=K), Limits.of(4, max_len), K, nbest=K, step_hook=eos_boost
    )
    for s, n in enumerate(lengths):
        (alone,) = beam_search(
            ModelStepper(model, src[s : s + 1, :n], repeat=K),
            Limits.of(1, int(max_len[s])),
            K,
            nbest=K,
            step_hook=eos_boost,
        )
        assert [h.tokens for h in alone] == [h.tokens for h in out[s]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in out[s]], abs=1e-4)


class CountingStepper(ModelStepper):
    """ModelStepper that records the rows of every step (and can refuse the shared step 0)."""

    def __init__(self, *args, shared: bool = True, **kw):
        super().__init__(*args, **kw)
        self.first_step_per_sentence = shared
        self.rows: list[int] = []

    def step(self, tokens):
        self.rows.append(tokens.shape[0])
        return super().step(tokens)


def test_shared_first_step_gives_the_same_search():
    """Step 0 on one row per sentence, fanned out to K beams, = step 0 on all B*K rows: the
    same hypotheses, scores and n-best (also with a step hook and EOS possible at step 0)."""
    model = tiny_model(seed=7)
    src = padded_src([5, 2, 6, 4], seed=8)
    max_len = torch.tensor([6, 1, 7, 4])
    K = 4
    results = {}
    for shared in (True, False):
        stepper = CountingStepper(model, src, repeat=K, shared=shared)
        results[shared] = beam_search(stepper, Limits.of(4, max_len), K, nbest=K,
                                      step_hook=eos_boost)
        assert stepper.rows[0] == (4 if shared else 4 * K)
        assert stepper.rows[1] <= 4 * K and len(stepper.rows) > 2
    for a, b in zip(results[True], results[False]):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)


# ---------------------------------------------------------------------------------------------
# sampling


def _lp(n_rows=4, vocab=10, seed=0, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n_rows, vocab, generator=g) * spread).log_softmax(-1)


def test_top_k1_and_tiny_top_p_are_argmax():
    lp = _lp(n_rows=64, spread=0.5)  # flat-ish: a non-argmax draw would be likely otherwise
    for sampler in (
        make_sampler(top_k=1, generator=torch.Generator().manual_seed(1)),
        make_sampler(top_p=1e-6, generator=torch.Generator().manual_seed(2)),
        make_sampler(temperature=1e-8, generator=torch.Generator().manual_seed(3)),
    ):
        for _ in range(5):
            assert torch.equal(sampler(lp), lp.argmax(-1))
    plain = make_sampler(generator=torch.Generator().manual_seed(4))
    assert not torch.equal(plain(lp), lp.argmax(-1))


def test_top_k_and_top_p_restrict_the_support():
    lp = torch.tensor([[0.4, 0.25, 0.15, 0.1, 0.06, 0.04]]).log().expand(3000, -1)
    drawn = make_sampler(top_k=3, generator=torch.Generator().manual_seed(0))(lp)
    assert set(drawn.tolist()) == {0, 1, 2}
    # nucleus 0.6: the smallest prefix with mass >= 0.6 is {0, 1} (0.65)
    drawn = make_sampler(top_p=0.6, generator=torch.Generator().manual_seed(0))(lp)
    assert set(drawn.tolist()) == {0, 1}
    freq = torch.bincount(drawn, minlength=6).float() / len(drawn)
    assert freq[0].item() == pytest.approx(0.4 / 0.65, abs=0.04)  # renormalised over the nucleus


def _entropy(samples, vocab):
    p = torch.bincount(samples, minlength=vocab).float() / len(samples)
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def test_temperature_changes_entropy_and_distribution():
    base = _lp(n_rows=1, vocab=8, seed=7)
    lp = base.expand(4000, -1)
    ent = {}
    for temp in (0.5, 1.0, 2.0):
        drawn = make_sampler(temperature=temp, generator=torch.Generator().manual_seed(0))(lp)
        ent[temp] = _entropy(drawn, 8)
        freq = torch.bincount(drawn, minlength=8).float() / len(drawn)
        expected = (base[0] / temp).softmax(-1)
        assert torch.allclose(freq, expected, atol=0.03)
    assert ent[0.5] < ent[1.0] < ent[2.0]


def test_sampler_seed_reproducibility():
    lp = _lp(n_rows=200, spread=0.5)
    a = make_sampler(generator=torch.Generator().manual_seed(123))(lp)
    b = make_sampler(generator=torch.Generator().manual_seed(123))(lp)
    c = make_sampler(generator=torch.Generator().manual_seed(124))(lp)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sampling_search_reproducible_and_valid():
    model = tiny_model(seed=8)
    src = padded_src([4, 5, 3], seed=9)

    def run(seed):
        sampler = make_sampler(temperature=1.0, generator=torch.Generator().manual_seed(seed))
        return greedy_search(ModelStepper(model, src), Limits.of(3, 6), sampler=sampler)

    a, b = run(0), run(0)
    assert [h.tokens for h in a] == [h.tokens for h in b]
    for h in a:
        assert all(t not in (PAD, BOS, EOS) for t in h.tokens) and len(h.tokens) <= 6
    runs = [tuple(tuple(h.tokens) for h in run(seed)) for seed in range(1, 6)]
    assert len(set(runs)) > 1



@pytest.mark.parametrize("shape,k,chunk", [((7, 8000), 10, 64), ((5, 1000), 10, 64),
                                           ((3, 650), 8, 64), ((4, 129), 3, 64),
                                           ((6, 640), 10, 64), ((2, 300), 7, 16)])
def test_row_topk_equals_topk(shape, k, chunk):
    """Two-stage top-k = torch.topk on distinct values, including the V % chunk tail, k
    near the number of blocks, and rows whose best entries share one block or sit at -inf."""
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    x[0, :k + 3] = 100 + torch.arange(k + 3.0)  # all winners in the first block
    x[1, -3:] = 50 + torch.arange(3.0)  # winners in the tail
    x[-1, : shape[1] // 2] = float("-inf")
    values, ids = row_topk(x, k, chunk)
    expected_values, expected_ids = x.topk(k, dim=1)
    assert torch.equal(values, expected_values) and torch.equal(ids, expected_ids)


@pytest.mark.parametrize("V", [8000, 1000, 129, 64, 70, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_argmax_is_the_first_maximum(V, dtype):
    """= torch.argmax (first maximal index), with many ties (bf16 rounding, repeated maxima in
    and across blocks), maxima in the tail block and at the last id, and -inf rows parts."""
    torch.manual_seed(V)
    x = (torch.randn(40, V) * 2).round().to(dtype)  # integers: ties everywhere
    x[0] = 7.0  # all equal: id 0
    x[1, -1] = 99.0  # last id
    x[2, [V // 3, V - 1]] = 50.0  # a tie, the first one wins
    x[3, : V // 2] = float("-inf")
    assert torch.equal(row_argmax(x), x.argmax(-1))
