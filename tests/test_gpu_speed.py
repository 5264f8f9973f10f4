"""benchmarks/gpu_speed.py's CPU dry run: the JSON a GPU session will produce, its MFU computed
from the FLOPs counted on the timed batches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PEAK = 0.05  # TFLOP/s given on the command line: the CPU has no table entry
TRAIN_KEYS = {"model", "max_tokens", "compile", "dtype", "parameters", "steps",
              "tgt_tokens_per_s", "s_per_step", "warmup_s", "gflop_per_step",
              "flop_per_tgt_token", "cycle_flops", "cycle_tgt_tokens", "achieved_tflops", "mfu",
              "peak_memory_gib"}


@pytest.fixture(scope="module")
def doc() -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_speed", "--dry-run",
                           "--peak-tflops", str(PEAK)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_dry_run_writes_every_row_and_key(doc):
    assert {"machine", "device", "peak_tflops_bf16_dense", "peak_source", "protocol",
            "fused_kernels", "train", "decode", "elapsed_s"} <= doc.keys()
    assert doc["dry_run"] and doc["device"] == "cpu" and doc["fused_kernels"] is None
    assert doc["peak_tflops_bf16_dense"] == PEAK and doc["peak_source"] == "--peak-tflops"
    assert [(r["model"], r["max_tokens"], r["compile"]) for r in doc["train"]] == [
        ("dry", 300, False), ("dry", 600, False)]
    for row in doc["train"]:
        assert TRAIN_KEYS <= row.keys(), row
        assert row["dtype"] == "fp32" and row["tgt_tokens_per_s"] > 0
    assert [r["batch_size"] for r in doc["decode"]] == [4, 8]
    for row in doc["decode"]:
        assert row["beam"] == 5 and row["sentences_per_s"] > 0
        assert row["pieces_per_sentence"] == 5  # min_len = max_len: the work is fixed


def test_mfu_comes_from_the_counted_flops(doc):
    d_model, vocab = doc["protocol"]["sizes"]["dry"]["d_model"], doc["protocol"]["vocab"]
    for row in doc["train"]:
        flops, tokens = row["cycle_flops"], row["cycle_tgt_tokens"]
        assert len(flops) == len(tokens) == row["batches_in_cycle"] > 0
        assert all(f > 0 for f in flops)
        per_token = sum(flops) / sum(tokens)
        assert row["flop_per_tgt_token"] == round(per_token)
        assert row["gflop_per_step"] == pytest.approx(sum(flops) / len(flops) / 1e9, abs=1e-3)
        # at least the output projection's forward + backward (2 x 3 FLOPs per weight)
        assert per_token > 6 * d_model * vocab
        achieved = per_token * row["tgt_tokens_per_s"] / 1e12
        assert row["achieved_tflops"] == pytest.approx(achieved, rel=1e-2)
        assert row["mfu"] > 0 and row["mfu"] == pytest.approx(achieved / PEAK, rel=1e-2)


def test_peak_table_names_the_devices_and_the_override_wins(monkeypatch):
    import torch

    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.gpu_speed import PEAK_TFLOPS, device_peak

    assert PEAK_TFLOPS["H200"] == PEAK_TFLOPS["H100"] == 989
    assert PEAK_TFLOPS["A100"] == 312 and PEAK_TFLOPS["L40S"] == 362
    # the first contained name wins: the specific H100 variants come before "H100"
    names = list(PEAK_TFLOPS)
    assert names.index("H100 PCIe") < names.index("H100") and names.index("GH200") < names.index(
        "H200")
    assert device_peak(torch.device("cpu"), 7.0) == (7.0, "--peak-tflops")
    assert device_peak(torch.device("cpu"), None)[0] is None
