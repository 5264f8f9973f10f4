"""Prepacked linear layers for CPU inference, applied by ``gapless.load``.

``F.linear`` on CPU hands oneDNN a plain row-major weight, which oneDNN reorders into its
blocked layout at *every* call. A beam step calls 19 linears on a few hundred rows, so the
reorders are a fixed cost per step (most visible with small batches). ``PackedLinear`` reorders
the weight once (``torch.ops.mkldnn._reorder_linear_weight``, the packing PyTorch's own
inductor freezing pass uses) and multiplies with ``torch.ops.mkldnn._linear_pointwise``. The
results equal ``F.linear`` in bf16 (bit for bit in ``tests/test_packing.py``) and to float
rounding in fp32; timings against ``F.linear`` in ``benchmarks/cpu_tweaks.py``.

Packing is an inference detail: the module keeps the original parameters (state dict and
weight ties unchanged), falls back to ``F.linear`` whenever autograd needs the weight, off
CPU, or without oneDNN, and repacks when the weight changes (its version counter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PackedLinear", "pack_linears", "packing_available"]


def packing_available() -> bool:
    """oneDNN is built in and exposes the packed-linear ops."""
    ops = torch.ops.mkldnn
    try:
        return (torch.backends.mkldnn.is_available()
                and hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise"))
    except (AttributeError, RuntimeError):
        return False


class PackedLinear(nn.Module):
    """``nn.Linear`` [..., in] -> [..., out] with the weight packed once for oneDNN."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters (ties hold)
        self._packed: torch.Tensor | None = None
        self._key: tuple | None = None

    def _packed_weight(self) -> torch.Tensor:
        w = self.weight
        # inference tensors (made under torch.inference_mode) keep no version counter
        version = None if w.is_inference() else w._version
        key = (w.data_ptr(), version, w.dtype, tuple(w.shape))
        if key != self._key:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), None)
            self._key = key
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (x.device.type != "cpu" or x.dtype != w.dtype or w.device.type != "cpu"
                or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))):
            return F.linear(x, w, self.bias)
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x, self._packed_weight(), bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def pack_linears(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` in ``model`` by a ``PackedLinear`` sharing its parameters
    (when ``packing_available()``); returns how many were replaced."""
    if not packing_available():
        return 0
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear(child))
                count += 1
    return count
