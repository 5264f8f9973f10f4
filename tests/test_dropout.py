"""gapless.dropout: the CPU dropout drawn from 16-bit slices of 64-bit random words.

Statistics against the binomial (5 sd bands on a million elements), independence of the four
slices of a word, exact scaling, the gradient, seeding, eval identity, and the model using it.
"""

from __future__ import annotations

import math

import pytest
import torch

from gapless.config import ModelConfig
from gapless.dropout import Dropout, dropout, keep_mask
from gapless.model import Transformer

N = 1_000_000


def _band(p: float, n: int) -> float:
    return 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_drop_rate_is_p(p):
    torch.manual_seed(0)
    dropped = 1 - keep_mask((N,), p).float().mean().item()
    assert abs(dropped - p) < _band(p, N)


def test_the_four_slices_of_a_word_are_independent():
    """Elements 4k+i and 4k+j come from one 64-bit word: both dropped with probability p**2,
    and each slice position alone at rate p (a sign bit stuck at 0 would keep slice 3)."""
    p = 0.3
    torch.manual_seed(1)
    drop = ~keep_mask((N // 4, 4), p)
    for i in range(4):
        assert abs(drop[:, i].float().mean().item() - p) < _band(p, N // 4)
    for i, j in [(0, 1), (1, 2), (2, 3), (0, 3)]:
        both = (drop[:, i] & drop[:, j]).float().mean().item()
        assert abs(both - p * p) < _band(p * p, N // 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kept_elements_are_scaled_and_the_gradient_is_the_mask(dtype):
    p = 0.2
    x = torch.randn(7, 13, 3, dtype=dtype).requires_grad_()  # 273 elements: not a multiple of 4
    torch.manual_seed(2)
    y = dropout(x, p)
    assert y.shape == x.shape and y.dtype == dtype
    kept = y != 0
    torch.testing.assert_close(y[kept], (x[kept].float() / (1 - p)).to(dtype))
    y.backward(torch.ones_like(y))
    expected = kept.to(dtype) / (1 - p)
    torch.testing.assert_close(x.grad, expected.to(dtype))


def test_seeded_masks_repeat_and_differ_across_seeds():
    x = torch.ones(1000)
    torch.manual_seed(3)
    a = dropout(x, 0.5)
    torch.manual_seed(3)
    b = dropout(x, 0.5)
    torch.manual_seed(4)
    c = dropout(x, 0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_eval_mode_and_p0_are_the_identity():
    x = torch.randn(5, 8)
    module = Dropout(0.4).eval()
    assert module(x) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)


def test_expectation_is_preserved():
    torch.manual_seed(5)
    y = dropout(torch.ones(N), 0.25)
    assert abs(y.mean().item() - 1.0) < 5 * math.sqrt(0.25 / 0.75 / N)


def test_the_model_uses_it_in_training_only():
    cfg = ModelConfig(vocab_size=50, d_model=16, n_heads=2, ffn_dim=32, enc_layers=1,
                      dec_layers=1, dropout=0.3, attn_dropout=0.1, act_dropout=0.1)
    model = Transformer(cfg)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    src = torch.randint(4, 50, (3, 6))
    tgt = torch.randint(4, 50, (3, 5))
    model.eval()
    assert torch.equal(model(src, tgt), model(src, tgt))
    model.train()
    torch.manual_seed(0)
    a = model(src, tgt)
    torch.manual_seed(0)
    assert torch.equal(a, model(src, tgt))
    assert not torch.equal(a, model(src, tgt))
