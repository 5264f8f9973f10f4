"""Training strategies: each answers "what does the decoder see for this batch?", and may add a
loss term of its own (minimum risk training).

A strategy returns the decoder input as token ids [B,T] or as *raw* token embeddings [B,T,D];
the model adds the embedding scale, the true positions and dropout. The training step is the
same for every strategy. Adding one = one class + one entry in ``STRATEGIES``.

Shapes: B sentences, T target slots (``tgt_in`` = [BOS, y1 .. y_{T-1}]), D model dim, V vocab.
"""

from __future__ import annotations

import json

from ..config import StrategyConfig, register_choices
from ..schedules import Progress
from .base import ExtraLoss, Strategy, TeacherForcing
from .cass import ConfidenceAware, sentence_tokens
from .mrt import MinimumRisk, candidate_log_probs, expected_risk, first_occurrences
from .oracle import SentenceOracle, search_model, searching
from .predicted import PREDICTED, categorical_sample, gumbel_noise, topk_weights
from .scheduled import ScheduledSampling, WordOracle, fed_positions, mix, scatter_predicted

__all__ = [
    "PREDICTED", "STRATEGIES", "ConfidenceAware", "ExtraLoss", "MinimumRisk", "Progress",
    "ScheduledSampling", "SentenceOracle", "Strategy", "TeacherForcing", "WordOracle",
    "build_strategy", "candidate_log_probs", "categorical_sample", "expected_risk",
    "fed_positions", "first_occurrences", "gumbel_noise", "mix", "same_computation",
    "scatter_predicted", "search_model", "searching", "sentence_tokens", "topk_weights",
]

STRATEGIES: dict[str, type[Strategy]] = {
    "teacher_forcing": TeacherForcing,
    "scheduled_sampling": ScheduledSampling,
    "word_oracle": WordOracle,
    "sentence_oracle": SentenceOracle,
    "minimum_risk": MinimumRisk,
    "confidence_aware": ConfidenceAware,
}


register_choices("strategy.name", STRATEGIES)
register_choices("strategy.predicted", PREDICTED)


def build_strategy(cfg: StrategyConfig) -> Strategy:
    if cfg.name not in STRATEGIES:
        raise ValueError(f"unknown strategy {cfg.name!r} (known: {', '.join(STRATEGIES)})")
    return STRATEGIES[cfg.name](cfg)


def same_computation(configs: dict[str, StrategyConfig]) -> list[list[str]]:
    """Groups (two or more names, in the given order) of ``configs`` whose strategies have equal
    signatures: they train identically from the same seed."""
    groups: dict[str, list[str]] = {}
    for name, cfg in configs.items():
        key = json.dumps(build_strategy(cfg).signature(), sort_keys=True, default=str)
        groups.setdefault(key, []).append(name)
    return [names for names in groups.values() if len(names) > 1]
