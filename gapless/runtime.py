"""Process-wide runtime settings: device and precision, oneDNN's kernel cache, glibc malloc.

Nothing here runs at import; the entry points that need a setting apply it
(``configure_inference`` by ``gapless.inference.load``, ``release_free_memory`` by training).
Why each setting exists, with its measurements: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

import torch

__all__ = ["MALLOC_SETTINGS", "autocast", "configure_inference", "release_free_memory",
           "resolve_device", "tune_malloc"]

# mallopt parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MALLOC_SETTINGS = {
    M_MMAP_THRESHOLD: 32 << 20,  # glibc's maximum: the search's tensors come from the heap
    M_TRIM_THRESHOLD: 512 << 20,  # freed heap top kept for reuse
}
# oneDNN keeps one compiled kernel per matrix shape (1024 by default); search and bucketed
# batches cycle through more shapes than that
ONEDNN_CACHE = "16384"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, dtype: str):
    """bf16 autocast (fp32 master weights) on CPU and GPU, or nothing for fp32."""
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_inference(env: dict | None = None) -> None:
    """Settings for a process that decodes: a larger oneDNN kernel cache (read when oneDNN
    first runs, so set before the first bf16 matmul; an explicit setting wins) and the malloc
    thresholds of ``tune_malloc``."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE)
    tune_malloc(env)


def _glibc(env: dict | None):
    """glibc's C library, or None when ``GAPLESS_MALLOC=0`` or the C library is not glibc."""
    env = os.environ if env is None else env
    if env.get("GAPLESS_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tune_malloc(env: dict | None = None) -> bool:
    """Apply ``MALLOC_SETTINGS`` with glibc's ``mallopt`` so freed megabyte tensors stay in the
    heap for the next search step; True if every one was accepted. Skipped (False) when
    ``GAPLESS_MALLOC=0`` or the C library is not glibc."""
    libc = _glibc(env)
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS.items())


def release_free_memory(env: dict | None = None) -> bool:
    """Return the heap's free pages to the kernel (glibc ``malloc_trim(0)``); True if it ran.
    Batches of ever-new shapes leave freed blocks that glibc keeps, so training calls it once
    per log interval. Skipped when ``GAPLESS_MALLOC=0`` or the C library is not glibc."""
    libc = _glibc(env)
    if libc is None:
        return False
    trim = libc.malloc_trim
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
