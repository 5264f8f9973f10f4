"""glibc malloc settings. ``tune_malloc``: thresholds for CPU inference speed, applied by
``gapless.load`` (the entry of ``gapless translate / evaluate / diagnose`` and of the Python
API); training does not apply them (they raised bf16 training's peak RSS from 2.9 to 3.5 GB
for no measured gain). ``release_free_memory``: ``malloc_trim``, which training calls once per
log interval to hand the heap's free pages back (peak RSS of ``benchmarks/train_speed.py``
bf16: 2.8 / 2.6 GB with it, 3.5 / 3.5 GB without, speed within the machine's drift;
``docs/benchmarks.md``).

glibc's malloc serves blocks above its mmap threshold (dynamic, starting at 128 KiB) with
fresh ``mmap`` pages and returns freed heap tops above its trim threshold to the kernel. A
beam-search step allocates and frees megabyte tensors ([320, 8000] fp32 log-probs = 10 MB),
so each step paid page faults on fresh pages (in a profile, the fp32 conversion of the
[320, 8000] logits took ~10x its isolated time). Fixing both thresholds keeps freed blocks in
the heap for reuse, what jemalloc/tcmalloc preloading does for PyTorch CPU inference; A/B in
``benchmarks/cpu_tweaks.py``. Set ``GAPLESS_MALLOC=0`` to leave malloc alone (both). Not
glibc (macOS, musl): nothing happens.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MALLOC_SETTINGS", "release_free_memory", "tune_malloc"]

# mallopt parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MALLOC_SETTINGS = {
    M_MMAP_THRESHOLD: 32 << 20,  # glibc's maximum: tensors up to 32 MiB come from the heap
    M_TRIM_THRESHOLD: 512 << 20,  # keep up to 512 MiB of freed heap top for reuse
}


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
    """Apply ``MALLOC_SETTINGS`` with glibc's ``mallopt``; True if every one was accepted.
    Skipped (False) when ``GAPLESS_MALLOC=0`` or the C library is not glibc."""
    libc = _glibc(env)
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS.items())


def release_free_memory(env: dict | None = None) -> bool:
    """Return the heap's free pages to the kernel (glibc ``malloc_trim(0)``); True if it ran.
    Training calls it once per log interval: batches of ever-new shapes leave freed blocks
    that glibc keeps, so without it RSS climbs step after step with no live tensor behind it.
    Skipped when ``GAPLESS_MALLOC=0`` or the C library is not glibc."""
    libc = _glibc(env)
    if libc is None:
        return False
    trim = libc.malloc_trim
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
