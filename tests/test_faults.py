"""Faults and bad input (issue 13): each case as a test. Damaged or missing checkpoints, a
second training on one run, a torn log line, non-finite losses and weights."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_train import _cfg, _write_corpus

from gapless.checkpoint import RunDir
from gapless.cli import main
from gapless.prepare import prepare
from gapless.runlock import RunLock, RunLocked
from gapless.training import train
from gapless.training.criterion import Criterion
from gapless.training.trainer import NonFiniteLoss
from gapless.verify import CheckpointError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained 20 updates with checkpoints at 10 and 20 (keep_last 3), copied per test."""
    root = tmp_path_factory.mktemp("faults")
    corpus = _write_corpus(root / "corpus", 200)
    run = root / "run"
    prepare(_cfg(corpus), run)
    train(_cfg(corpus, **{"train.max_updates": 20}), run)
    return corpus, run


@pytest.fixture
def run(trained, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(trained[1], dest)
    return dest


def _damage(path, offset=2000, size=4096):
    data = bytearray(path.read_bytes())
    data[offset:offset + size] = os.urandom(min(size, len(data) - offset))
    path.write_bytes(bytes(data))


def _model(run):
    from gapless.model import Transformer

    return Transformer(RunDir(run).load_config().model)


def test_damaged_weights_are_named_and_the_intact_checkpoint_offered(run, capsys, caplog):
    step20 = run / "checkpoints" / "step_00000020"
    _damage(step20 / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"step_00000020/model.safetensors: damaged.*"
                                              r"newest intact checkpoint is .*step_00000010"):
        RunDir(run).load_weights(_model(run), step20)
    assert main(["translate", str(run), "--checkpoint", str(step20), "--device", "cpu",
                 "--input", os.devnull]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "step_00000020/model.safetensors: damaged" in err
    # ``last`` points at the damaged one: it falls back to the intact step 10, saying so
    with caplog.at_level(logging.WARNING):
        assert main(["translate", str(run), "--checkpoint", "last", "--device", "cpu",
                     "--input", os.devnull]) == 0
    assert "using" in caplog.text and "step_00000010" in caplog.text


def test_a_damaged_last_falls_back_and_resume_keeps_the_intact_checkpoint(trained, run,
                                                                           caplog):
    corpus = trained[0]
    _damage(run / "checkpoints" / "step_00000020" / "model.safetensors")
    with caplog.at_level(logging.WARNING):
        state = train(_cfg(corpus, **{"train.max_updates": 30}), run)
    assert "newest checkpoint that verifies" in caplog.text
    assert state.update == 30  # resumed from 10, not from 0
    log = RunDir(run).read_log()
    # the records of the lost updates 11-20 were cut; each update is logged once
    assert [r["update"] for r in log if r["kind"] == "train"] == [5, 10, 15, 20, 25, 30]
    assert (run / "checkpoints" / "step_00000010").is_dir()  # never deleted by rotation
    weights = load_file(str(run / "checkpoints" / "step_00000030" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


@pytest.mark.parametrize("pointer", ["missing", "garbage", "dangling"])
def test_last_pointer_missing_or_broken_resolves_from_the_folders(trained, run, pointer):
    last = run / "checkpoints" / "last.json"
    if pointer == "missing":
        last.unlink()
    elif pointer == "garbage":
        last.write_text("{not json")
    else:
        last.write_text(json.dumps({"dir": "step_00000999"}))
    state = train(_cfg(trained[0], **{"train.max_updates": 25}), run)
    assert state.update == 25
    updates = [r["update"] for r in RunDir(run).read_log() if r["kind"] == "train"]
    assert updates[:2] == [5, 10] and 25 in updates  # history kept: not started over


def test_unusable_checkpoints_need_restart_which_says_what_it_discards(trained, run, caplog):
    for step in ("step_00000010", "step_00000020"):
        _damage(run / "checkpoints" / step / "model.safetensors")
    cfg = _cfg(trained[0], **{"train.max_updates": 5})
    with pytest.raises(CheckpointError, match="--restart starts over"):
        train(cfg, run)
    with caplog.at_level(logging.WARNING):
        state = train(cfg, run, restart=True)
    assert "discarded" in caplog.text and "step_00000020" in caplog.text
    assert state.update == 5 and not (run / "checkpoints" / "step_00000020").exists()


def test_non_finite_weights_are_refused_at_load_and_at_save(run):
    model = _model(run)
    RunDir(run).load_weights(model, "last")
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="refusing to save non-finite weights"):
        RunDir(run).save(model, None, {"update": 21})
    assert not (run / "checkpoints" / "step_00000021").exists()
    # a checkpoint written by something else, checksums recorded but NaN inside
    from safetensors.torch import save_model

    folder = run / "checkpoints" / "step_00000020"
    save_model(model, str(folder / "model.safetensors"))
    state = json.loads((folder / "state.json").read_text())
    state.pop("files")
    (folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="non-finite weights"):
        RunDir(run).load_weights(_model(run), folder)


def _nan_after(n_calls: int, monkeypatch):
    calls = {"n": 0}
    original = Criterion.forward

    def forward(self, batch, progress, *args, **kwargs):
        loss, size, logging_output = original(self, batch, progress, *args, **kwargs)
        calls["n"] += 1
        if torch.is_grad_enabled() and calls["n"] == n_calls + 1:  # one poisoned batch
            loss = loss * float("nan")
            logging_output = {**logging_output, "loss": loss.detach()}
        return loss, size, logging_output

    monkeypatch.setattr(Criterion, "forward", forward)


def test_non_finite_loss_stops_before_any_checkpoint(trained, run, monkeypatch):
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    _nan_after(2, monkeypatch)
    with pytest.raises(NonFiniteLoss, match="non-finite loss at update 23.*step_00000020"):
        train(_cfg(trained[0], **{"train.max_updates": 40}), run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_non_finite_loss_skip_counts_the_skipped_updates(trained, run, monkeypatch):
    _nan_after(2, monkeypatch)
    cfg = _cfg(trained[0], **{"train.max_updates": 24, "train.nonfinite": "skip"})
    state = train(cfg, run)
    assert state.update == 24 and state.extra["skipped_updates"] == 1
    weights = load_file(str(RunDir(run).pointer("last") / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_a_second_training_on_one_run_is_refused_naming_the_holder(trained, run):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run / "train.lock").write_text(json.dumps(
            {"pid": holder.pid, "host": RunLock(run).me["host"], "since": "now"}))
        with pytest.raises(RunLocked, match=f"already being trained by process {holder.pid}"):
            train(_cfg(trained[0], **{"train.max_updates": 25}), run)
        assert main(["train", "tiny", "--run-dir", str(run), "--data.corpus",
                     str(trained[0])]) == 2
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(trained, run, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / "train.lock").write_text(json.dumps(
        {"pid": dead.pid, "host": RunLock(run).me["host"], "since": "then"}))
    with caplog.at_level(logging.WARNING):
        state = train(_cfg(trained[0], **{"train.max_updates": 25}), run)
    assert state.update == 25 and "stale lock" in caplog.text
    assert not (run / "train.lock").exists()  # released at the end


def test_a_torn_last_log_line_is_skipped_with_a_warning(trained, run, caplog):
    with open(run / "log.jsonl", "a") as f:
        f.write('{"kind": "train", "upd')  # a write cut short (disk full)
    with caplog.at_level(logging.WARNING):
        records = RunDir(run).read_log()
    assert records and "torn last line" in caplog.text
    state = train(_cfg(trained[0], **{"train.max_updates": 25}), run)
    assert state.update == 25
    lines = (run / "log.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # the resume rewrote it whole


def test_a_damaged_line_inside_the_log_is_an_error_naming_it(run):
    lines = (run / "log.jsonl").read_text().splitlines()
    lines[1] = "garbage"
    (run / "log.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(CheckpointError, match=r"log.jsonl:2: not a JSON record"):
        RunDir(run).read_log()


# ----------------------------------------------------------------------------------------------
# translate: line-faithful, one bad line never ruins the others


def _translate(run, tmp_path, data: bytes, *extra) -> tuple[int, list[str]]:
    src, out = tmp_path / "in.de", tmp_path / "out.en"
    src.write_bytes(data)
    code = main(["translate", str(run), "--input", str(src), "--output", str(out), "--beam", "1",
                 "--device", "cpu", *extra])
    return code, out.read_text(encoding="utf-8").split("\n")[:-1] if out.exists() else []


def test_a_carriage_return_inside_a_line_keeps_lines_one_to_one(run, tmp_path):
    code, lines = _translate(run, tmp_path, "ein Hund\rläuft\nzwei Katzen\r\n".encode())
    assert code == 0 and len(lines) == 2


def test_an_over_long_line_is_truncated_or_emptied_naming_it(run, tmp_path, caplog):
    long = " ".join(["Hund"] * 10000)
    data = f"ein Hund\n{long}\nzwei Katzen\n".encode()
    with caplog.at_level(logging.WARNING):
        code, lines = _translate(run, tmp_path, data)
    assert code == 0 and len(lines) == 3 and "input line 2:" in caplog.text
    code, lines = _translate(run, tmp_path, data, "--long-lines", "empty")
    assert code == 0 and len(lines) == 3 and lines[1] == "" and lines[0] and lines[2]


def test_invalid_utf8_names_the_line_and_the_rest_is_translated(run, tmp_path, capsys, caplog):
    with caplog.at_level(logging.WARNING):
        code, lines = _translate(run, tmp_path, b"ein Hund\n\xff\xfe kaputt\nzwei Katzen\n")
    assert code == 0 and len(lines) == 3 and lines[1] == "" and lines[0] and lines[2]
    assert "in.de:2: invalid UTF-8" in caplog.text
    assert "first: line 2" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--beam", "0"], ["--beam", "-1"], ["--batch-size", "-1"],
                                  ["--n-best", "0"], ["--beam", "two"]])
def test_bad_decode_options_are_refused_by_the_cli(run, args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["translate", str(run), *args])
    assert exc.value.code == 2 and args[0] in capsys.readouterr().err


def test_ctrl_c_exits_130_in_one_line_and_leaves_no_partial_output(run, tmp_path, capsys,
                                                                  monkeypatch):
    from gapless.inference import TextEngine

    real = TextEngine.translate
    calls = {"n": 0}

    def interrupted(self, lines, first_line=1, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return real(self, lines, first_line, **kwargs)

    monkeypatch.setattr(TextEngine, "translate", interrupted)
    lines = "".join(f"ein Hund {i}\n" for i in range(2500)).encode()
    code, out = _translate(run, tmp_path, lines)
    assert code == 130 and out == [] and not list(tmp_path.glob(".out.en*"))
    assert capsys.readouterr().err == "gapless: interrupted\n"
    with pytest.raises(KeyboardInterrupt):  # --debug: the traceback
        main(["--debug", "translate", str(run), "--input", str(tmp_path / "in.de"), "--beam",
              "1", "--device", "cpu"])


def test_a_truncated_weights_file_is_named_and_the_intact_checkpoint_offered(run):
    weights = run / "checkpoints" / "step_00000020" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"step_00000020/model.safetensors: damaged.*"
                                              r"step_00000010"):
        RunDir(run).load_weights(_model(run), weights.parent)
    state = json.loads((weights.parent / "state.json").read_text())
    state.pop("files")  # a checkpoint without checksums: safetensors' own error, named
    (weights.parent / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"step_00000020/model.safetensors: unreadable"):
        RunDir(run).load_weights(_model(run), weights.parent)


def test_disk_full_while_saving_names_the_checkpoint_and_keeps_the_others(run, monkeypatch):
    import errno

    import gapless.checkpoint as ckpt

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_model", full)
    with pytest.raises(CheckpointError, match=r"step_00000021: could not write the checkpoint "
                                              r"\(.*No space left.*earlier checkpoints are intact"):
        RunDir(run).save(_model(run), None, {"update": 21})
    assert not list((run / "checkpoints").glob(".step_*"))
    assert RunDir(run).pointer("last").name == "step_00000020"


def test_a_bad_override_value_is_one_line_not_a_traceback(trained, tmp_path, capsys):
    code = main(["train", "tiny", "--run-dir", str(tmp_path / "x"), "--name", "{a: 1}",
                 "--train.lr", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("gapless: error:") and "Traceback" not in err
    assert "name: expected str" in err and "train.lr = -1.0 is out of range" in err
