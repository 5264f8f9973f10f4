"""gapless.runtime: glibc malloc thresholds for inference, with an opt-out (``load`` applying
them is checked in tests/test_cli.py)."""

from __future__ import annotations

import platform
import sys

import pytest

from gapless.runtime import tune_malloc

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def test_opt_out_leaves_malloc_alone():
    assert tune_malloc({"GAPLESS_MALLOC": "0"}) is False


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_glibc_accepts_every_setting():
    assert tune_malloc({}) is True


def test_release_free_memory_opt_out_and_glibc():
    from gapless.runtime import release_free_memory

    assert release_free_memory({"GAPLESS_MALLOC": "0"}) is False
    if GLIBC:
        assert release_free_memory({}) is True
