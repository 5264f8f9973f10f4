"""gapless.runtime: glibc malloc thresholds applied at import, with an opt-out."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from gapless.runtime import tune_malloc

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def test_opt_out_leaves_malloc_alone():
    assert tune_malloc({"GAPLESS_MALLOC": "0"}) is False


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_glibc_accepts_every_setting():
    assert tune_malloc({}) is True


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
@pytest.mark.parametrize("env,expected", [("1", "True"), ("0", "False")])
def test_import_applies_it_unless_opted_out(env, expected):
    out = subprocess.run([sys.executable, "-c", "import gapless; print(gapless.MALLOC_TUNED)"],
                         capture_output=True, text=True, check=True,
                         env={"GAPLESS_MALLOC": env, "PATH": ""})
    assert out.stdout.strip() == expected
