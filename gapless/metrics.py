"""Scores: sacreBLEU BLEU and chrF with signatures (corpus level, detokenised text vs raw
references), and a vectorised smoothed sentence BLEU on token ids for the oracles."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Score:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    bleu_detail: str
    length_ratio: float

    def to_dict(self) -> dict:
        return asdict(self)


def corpus_scores(hypotheses: list[str], references: list[str]) -> Score:
    """BLEU (13a, mixed case, exp smoothing) and chrF, both with their sacreBLEU signatures."""
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu, chrf = BLEU(), CHRF()
    b = bleu.corpus_score(hypotheses, [references])
    c = chrf.corpus_score(hypotheses, [references])
    return Score(
        bleu=round(b.score, 2),
        chrf=round(c.score, 2),
        bleu_signature=str(bleu.get_signature()),
        chrf_signature=str(chrf.get_signature()),
        bleu_detail=str(b),
        length_ratio=round(b.sys_len / max(b.ref_len, 1), 4),
    )
