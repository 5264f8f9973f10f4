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


def sentence_bleu(hyps, refs, pad_id: int = 0, max_order: int = 4):
    """Smoothed sentence BLEU in [0, 1] of each row, on token ids, vectorised (for the oracles).
    hyps [N,Lh], refs [N,Lr]: ids, right-padded with ``pad_id``. -> [N] float.

    BLEU+1 (Lin & Och 2004): n-gram precisions of order n > 1 are (matches + 1) / (count + 1),
    so a sentence without a 4-gram match still scores > 0; unigram precision unsmoothed (no
    unigram match: 0); geometric mean times the brevity penalty exp(min(0, 1 - r / c)).
    Clipped matches without building n-gram dictionaries: for hypothesis n-gram j with
    c_h(j) copies in the hypothesis and c_r(j) in the reference, sum_j min(c_h, c_r) / c_h(j)
    is the clipped match count (each distinct n-gram contributes c_h times)."""
    import torch

    hyps, refs = torch.as_tensor(hyps), torch.as_tensor(refs)
    n_rows = hyps.shape[0]
    hyp_len, ref_len = hyps.ne(pad_id).sum(1), refs.ne(pad_id).sum(1)  # [N]
    log_prec = torch.zeros(n_rows, dtype=torch.float64, device=hyps.device)
    no_unigram = torch.zeros(n_rows, dtype=torch.bool, device=hyps.device)
    for n in range(1, max_order + 1):
        h_grams, h_ok = _ngrams(hyps, hyp_len, n)  # [N,Gh,n], [N,Gh]
        r_grams, r_ok = _ngrams(refs, ref_len, n)
        count = h_ok.sum(1).double()  # [N]
        if h_grams.shape[1] and r_grams.shape[1]:
            same_h = (h_grams[:, :, None] == h_grams[:, None]).all(-1) & h_ok[:, None]  # [N,Gh,Gh]
            same_r = (h_grams[:, :, None] == r_grams[:, None]).all(-1) & r_ok[:, None]  # [N,Gh,Gr]
            c_h = same_h.sum(-1).double().clamp_min(1)
            c_r = same_r.sum(-1).double()
            matches = (torch.minimum(c_h, c_r) / c_h * h_ok).sum(1).round()
        else:
            matches = torch.zeros_like(count)
        if n == 1:
            no_unigram = matches.eq(0)
            log_prec += torch.log(matches.clamp_min(1) / count.clamp_min(1))
        else:
            log_prec += torch.log((matches + 1) / (count + 1))
    c, r = hyp_len.double().clamp_min(1), ref_len.double()
    log_bp = torch.clamp(1 - r / c, max=0.0)
    bleu = torch.exp(log_prec / max_order + log_bp)
    return bleu.masked_fill(no_unigram, 0.0).float()


def _ngrams(ids, lengths, n: int):
    """All n-grams of each row: ([N,L-n+1,n] ids, [N,L-n+1] whether inside the real tokens)."""
    import torch

    L = ids.shape[1]
    if L < n:
        empty = ids.new_zeros(ids.shape[0], 0, n)
        return empty, torch.zeros(ids.shape[0], 0, dtype=torch.bool, device=ids.device)
    grams = ids.unfold(1, n, 1)  # [N,L-n+1,n]
    start = torch.arange(L - n + 1, device=ids.device)
    return grams, start[None] + n <= lengths[:, None]
