"""Prepacked linears (gapless/packing.py): the same outputs as nn.Linear, ties and state dict
kept, autograd falls back, repacked after the weight changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gapless.config import ModelConfig
from gapless.model import Transformer
from gapless.packing import PackedLinear, pack_linears, packing_available

pytestmark = pytest.mark.skipif(not packing_available(), reason="no oneDNN packed linear")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_equals_linear(dtype, bias):
    torch.manual_seed(0)
    lin = nn.Linear(48, 80, bias=bias).to(dtype)
    packed = PackedLinear(lin)
    x = torch.randn(7, 3, 48).to(dtype)
    with torch.no_grad():
        want, got = lin(x), packed(x)
    assert got.shape == want.shape == (7, 3, 80)
    if dtype == torch.bfloat16:  # oneDNN computes both: the same kernel, bit for bit
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert packed._packed is not None  # the packed path ran, not the fallback


def test_packed_linear_repacks_after_an_update_and_falls_back_under_autograd():
    torch.manual_seed(1)
    lin = nn.Linear(16, 8)
    packed = PackedLinear(lin)
    x = torch.randn(4, 16)
    with torch.no_grad():
        packed(x)
        first = packed._packed
        lin.weight.mul_(2.0)  # in place, as an optimizer step: the version counter moves
        torch.testing.assert_close(packed(x), F.linear(x, lin.weight, lin.bias))
    assert packed._packed is not first
    packed(x).sum().backward()  # grad enabled: plain F.linear, gradients reach the weight
    torch.testing.assert_close(lin.weight.grad, x.sum(0).expand(8, 16))


def make_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(d_model=32, n_heads=2, ffn_dim=48, enc_layers=2,
                                   dec_layers=2, vocab_size=24, max_positions=32))


def test_pack_linears_keeps_ties_state_and_decoding():
    model = make_model().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(2)
    src, tgt = torch.randint(4, 24, (3, 6), generator=g), torch.randint(4, 24, (3, 5), generator=g)
    with torch.no_grad():
        want = model(src, tgt)
        n = pack_linears(model)
        got = model(src, tgt)
    n_linear = sum(1 for m in make_model().modules() if type(m) is nn.Linear)
    assert n == n_linear > 0
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert model.output.weight is model.tgt_embed.weight  # the output tie survives
    assert model.state_dict().keys() == state.keys()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_packed_linear_under_inference_mode():
    """Weights made under torch.inference_mode have no version counter: packing still works."""
    with torch.inference_mode():
        lin = nn.Linear(8, 4)
        packed = PackedLinear(lin)
        x = torch.randn(2, 8)
        torch.testing.assert_close(packed(x), lin(x), rtol=1e-5, atol=1e-5)
    plain = PackedLinear(nn.Linear(8, 4))
    with torch.inference_mode():
        assert plain(torch.randn(2, 8)).shape == (2, 4)
