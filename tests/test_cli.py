"""The command line end to end on configs/tiny.yaml: prepare, train, translate, evaluate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gapless.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
# fast and quiet: CPU, fp32, a short run that still validates and checkpoints
TRAIN_ARGS = [
    "--train.device",
    "cpu",
    "--train.dtype",
    "fp32",
    "--train.max_updates",
    "20",
    "--train.valid_every",
    "10",
    "--train.valid_max_sentences",
    "20",
    "--train.threads",
    "1",
]


def gapless(*args, cwd: Path, env: dict, stdin: str | None = None, check: bool = True):
    proc = subprocess.run(
        [sys.executable, "-m", "gapless", *map(str, args)],
        check=False,
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"gapless {' '.join(map(str, args))} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    cache = tmp_path_factory.mktemp("cache")
    return {
        **os.environ,
        "GAPLESS_CACHE": str(cache),
        "OMP_NUM_THREADS": "1",
        "GAPLESS_DATA": str(cache / "no-shared-data"),
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory, env) -> Path:
    """prepare + train once; the run directory is shared by the tests below."""
    work = tmp_path_factory.mktemp("cli")
    run_dir = work / "runs" / "tiny"
    out = gapless("prepare", TINY, "--run-dir", run_dir, cwd=work, env=env)
    prepared = json.loads(out.stdout)
    assert prepared["run_dir"] == str(run_dir) and prepared["vocab_size"] > 20
    assert prepared["valid_pairs"] == 500 and "kept 20000 of 20000" in prepared["train"]
    out = gapless("train", TINY, "--run-dir", run_dir, *TRAIN_ARGS, cwd=work, env=env)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["updates"] == 20 and summary["stopped"] == "max_updates"
    return run_dir


def test_train_writes_the_run_directory(run):
    assert (run / "config.yaml").is_file() and (run / "spm.model").is_file()
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["vocab_size"] > 0 and cfg["train"]["max_updates"] == 20
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in log]
    assert kinds.count("train") == 2 and kinds.count("valid") == 2 and kinds[-1] == "end"
    assert all(r["loss"] > 0 for r in log if r["kind"] == "train")
    for tag in ("last", "best"):
        ptr = json.loads((run / "checkpoints" / f"{tag}.json").read_text())
        ckpt = run / "checkpoints" / ptr["dir"]
        assert (ckpt / "model.safetensors").is_file() and (ckpt / "state.json").is_file()
    assert json.loads((run / "checkpoints" / "last.json").read_text())["dir"] == "step_00000020"
    assert not list((run / "checkpoints").glob(".*"))


def test_translate_stdin_to_stdout(run, env, tmp_path):
    lines = ["Ein Mann läuft im Park.", "", "Zwei Hunde spielen am Strand.", "Ein Kind lacht."]
    out = gapless(
        "translate",
        run,
        "--beam",
        "2",
        "--device",
        "cpu",
        cwd=tmp_path,
        env=env,
        stdin="".join(x + "\n" for x in lines),
    )
    assert len(out.stdout.splitlines()) == len(lines)
    assert out.stdout.endswith("\n") and out.stdout.count("\n") == len(lines)
    # the same through files, greedy (in-process: the same entry point, no interpreter start)
    (tmp_path / "in.de").write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ["--input", tmp_path / "in.de", "--output", tmp_path / "out.en", "--beam", "1"]
    assert main(["translate", str(run), *map(str, args), "--device", "cpu"]) == 0
    assert len((tmp_path / "out.en").read_text(encoding="utf-8").splitlines()) == len(lines)


def test_evaluate_prints_bleu_with_signature(run, env, tmp_path):
    out = gapless("evaluate", run, "--beam", "1", "--device", "cpu", cwd=tmp_path, env=env)
    assert "test2016: BLEU" in out.stdout and "chrF" in out.stdout
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in out.stdout
    hyp = (run / "eval" / "test2016.hyp").read_text(encoding="utf-8").splitlines()
    result = json.loads((run / "eval" / "test2016.json").read_text())
    assert len(hyp) == result["sentences"] == 500
    assert result["split"] == "test2016" and "bleu" in result and "bleu_signature" in result
    assert f"BLEU {result['bleu']:.2f}" in out.stdout


def test_bad_override_key_exit_2_lists_keys(env, tmp_path):
    out = gapless(
        "train",
        TINY,
        "--run-dir",
        tmp_path / "bad",
        "--train.max_updatez",
        "5",
        "--modell.dropout",
        "0.1",
        "--train.lr",
        "fast",
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert out.returncode == 2
    assert "gapless: error:" in out.stderr
    assert "train.max_updatez" in out.stderr and "modell" in out.stderr
    assert "train.lr: expected float" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "bad").exists()


def test_clean_errors(tmp_path, capsys):
    assert main(["translate", str(tmp_path / "no-run")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    bad_corpus = ["--data.corpus", str(tmp_path / "missing")]
    assert main(["prepare", str(TINY), "--run-dir", str(tmp_path / "r"), *bad_corpus]) == 2
    assert "unknown corpus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: unknown option of translate
        main(["translate", str(tmp_path), "--bogus", "1"])
    assert exc.value.code == 2


def test_load_and_translate_in_python(run, monkeypatch):
    import gapless.inference
    from gapless import load

    calls = []
    monkeypatch.setattr(gapless.inference, "configure_inference", lambda: calls.append(1))
    translator = load(run, device="cpu")
    assert calls == [1]  # inference applies its process settings (gapless/runtime.py)
    hyps = translator.translate(["Ein Mann läuft im Park.", "Eine Frau sitzt."], beam=2)
    assert len(hyps) == 2 and all(isinstance(h, str) for h in hyps)
    assert translator.translate([], beam=2) == []


def test_translate_n_best_writes_k_scored_hypotheses_per_line(run, tmp_path):
    lines = ["Ein Mann läuft im Park.", "Zwei Hunde spielen am Strand.", "Ein Kind lacht."]
    (tmp_path / "in.de").write_text("\n".join(lines) + "\n", encoding="utf-8")
    common = ["--input", str(tmp_path / "in.de"), "--beam", "3", "--device", "cpu"]
    assert main(["translate", str(run), *common, "--output", str(tmp_path / "best.en")]) == 0
    assert main(["translate", str(run), *common, "--n-best", "3",
                 "--output", str(tmp_path / "nbest.en")]) == 0
    rows = [r.split(" ||| ") for r in (tmp_path / "nbest.en").read_text().splitlines()]
    assert [int(r[0]) for r in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    best = (tmp_path / "best.en").read_text().splitlines()
    for i in range(3):
        scores = [float(r[2]) for r in rows if int(r[0]) == i]
        assert scores == sorted(scores, reverse=True)
        assert rows[3 * i][1] == best[i]  # the first of the n-best is the 1-best
    assert main(["translate", str(run), *common, "--n-best", "4"]) == 2  # more than the beam


def test_average_writes_the_mean_checkpoint_that_evaluate_and_load_accept(run, tmp_path,
                                                                         capsys):
    from safetensors.torch import load_file

    from gapless import load

    assert main(["average", str(run), "--last", "2"]) == 0
    ckpt = run / "checkpoints"
    a, b = (load_file(str(ckpt / f"step_000000{u}" / "model.safetensors")) for u in (10, 20))
    avg = load_file(str(ckpt / "averaged" / "model.safetensors"))
    assert avg.keys() == a.keys()
    for key in a:
        if a[key].is_floating_point():
            assert torch_close(avg[key], (a[key].double() + b[key].double()) / 2), key
    state = json.loads((ckpt / "averaged" / "state.json").read_text())
    assert state["averaged_updates"] == [10, 20]
    translator = load(run, "averaged", device="cpu")
    model = translator.model
    assert model.output.weight is model.tgt_embed.weight  # ties survive the average
    assert len(translator.translate(["Ein Mann läuft."], beam=2)) == 1
    assert main(["evaluate", str(run), "--checkpoint", "averaged", "--beam", "1",
                 "--device", "cpu"]) == 0
    assert main(["average", str(run), "--updates", "10,20", "--name", "avg2"]) == 0
    again = load_file(str(ckpt / "avg2" / "model.safetensors"))
    assert all(torch_close(again[k], avg[k]) for k in avg)
    capsys.readouterr()
    assert main(["average", str(run), "--updates", "15"]) == 2
    assert "no checkpoint of update(s) [15]" in capsys.readouterr().err
    assert main(["average", str(run), "--last", "3"]) == 2


def torch_close(x, y) -> bool:
    import torch

    return torch.allclose(x.double(), y.double(), atol=1e-6)
