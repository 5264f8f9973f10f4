"""Search on the KV cache: greedy, beam search, sampling. All batched; finished sentences are
pruned from the batch (and from the cache) as they end.

Shapes: B sentences, K beam size, N = active rows (B' x K), V vocab, t decoding step.
A hypothesis of n tokens ends with EOS chosen at step n; ``min_len <= n <= max_len``.
Beam search ranks finished hypotheses by log-prob / lp(n + 1) (``LengthPenalty``: fairseq's
power or GNMT's penalty, a registry in ``LENGTH_NORMS``).

Search is split from the model (as in fairseq): a *stepper* answers "log-probs of the next
token for each row" and "reorder your state"; tests script a stepper from a probability table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from .config import register_choices
from .data import BOS, EOS, PAD

StepHook = Callable[[torch.Tensor, int], torch.Tensor]  # (log_probs [N,V], t) -> log_probs


class Stepper(Protocol):
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N] (last token of each row) -> log_probs [N,V] of the next token."""

    def reorder(self, index: torch.Tensor, rows_changed_sentence: bool) -> None:
        """Keep rows ``index`` [N'] of the state; ``rows_changed_sentence`` says whether the set
        of sentences changed (prune) or only beams moved within each sentence."""

    # Optional: ``first_step_per_sentence = True`` says the K rows of a sentence hold the same
    # state before the first step, so beam search may run step 0 on one row per sentence
    # (``step`` gets [B] tokens) and then ``reorder`` with sentence indices [B*K] (each row
    # picks its sentence's row) to fan out to the K beams.


