"""Checkpoint integrity: checksums of the tensor files recorded at save and checked at load,
and finite weights, so a damaged checkpoint is named and never used."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

__all__ = ["CheckpointError", "digest", "nonfinite", "verify"]

TENSOR_FILES = ("model.safetensors", "optim.safetensors")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, damaged or holds non-finite weights: names the file."""


def digest(path: Path) -> str:
    """sha256 of a file, read block by block."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digests(folder: Path) -> dict[str, str]:
    """{file name: sha256} of the tensor files present in a checkpoint folder."""
    return {name: digest(folder / name) for name in TENSOR_FILES if (folder / name).is_file()}


def verify(folder: Path) -> str | None:
    """What is wrong with checkpoint ``folder`` (missing files, unreadable state.json, a
    tensor file whose sha256 differs from the one recorded at save), or None. Checkpoints
    written before checksums were recorded are checked for their files only."""
    if not (folder / "model.safetensors").is_file():
        return f"{folder / 'model.safetensors'}: missing"
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as exc:
        return f"{folder / 'state.json'}: unreadable ({exc})"
    for name, want in (state.get("files") or {}).items():
        path = folder / name
        if not path.is_file():
            return f"{path}: missing"
        if digest(path) != want:
            return f"{path}: damaged (sha256 differs from the one recorded at save)"
    return None


def nonfinite(named: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf."""
    return [k for k, v in named.items() if v.is_floating_point() and not torch.isfinite(v).all()]
