"""Inference: ``load`` a run, and ``Translator``, the one place that batches sentences, sets
their length limits and hands them to a search (greedy, beam or sampling).

``from gapless import load; load("runs/NAME").translate(["Ein Hund läuft."], beam=5)``
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from . import config as config_mod
from .checkpoint import RunDir
from .config import ConfigError, DecodeConfig
from .data import EOS, Vocab, pad_sequences, sentence_batches
from .decode import (
    Hypothesis,
    LengthPenalty,
    Limits,
    ModelStepper,
    Stepper,
    beam_search,
    greedy_search,
    make_sampler,
)
from .model import Transformer
from .packing import pack_linears
from .runtime import autocast, configure_inference, resolve_device

log = logging.getLogger(__name__)

__all__ = ["Engine", "SearchBatch", "Translation", "Translator", "length_limits", "load",
           "min_lengths", "nbest_lines", "search_batches"]

# (model, src [B,S], rows per sentence) -> a Stepper; ModelStepper is the KV-cached default
StepperFactory = Callable[[Transformer, torch.Tensor, int], Stepper]

# settings (with their defaults) that only gapless's own search implements: an engine without
# ``own_search`` (an exported CTranslate2 model) refuses any other value, never ignores it
OWN_SEARCH_ONLY = {"len_norm": "fairseq", "min_len_ratio": 0.0}


@dataclasses.dataclass
class Translation:
    """One hypothesis as text: its ranking score (length-normalised log-prob for beam search,
    mean log-prob per token for greedy), total log-prob, and output tokens without EOS."""

    text: str
    score: float
    log_prob: float
    tokens: int


class Engine(Protocol):
    """What translate, evaluate and the server need of a loaded model, whatever runs it
    (gapless's own search or an exported CTranslate2 model)."""

    name: str  # "gapless" | "ctranslate2"
    max_source_tokens: int  # longer inputs are truncated to this many pieces by the caller

    def translate(self, lines: list[str], **settings) -> list[str]:
        """Raw sentences -> the best translation of each (decode settings as keywords)."""

    def translate_text(self, lines: list[str], **settings) -> list[list[Translation]]:
        """Raw sentences -> each one's ``nbest`` translations, best first."""

    def describe(self) -> dict:
        """What is loaded (engine, run, checkpoint, precision, config) for logs and /v1/model."""


def length_limits(src_lens: list[int], settings: DecodeConfig, max_positions: int,
                  at_least: list[int] | None = None) -> list[int]:
    """Per-sentence maximum output length: ``a * (source tokens + EOS) + b``, raised to
    ``at_least`` (e.g. a forced prefix + 1), never past the model's positions."""
    limit = max_positions - 1
    out = [int(settings.max_len_a * (n + 1) + settings.max_len_b) for n in src_lens]
    if at_least is not None:
        out = [max(m, k) for m, k in zip(out, at_least)]
    return [min(m, limit) for m in out]


def min_lengths(src_lens: list[int], settings: DecodeConfig, max_lens: list[int]) -> list[int]:
    """Per-sentence minimum output length: ``max(min_len, ceil(min_len_ratio * source
    pieces))`` (the source without EOS), never above the sentence's maximum ``max_lens``
    (where the search forces EOS anyway). The product is rounded to 9 decimals before the
    ceiling, so that 0.1 * 30 asks for 3 tokens, not 4."""
    ratio = settings.min_len_ratio
    return [min(max(settings.min_len, math.ceil(round(ratio * n, 9))), m)
            for n, m in zip(src_lens, max_lens)]


def length_penalty(settings: DecodeConfig) -> LengthPenalty:
    """The beam's ranking rule of ``settings``: ``len_norm`` with exponent ``len_penalty``."""
    return LengthPenalty(settings.len_penalty, settings.len_norm)


@dataclasses.dataclass
class SearchBatch:
    """Sentences ``index`` of the input as a padded source [B,S] (EOS appended) with limits."""

    index: np.ndarray
    src: torch.Tensor
    limits: Limits


def search_batches(src: list[list[int]], settings: DecodeConfig, max_positions: int,
                   device: torch.device, at_least: list[int] | None = None
                   ) -> Iterator[SearchBatch]:
    """Length-sorted batches of ``settings.batch_size`` sentences, ready for a search."""
    for idx in sentence_batches([len(s) for s in src], settings.batch_size):
        seqs = [src[i] for i in idx]
        floor = None if at_least is None else [at_least[i] for i in idx]
        lens = [len(s) for s in seqs]
        max_lens = length_limits(lens, settings, max_positions, floor)
        min_len = (settings.min_len if not settings.min_len_ratio
                   else torch.tensor(min_lengths(lens, settings, max_lens), device=device))
        src_t = pad_sequences(seqs, suffix=EOS).to(device)
        yield SearchBatch(idx, src_t, Limits.of(len(idx), torch.tensor(max_lens, device=device),
                                                min_len, device))


class TextEngine:
    """Text in, text out, over ``translate_nbest`` (token ids -> each sentence's n-best
    ``Hypothesis`` list) that a subclass implements with its ``vocab`` (SentencePiece)
    and ``decode_cfg`` (the run's decode settings)."""

    own_search = False  # True: ``OWN_SEARCH_ONLY`` settings are implemented

    def settings(self, **overrides) -> DecodeConfig:
        """The run's decode settings with ``overrides`` (``beam=5``, ``len_penalty=0.6``, ...;
        ``None`` keeps the run's value)."""
        fields = {f.name for f in dataclasses.fields(DecodeConfig)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(f"unknown decode settings {unknown} (known: {sorted(fields)})")
        given = {k: v for k, v in overrides.items() if v is not None}
        settings = dataclasses.replace(self.decode_cfg, **given)
        for key, default in OWN_SEARCH_ONLY.items():
            if not self.own_search and getattr(settings, key) != default:
                raise ConfigError(f"{key} = {getattr(settings, key)!r}: only gapless's own "
                                  f"search has it, not the {getattr(self, 'name', 'this')} engine "
                                  "(--engine gapless)")
        return settings

    def translate_ids(self, src: list[list[int]], sampling: dict | None = None,
                      **overrides) -> list[list[int]]:
        """Token ids (without EOS) -> best hypothesis ids, in input order. ``sampling``:
        ``make_sampler`` arguments instead of a search."""
        return [h[0].tokens if h else [] for h in self.translate_nbest(src, sampling, **overrides)]

    def translate_nbest(self, src: list[list[int]], sampling: dict | None = None,
                        **overrides) -> list[list[Hypothesis]]:
        raise NotImplementedError

    long_lines = "truncate"  # a source over max_source_tokens: "truncate" it, or "empty"

    def encode(self, lines: list[str], first_line: int = 1) -> list[list[int]]:
        """Source ids of ``lines``; one longer than ``max_source_tokens`` is cut to it (or
        emptied, ``long_lines``), with a warning naming its line (``first_line`` + index)."""
        ids = self.vocab.encode(list(lines))
        limit = self.max_source_tokens
        for i, seq in enumerate(ids):
            if len(seq) > limit:
                cut = "truncated to" if self.long_lines == "truncate" else "emptied; the limit is"
                log.warning("input line %d: %d pieces, %s %d", first_line + i, len(seq), cut,
                            limit)
                ids[i] = seq[:limit] if self.long_lines == "truncate" else []
        return ids

    def _nbest_of_text(self, lines: list[str], first_line: int,
                       settings: dict) -> list[list[Hypothesis] | None]:
        """n-best hypotheses per line; None for a line with nothing to translate (blank, or
        emptied by ``long_lines``), which the search never sees."""
        ids = self.encode(lines, first_line)
        keep = [i for i, seq in enumerate(ids) if seq]
        found = self.translate_nbest([ids[i] for i in keep], **settings) if keep else []
        out: list[list[Hypothesis] | None] = [None] * len(ids)
        for i, hyps in zip(keep, found):
            out[i] = hyps
        return out

    def translate(self, lines: list[str], first_line: int = 1, **settings) -> list[str]:
        """Raw sentences -> detokenised translations (same order); a blank line gives ""."""
        found = self._nbest_of_text(lines, first_line, settings)
        return self.vocab.decode([hyps[0].tokens if hyps else [] for hyps in found])

    def translate_text(self, lines: list[str], first_line: int = 1,
                       **settings) -> list[list[Translation]]:
        """Raw sentences -> each one's ``nbest`` translations with their scores, best first
        (a blank line: one empty translation of score 0)."""
        found = [hyps or [Hypothesis([], 0.0, 0.0)]
                 for hyps in self._nbest_of_text(lines, first_line, settings)]
        texts = iter(self.vocab.decode([h.tokens for hyps in found for h in hyps]))
        return [[Translation(next(texts), h.score, h.log_prob, len(h.tokens)) for h in hyps]
                for hyps in found]

    def translate_stream(self, lines: Iterable[str], chunk: int = 1000, **kwargs):
        """Yield translations of a (possibly endless) line stream, ``chunk`` lines at a time."""
        buf: list[str] = []
        done = 0
        for line in lines:
            buf.append(line.rstrip("\n"))
            if len(buf) >= chunk:
                yield from self.translate(buf, first_line=done + 1, **kwargs)
                done += len(buf)
                buf = []
        if buf:
            yield from self.translate(buf, first_line=done + 1, **kwargs)


class Translator(TextEngine):
    """A trained model + its SentencePiece model, ready to translate text (the generator:
    batching and limits here, the search policy in ``gapless.decode``)."""

    own_search = True

    def __init__(self, model: Transformer, vocab: Vocab | None, decode: DecodeConfig, device,
                 dtype: str = "fp32", stepper: StepperFactory = ModelStepper):
        self.model = model.to(device).eval()
        self.vocab, self.decode_cfg, self.device = vocab, decode, device
        self.stepper = stepper
        # bf16 on fp32 weights (validation during training): autocast; a model cast to bf16 by
        # ``load`` runs natively, without autocast re-casting every weight at every step
        weights_fp32 = next(model.parameters()).dtype == torch.float32
        self.dtype = dtype if weights_fp32 else "fp32"
        self.source: dict = {}  # where the weights came from (``load`` fills it in)

    def translate_nbest(self, src: list[list[int]], sampling: dict | None = None,
                        **overrides) -> list[list[Hypothesis]]:
        """Token ids -> each sentence's ``nbest`` hypotheses (best first), in input order."""
        settings = self.settings(**overrides)
        out: list[list[Hypothesis]] = [[] for _ in src]
        was_training = self.model.training
        self.model.eval()
        try:
            for batch in search_batches(src, settings, self.model.cfg.max_positions,
                                        self.device):
                with torch.no_grad(), autocast(self.device, self.dtype):
                    found = self._search(batch, settings, sampling)
                for i, hyps in zip(batch.index, found):
                    out[int(i)] = hyps
        finally:
            self.model.train(was_training)
        return out

    def _search(self, batch: SearchBatch, settings: DecodeConfig,
                sampling: dict | None) -> list[list[Hypothesis]]:
        if sampling is not None or settings.beam == 1:
            sampler = make_sampler(**sampling) if sampling is not None else None
            hyps = greedy_search(self.stepper(self.model, batch.src, 1), batch.limits, sampler)
            return [[h] for h in hyps]
        stepper = self.stepper(self.model, batch.src, settings.beam)
        return beam_search(stepper, batch.limits, settings.beam, length_penalty(settings),
                           max(settings.nbest, 1))

    name = "gapless"

    @property
    def max_source_tokens(self) -> int:
        """Source pieces the model's positions allow (EOS takes one)."""
        return self.model.cfg.max_positions - 1

    def describe(self) -> dict:
        weights = next(self.model.parameters()).dtype
        return {"engine": self.name, "device": str(self.device),
                "dtype": "bf16" if weights == torch.bfloat16 else self.dtype,
                "parameters": sum(p.numel() for p in self.model.parameters()), **self.source}


def nbest_lines(engine: Engine, lines: Iterable[str], n_best: int, chunk: int = 1000,
                **settings) -> Iterator[str]:
    """``i ||| translation ||| score`` lines, the ``n_best`` best per input line, best first
    (Moses n-best style; i counts input lines from 0), ``chunk`` lines at a time."""
    buf: list[str] = []
    done = 0
    for line in itertools.chain(lines, [None]):  # None: the end, flush
        if line is not None:
            buf.append(line.rstrip("\n"))
        if buf and (line is None or len(buf) >= chunk):
            for i, hyps in enumerate(engine.translate_text(buf, first_line=done + 1,
                                                           nbest=n_best, **settings)):
                yield from (f"{done + i} ||| {h.text} ||| {h.score:.4f}\n" for h in hyps)
            done += len(buf)
            buf = []


def load(run_dir: str | Path, checkpoint: str = "best", device: str = "auto",
         dtype: str = "fp32", pack: bool = True) -> Translator:
    """A run's weights as a ``Translator``. ``dtype="bf16"`` casts the weights (inference
    only; log-probs stay fp32); ``pack``: on CPU, linear weights prepacked for oneDNN once."""
    run = RunDir(run_dir)
    cfg = run.load_config()
    configure_inference()
    model = Transformer(cfg.model)
    weights = run.load_weights(model, checkpoint)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    device = resolve_device(device)
    if pack and device.type == "cpu":
        pack_linears(model)
    translator = Translator(model, Vocab(run.spm_model), cfg.decode, device, dtype)
    translator.source = {"run": str(run.path), "name": cfg.name, "checkpoint": weights.name,
                         "config": config_mod.to_dict(cfg)}
    return translator
