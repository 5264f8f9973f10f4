"""gapless.analysis.explain: the arithmetic claims of methods.md 7 on small tensors, the rules
that turn numbers into verdicts (they must be able to fail), and ``gapless explain`` end to
end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gapless.analysis.explain import (
    CLAIMS,
    attention_probs,
    attention_scores,
    diagonal_dominance,
    embedding_parameter_counts,
    equal_norm_tokens,
    head_statistics,
    score_variance,
    sentence_output,
)
from gapless.cli import main
from gapless.config import ModelConfig
from gapless.layers import Attention
from gapless.model import Transformer


def _attn(projections: str, d: int = 16, h: int = 2) -> Attention:
    torch.manual_seed(0)
    return Attention(ModelConfig(d_model=d, n_heads=h, projections=projections), cross=False)


def test_shared_qk_scores_are_exactly_symmetric():
    x = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(1))
    exact = attention_scores(_attn("shared_qk"), x, exact=True)  # [B,H,T,T]
    assert torch.equal(exact, exact.transpose(-1, -2))
    # the BLAS matmul the model uses agrees up to accumulation order
    assert torch.allclose(attention_scores(_attn("shared_qk"), x), exact, atol=1e-5)


def test_separate_projections_scores_are_not_symmetric():
    x = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(1))
    s = attention_scores(_attn("separate"), x, exact=True)
    asymmetry = (s - s.transpose(-1, -2)).norm() / s.norm()
    assert asymmetry > 0.5


def test_without_projections_a_token_attends_most_to_itself():
    x = equal_norm_tokens(4, 10, 32, seed=3)  # equal norms: Cauchy-Schwarz applies
    scores = attention_scores(_attn("none", 32, 1), x, exact=True)
    diag = scores.diagonal(dim1=-2, dim2=-1)
    assert (scores <= diag[..., None] + 1e-5).all()
    none = diagonal_dominance(attention_probs(_attn("none", 32, 1), x))
    assert none["diag_argmax_fraction"] == 1.0
    assert none["mean_diag_weight"] > 0.5
    separate = diagonal_dominance(attention_probs(_attn("separate", 32, 1), x))
    assert separate["diag_argmax_fraction"] < 0.5
    assert separate["mean_diag_weight"] < 0.3


@pytest.mark.parametrize("d_k", [16, 128])
def test_score_variance_grows_with_d_k_unscaled_and_stays_one_scaled(d_k):
    # 4000 samples: the relative standard error of a variance is ~2%; tolerance ~7 of them
    assert 0.85 < score_variance(d_k, "none", n=4000) / d_k < 1.15
    assert 0.85 < score_variance(d_k, "sqrt", n=4000) < 1.15
    assert 0.7 < score_variance(d_k, "qk_norm", n=4000) < 1.4


def test_tying_removes_exactly_one_table_each():
    v, d = 50, 16
    cfg = ModelConfig(d_model=d, n_heads=2, ffn_dim=32, enc_layers=1, dec_layers=1, vocab_size=v)
    counts = embedding_parameter_counts(cfg)
    assert counts["untied"] - counts["tie_encoder_decoder"] == v * d
    assert counts["untied"] - counts["tie_output"] == v * d
    assert counts["untied"] - counts["tie_both"] == 2 * v * d
    both = Transformer(cfg)  # defaults tie both: one table serves all three uses
    assert both.src_embed.weight is both.tgt_embed.weight is both.output.weight


def test_batchnorm_output_depends_on_the_batch_layernorm_does_not():
    sentence, others = [5, 6, 7, 8], [[9, 10], [11, 12, 13, 14, 15, 16], [17]]
    change = {}
    for norm in ("layer", "batch"):
        torch.manual_seed(0)
        model = Transformer(ModelConfig(d_model=16, n_heads=2, ffn_dim=32, enc_layers=1,
                                        dec_layers=1, vocab_size=30, norm=norm, dropout=0.0))
        alone = sentence_output(model, sentence, [])
        change[norm] = float((alone - sentence_output(model, sentence, others)).abs().max())
        # padding alone changes nothing when the norms see only real tokens
        padded = sentence_output(model, sentence, others, pad_columns=5)
        assert torch.allclose(padded, sentence_output(model, sentence, others), atol=1e-5)
    assert change["layer"] < 1e-5
    assert change["batch"] > 1e-2


def test_head_statistics_on_hand_made_attention():
    t = 5
    eye = torch.eye(t)
    prev = torch.zeros(t, t)
    prev[0, 0] = 1.0
    prev[torch.arange(1, t), torch.arange(t - 1)] = 1.0  # each token attends to its predecessor
    uniform = torch.full((t, t), 1 / t)
    probs = torch.stack([eye, prev, uniform])[None]  # [B=1,H=3,T,T]
    stats = head_statistics(probs, torch.ones(1, t, dtype=torch.bool))
    assert stats["entropy"][0].tolist() == pytest.approx([0, 0, math.log(t)], abs=1e-6)
    assert stats["self"][0, 0] == 1 and stats["prev"][0, 1] == pytest.approx((t - 1) / t)
    assert stats["distance"][0, 1] == pytest.approx((t - 1) / t)


def test_rules_can_fail():
    """The same rule that passes on the measured numbers fails on numbers that contradict it."""
    sym = {"max_asymmetry_exact_shared_qk": 0.0, "max_asymmetry_matmul_shared_qk": 0.0,
           "relative_asymmetry_separate": 1.4, "previous_token_prob_shared_qk": 0.3,
           "previous_token_prob_separate": 0.9}
    assert all(CLAIMS["shared_qk"].checks(sym).values())
    assert not all(CLAIMS["shared_qk"].checks({**sym, "max_asymmetry_exact_shared_qk": 1e-7})
                   .values())
    selfish = {"diag_argmax_fraction_none": {"16": 1.0, "64": 1.0},
               "mean_diag_weight_none": {"64": 0.99},
               "diag_argmax_fraction_separate": {"16": 0.05, "64": 0.05}}
    assert all(CLAIMS["no_projection"].checks(selfish).values())
    selfish["diag_argmax_fraction_none"]["16"] = 0.95
    assert not all(CLAIMS["no_projection"].checks(selfish).values())


def test_cli_runs_claims_and_writes_json_png_markdown(tmp_path, capsys):
    assert main(["explain", "no_projection", "--out", str(tmp_path), "--quick"]) == 0
    assert "verdict: HELD" in capsys.readouterr().out
    assert main(["explain", "head_size", "--out", str(tmp_path), "--quick"]) == 0
    results = json.loads((tmp_path / "explain.json").read_text())
    assert set(results) == {"no_projection", "head_size"}  # a later run adds, keeps the rest
    r = results["no_projection"]
    assert r["held"] is True and all(r["checks"].values())
    assert r["numbers"]["diag_argmax_fraction_none"]["64"] == 1.0
    assert "gapless explain no_projection" in r["command"]
    png = tmp_path / "no_projection.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    md = (tmp_path / "explain.md").read_text()
    assert "![no_projection](no_projection.png)" in md and "## head_size" in md


def test_cli_unknown_claim_lists_the_known_ones(tmp_path, capsys):
    assert main(["explain", "nonsense", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nonsense" in err and "shared_qk" in err
