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


def test_configure_inference_sets_the_onednn_cache_without_overriding(monkeypatch):
    from gapless.runtime import ONEDNN_CACHE, configure_inference

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    configure_inference({"GAPLESS_MALLOC": "0"})
    import os

    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == ONEDNN_CACHE
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "7")
    configure_inference({"GAPLESS_MALLOC": "0"})
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "7"


def test_importing_gapless_sets_no_environment(monkeypatch):
    import subprocess
    import sys

    code = ("import os; os.environ.pop('ONEDNN_PRIMITIVE_CACHE_CAPACITY', None); import gapless; "
            "print(os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"