def bucket(n: int) -> int:
    """The row-count bucket of ``n``: ``n`` itself up to 8, then the next of eight sizes per
    doubling (9, 10, ..., 16, 18, ..., 32, 36, ..., 64, 72, ...), at most 1/8 above ``n``."""
    if n <= 8:
        return n
    step = 1 << (n.bit_length() - 4)
    return -(-n // step) * step


def _pad_index(index: torch.Tensor, size: int) -> torch.Tensor:
    """``index`` [n] followed by zeros up to ``size`` entries (filler rows copy row 0)."""
    if size <= index.shape[0]:
        return index
    return torch.cat([index, index.new_zeros(size - index.shape[0])])


def pad_source(src: torch.Tensor, multiple: int, limit: int) -> torch.Tensor:
    """src [B,S] with PAD columns appended up to the next multiple of ``multiple`` (never
    past ``limit`` columns, the model's positions; 0: src itself), [B,S*]. The encoder and
    the cross-attention then meet one source length per ``multiple`` (a compiled oneDNN
    kernel per shape); the padded keys are masked like any other padding, so only the order
    of floating-point reductions can change."""
    S = src.shape[1]
    size = min(-(-S // multiple) * multiple, max(limit, S)) if multiple > 0 else S
    if size == S:
        return src
    return torch.cat([src, src.new_full((src.shape[0], size - S), PAD)], dim=1)


class ModelStepper:
    """Incremental decoding of a Transformer over its KV cache. With ``repeat`` = K (beam
    search) row r belongs to sentence r // K; the encoder output, source mask and
    cross-attention K/V stay one per sentence (the model groups the K queries).

    The model runs on ``bucket(B')`` sentences for the B' that are active: filler sentences
    (copies of the first) after the real ones, and their rows after the real rows, so that a
    search meets a few matrix shapes again and again instead of a new one at nearly every
    step (a compiled oneDNN kernel per shape). Rows never mix, so the real rows' log-probs are
    those of an unpadded batch; the filler rows are dropped from ``step``'s answer.

    ``source_multiple`` > 0 pads the source with PAD to a multiple of that many tokens
    (``pad_source``); 0 (training's searches) keeps its length."""

    first_step_per_sentence = True  # before step 0 the only state is per sentence

    def __init__(self, model, src: torch.Tensor, repeat: int = 1, source_multiple: int = 0):
        self.model, self.repeat = model, repeat
        self.sentences = src.shape[0]  # B', the real ones
        self.padded = bucket(self.sentences)  # B* = bucket(B')
        fill = _pad_index(torch.arange(self.sentences, device=src.device), self.padded)
        if source_multiple:
            src = pad_source(src, source_multiple, model.cfg.max_positions)  # [B',S*]
        self.memory, self.src_mask = model.encode(src.index_select(0, fill))  # [B*,S*,D], [B*,S*]
        self.cache = model.new_cache()
        self.t = 0

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[0]  # real rows: B' sentences x (1 or repeat)
        if n % self.sentences:
            raise ValueError(f"{n} rows for {self.sentences} sentences")
        rows = n // self.sentences * self.padded
        if rows > n:
            tokens = torch.cat([tokens, tokens[:1].expand(rows - n)])
        hidden = self.model.decode_hidden(
            tokens[:, None], self.memory, self.src_mask, cache=self.cache, start=self.t
        )  # [rows,1,D]
        self.t += 1
        logits = self.model.project(hidden[:, 0])[:n]
        return torch.log_softmax(logits, dim=-1, dtype=torch.float32)

    def reorder(self, index: torch.Tensor, rows_changed_sentence: bool) -> None:
        if rows_changed_sentence:  # rows come in whole sentences: keep those sentences
            sentences = index.view(-1, self.repeat)[:, 0] // self.repeat
            self.sentences, self.padded = sentences.shape[0], bucket(sentences.shape[0])
            sentences = _pad_index(sentences, self.padded)
            for layer in self.cache:
                for key in ("cross_k", "cross_v"):
                    if key in layer:
                        layer[key] = layer[key].index_select(0, sentences)
            self.src_mask = self.src_mask.index_select(0, sentences)
            self.memory = self.memory.index_select(0, sentences)
        rows = index.shape[0] // self.sentences * self.padded
        self.model.reorder_cache(self.cache, _pad_index(index, rows))  # applied lazily


def fairseq_norm(length: int, alpha: float) -> float:
    """fairseq's length normalisation: ``length ** alpha`` (alpha 0: raw log-prob, 1: mean)."""
    return float(length) ** alpha


def gnmt_norm(length: int, alpha: float) -> float:
    """GNMT's length penalty (Wu et al. 2016, eq. 14): ``((5 + length) / 6) ** alpha``."""
    return ((5.0 + length) / 6.0) ** alpha


# name -> (hypothesis length m = tokens + EOS, alpha) -> the divisor of its log-prob
LENGTH_NORMS: dict[str, Callable[[int, float], float]] = {"fairseq": fairseq_norm,
                                                           "gnmt": gnmt_norm}
register_choices("decode.len_norm", LENGTH_NORMS)


@dataclass(frozen=True)
class LengthPenalty:
    """How beam search ranks a finished hypothesis of n tokens: log-prob / lp(n + 1), EOS
    counted (as fairseq, OpenNMT and tensor2tensor do), lp = ``LENGTH_NORMS[norm]`` with
    exponent ``alpha``. Only finished hypotheses are normalised: the live beams of a step all
    have the same length, so lp cannot change their order."""

    alpha: float = 1.0
    norm: str = "fairseq"

    def __post_init__(self):
        if self.norm not in LENGTH_NORMS:
            raise ValueError(f"unknown length normalisation {self.norm!r} "
                             f"(known: {', '.join(LENGTH_NORMS)})")

    def __call__(self, length: int) -> float:
        """The divisor of the log-prob of a hypothesis of ``length`` tokens (EOS included)."""
        return LENGTH_NORMS[self.norm](length, self.alpha)

    @classmethod
    def of(cls, value: float | LengthPenalty) -> LengthPenalty:
        """``value`` itself, or a number alpha as fairseq's ``(n + 1) ** alpha``."""
        return value if isinstance(value, LengthPenalty) else cls(value)


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS / EOS
    score: float  # length-normalised log-prob (what the beam ranks by)
    log_prob: float  # total log-prob including EOS


def row_topk(x: torch.Tensor, k: int, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [N,k], ids [N,k]) of the k largest entries of each row of x [N,V], best first,
    like ``x.topk(k, dim=1)`` (the same entries up to ties), in two stages: the maxima of
    ``chunk``-wide column blocks, the k best blocks, then the top k of their k * chunk entries
    (plus the V % chunk tail). The k largest lie in the k blocks with the largest maxima (a
    block outside them has k larger maxima above its own), so the result is exact. The one
    full pass is a plain max (timings against ``topk`` in ``benchmarks/cpu_tweaks.py``)."""
    N, V = x.shape
    blocks = V // chunk
    if blocks <= k:
        return x.topk(k, dim=1)
    body = blocks * chunk
    best = x[:, :body].view(N, blocks, chunk).amax(-1).topk(k, dim=1).indices  # [N,k]
    ids = (best[:, :, None] * chunk + torch.arange(chunk, device=x.device)).view(N, k * chunk)
    if body < V:  # the tail block, always a candidate
        tail = torch.arange(body, V, device=x.device).expand(N, V - body)
        ids = torch.cat([ids, tail], dim=1)
    values, pos = x.gather(1, ids).topk(k, dim=1)
    return values, ids.gather(1, pos)


def row_argmax(x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """ids [N] of the first maximum of each row of x [N,V], = ``x.argmax(-1)``, in two stages:
    the first ``chunk``-wide block holding the row maximum (block maxima are one vectorised
    reduction), then the first maximum inside it. PyTorch's bf16 argmax has no vectorised CPU
    kernel; timings against ``argmax`` in ``benchmarks/cpu_tweaks.py``."""
    N, V = x.shape
    blocks, body = V // chunk, (V // chunk) * chunk
    if blocks < 2:
        return x.argmax(-1)
    maxima = x[:, :body].view(N, blocks, chunk).amax(-1)  # [N,blocks]
    if body < V:  # the tail block
        maxima = torch.cat([maxima, x[:, body:].amax(-1, keepdim=True)], dim=1)
    start = maxima.argmax(-1) * chunk  # [N] first block with the maximum
    # clamped positions past V-1 repeat V-1, after it: the first maximum is unchanged
    ids = (start[:, None] + torch.arange(chunk, device=x.device)).clamp_max_(V - 1)
    return start + x.gather(1, ids).argmax(-1)


def _forbid(lp: torch.Tensor, t: int, min_len: torch.Tensor, max_len: torch.Tensor) -> None:
    """In place: never PAD/BOS; no EOS before min_len; only EOS at max_len."""
    lp[:, PAD] = -math.inf
    lp[:, BOS] = -math.inf
    too_short = min_len > t
    if too_short.any():
        lp[too_short, EOS] = -math.inf
    at_max = max_len <= t
    if at_max.any():
        eos = lp[at_max, EOS].clone()
        lp[at_max] = -math.inf
        lp[at_max, EOS] = torch.where(torch.isinf(eos), torch.zeros_like(eos), eos)


def _as_lengths(value, n: int, device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.long)
    return torch.full((n,), int(value), dtype=torch.long, device=device)


@dataclass
class Limits:
    """Per-sentence output length bounds of one search batch: ``max_len`` / ``min_len`` [B]
    (tokens without EOS); the batch size and the device come with them."""

    max_len: torch.Tensor
    min_len: torch.Tensor

    @classmethod
    def of(cls, batch_size: int, max_len, min_len=1, device="cpu") -> Limits:
        """From ints or per-sentence tensors [B]."""
        return cls(_as_lengths(max_len, batch_size, device),
                   _as_lengths(min_len, batch_size, device))

    @property
    def batch_size(self) -> int:
        return self.max_len.shape[0]

    @property
    def device(self) -> torch.device:
        return self.max_len.device


def _finish(finished: list[list[Hypothesis]], is_eos: torch.Tensor, step: tuple, K: int,
            norm: float) -> None:
    """Finalise the EOS candidates ranked among the first K of their sentence (fairseq's
    rule). ``step`` = (active sentence ids [B'], tokens [B'*K, t], candidate scores [B',2K],
    candidate beams [B',2K])."""
    active, tokens, top_scores, top_beam = step
    eos_first = is_eos.clone()
    eos_first[:, K:] = False
    s_idx, c_idx = eos_first.nonzero().unbind(1)  # [E] each, sentence-major order
    rows = s_idx * K + top_beam[s_idx, c_idx]
    # one host transfer per field, not a few small tensor ops per hypothesis
    for sent, raw, toks in zip(active[s_idx].tolist(), top_scores[s_idx, c_idx].tolist(),
                               tokens[rows].tolist()):
        if len(finished[sent]) < K:
            finished[sent].append(Hypothesis(toks, raw / norm, raw))


def _start(batch_size: int, K: int, device) -> tuple[torch.Tensor, ...]:
    """The search before step 0: active sentence ids [B], row scores [B*K] (only beam 0 may
    expand), tokens [B*K, 0], previous tokens [B*K] (BOS)."""
    active = torch.arange(batch_size, device=device)  # original ids of the active sentences
    scores = torch.full((batch_size, K), -math.inf, device=device)
    scores[:, 0] = 0.0
    tokens = torch.zeros(batch_size * K, 0, dtype=torch.long, device=device)
    prev = torch.full((batch_size * K,), BOS, dtype=torch.long, device=device)
    return active, scores.view(-1), tokens, prev


def _candidates(lp: torch.Tensor, scores: torch.Tensor, K: int, shared: bool):
    """The 2K best extensions of each sentence: (scores, beam, token), each [B',2K]. The best
    2K of a sentence's K*V extensions lie within each beam's own best 2K: select per row first,
    then over the K*2K survivors (no [B', K*V] score matrix). ``shared``: ``lp`` holds one row
    per sentence (step 0)."""
    C = min(2 * K, lp.shape[-1])
    row_lp, row_tok = row_topk(lp, C)  # [N,C]
    if shared:  # beams 1..K-1 score -inf: their copies never win
        row_lp, row_tok = row_lp.repeat_interleave(K, 0), row_tok.repeat_interleave(K, 0)
    n_active = scores.shape[0] // K
    cand = (scores[:, None] + row_lp).view(n_active, K * C)
    top_scores, top_idx = cand.topk(2 * K, dim=1)  # [B',2K]
    top_beam = torch.div(top_idx, C, rounding_mode="floor")
    return top_scores, top_beam, row_tok.view(n_active, K * C).gather(1, top_idx)


@torch.no_grad()
def beam_search(
    stepper: Stepper,
    limits: Limits,
    beam: int,
    len_penalty: float | LengthPenalty = 1.0,
    nbest: int = 1,
    step_hook: StepHook | None = None,
) -> list[list[Hypothesis]]:
    """Batched beam search. ``stepper`` must hold ``B * beam`` rows (sentence-major), B =
    ``limits.batch_size``. Scores are normalised by ``len_penalty`` (``LengthPenalty.of``); a
    sentence is finished once it has ``beam`` finished hypotheses (early stopping). Returns
    each sentence's ``nbest`` best hypotheses, best first."""
    K, batch_size, device = beam, limits.batch_size, limits.device
    max_len, min_len = limits.max_len, limits.min_len
    active, scores, tokens, prev = _start(batch_size, K, device)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch_size)]
    n_finished = torch.zeros(batch_size, dtype=torch.long, device=device)
    # step 0: the K rows of a sentence are identical (BOS, and only beam 0 may expand), so a
    # stepper that allows it computes one row per sentence and fans out after the step
    fan_out = K > 1 and getattr(stepper, "first_step_per_sentence", False)
    t = 0
    while active.numel():
        n_active = active.numel()
        shared = fan_out and t == 0
        lp = stepper.step(prev[::K] if shared else prev)  # [N,V] ([B,V] when shared)
        if step_hook is not None:
            lp = step_hook(lp, t)
        row_max, row_min = max_len[active], min_len[active]
        if not shared:
            row_max, row_min = row_max.repeat_interleave(K), row_min.repeat_interleave(K)
        _forbid(lp, t, row_min, row_max)
        top_scores, top_beam, top_tok = _candidates(lp, scores, K, shared)  # [B',2K] each
        is_eos = (top_tok == EOS) & torch.isfinite(top_scores)
        if is_eos[:, :K].any():
            _finish(finished, is_eos, (active, tokens, top_scores, top_beam), K,
                    LengthPenalty.of(len_penalty)(t + 1))
            n_finished = torch.tensor([len(h) for h in finished], device=device)
        # continue with the best K non-EOS candidates of each sentence
        cont_scores = top_scores.masked_fill(is_eos | (top_tok == EOS), -math.inf)
        keep_scores, keep_pos = cont_scores.topk(K, dim=1)  # [B',K]
        keep_beam = top_beam.gather(1, keep_pos)
        keep_tok = top_tok.gather(1, keep_pos)
        rows = (torch.arange(n_active, device=device)[:, None] * K + keep_beam).view(-1)
        tokens = torch.cat([tokens.index_select(0, rows), keep_tok.view(-1, 1)], dim=1)
        scores = keep_scores.view(-1)
        prev = keep_tok.view(-1)
        # after a shared step 0 the stepper holds one row per sentence: row -> its sentence
        stepper.reorder(torch.div(rows, K, rounding_mode="floor") if shared else rows,
                        rows_changed_sentence=False)
        t += 1
        done = (n_finished.index_select(0, active) >= K) | (max_len[active] < t)
        done |= ~torch.isfinite(keep_scores[:, 0])
        if done.any():
            keep = (~done).nonzero().view(-1)
            rows = (keep[:, None] * K + torch.arange(K, device=device)).view(-1)
            active = active.index_select(0, keep)
            tokens, scores, prev = tokens[rows], scores[rows], prev[rows]
            if active.numel():
                stepper.reorder(rows, rows_changed_sentence=True)
    return [sorted(h, key=lambda x: -x.score)[:nbest] for h in finished]


@torch.no_grad()
def greedy_search(
    stepper: Stepper,
    limits: Limits,
    sampler: Callable[[torch.Tensor], torch.Tensor] | None = None,
    step_hook: StepHook | None = None,
) -> list[Hypothesis]:
    """Greedy (argmax) decoding, or sampling when ``sampler`` maps log_probs [N,V] -> [N]."""
    batch_size, device = limits.batch_size, limits.device
    max_len, min_len = limits.max_len, limits.min_len
    active = torch.arange(batch_size, device=device)
    prev = torch.full((batch_size,), BOS, dtype=torch.long, device=device)
    tokens = torch.zeros(batch_size, 0, dtype=torch.long, device=device)
    total = torch.zeros(batch_size, device=device)
    out: list[Hypothesis | None] = [None] * batch_size
    t = 0
    while active.numel():
        lp = stepper.step(prev)
        if step_hook is not None:
            lp = step_hook(lp, t)
        _forbid(lp, t, min_len[active], max_len[active])
        tok = row_argmax(lp) if sampler is None else sampler(lp)
        total = total + lp.gather(1, tok[:, None]).squeeze(1)
        ended = tok == EOS
        for s in ended.nonzero().view(-1).tolist():
            lp_sum = float(total[s])
            out[int(active[s])] = Hypothesis(tokens[s].tolist(), lp_sum / (t + 1), lp_sum)
        tokens = torch.cat([tokens, tok[:, None]], dim=1)
        t += 1
        if ended.any():
            keep = (~ended).nonzero().view(-1)
            active, tokens, total = active[keep], tokens[keep], total[keep]
            prev = tok[keep]
            if active.numel():
                stepper.reorder(keep, rows_changed_sentence=True)
        else:
            prev = tok
    return out  # type: ignore[return-value]


def make_sampler(
    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, generator=None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Ancestral sampling from log_probs [N,V] with temperature, top-k and nucleus (top-p)."""

    def sample(lp: torch.Tensor) -> torch.Tensor:
        logits = lp / max(temperature, 1e-6)
        if top_k > 0:
            kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        if top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix with mass >= p
            sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
            logits = torch.full_like(logits, -math.inf).scatter(1, order, sorted_logits)
        probs = logits.softmax(-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return sample

