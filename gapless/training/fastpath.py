"""The accelerator side of a training step: batches pinned and copied without blocking, the
source's padding checked on the host, and the optionally compiled step module."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..data import PAD

__all__ = ["compile_step", "pin", "src_padded", "to_device"]


def pin(batch, device: torch.device):
    """``batch`` with its tensors in page-locked host memory when ``device`` is CUDA, so that
    their copy to the device can run without blocking the host; elsewhere the batch itself
    (on CPU: a no-op, same object)."""
    if device.type != "cuda":
        return batch
    return _map_tensors(batch, lambda t: t if t.is_pinned() else t.pin_memory())


def to_device(batch, device: torch.device):
    """The collated host ``batch`` on ``device``: pinned first, then copied with
    ``non_blocking=True`` on CUDA (the host goes on to collate the next micro-batch while the
    copy runs); on CPU the batch itself."""
    if device.type == "cpu":
        return batch
    return _map_tensors(pin(batch, device), lambda t: t.to(device, non_blocking=True))


def src_padded(batch) -> bool:
    """Whether the (host) batch's source holds padding. Read before the copy, so asking costs
    no device sync; ``False`` lets attention run without a source key mask."""
    return bool(batch.src.eq(PAD).any())


def _map_tensors(batch, f):
    """A copy of the dataclass ``batch`` with ``f`` applied to each of its tensor fields."""
    changes = {}
    for field in dataclasses.fields(batch):
        value = getattr(batch, field.name)
        if isinstance(value, torch.Tensor):
            changes[field.name] = f(value)
    return dataclasses.replace(batch, **changes)


def compile_step(module: nn.Module, enabled: bool) -> nn.Module:
    """``module`` (the criterion, or DDP around it) compiled in place by ``nn.Module.compile``
    when ``enabled`` (``train.compile``). In place, the model object is untouched: its state
    dict, which checkpoints hold, keeps its keys (no ``_orig_mod.`` prefix), and the optimizer
    and validation keep using it. DDP compiled as a whole is torch's supported order (Dynamo
    splits the graph at DDP's gradient buckets). Shapes are dynamic from the first batch:
    every batch has its own lengths."""
    if enabled:
        module.compile(dynamic=True)
    return module
