"""gapless.training: the loss, exact resume after a kill, DDP == gradient accumulation."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from gapless import config as config_mod
from gapless.checkpoint import RunDir
from gapless.corpora import synthetic_pair
from gapless.model import Transformer
from gapless.prepare import prepare
from gapless.training import build_optimizer, inverse_sqrt, label_smoothed_nll, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
TIMING = {"tgt_tokens_per_s", "s_per_update", "elapsed_s", "valid_seconds", "strategy_s_per_update",
          "strategy_share"}


@pytest.fixture(autouse=True)
def _keep_thread_count():
    """train.threads=1 below calls torch.set_num_threads: undo it for the other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# the loss


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothed_nll_equals_cross_entropy(eps):
    torch.manual_seed(0)
    logits = torch.randn(37, 11, dtype=torch.float32) * 3
    target = torch.randint(0, 11, (37,))
    mine = logits.clone().requires_grad_()
    ref = logits.clone().requires_grad_()
    loss, nll = label_smoothed_nll(mine, target, eps)
    expected = F.cross_entropy(ref, target, label_smoothing=eps, reduction="sum")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nll, F.cross_entropy(logits, target, reduction="sum"))
    assert not nll.requires_grad
    (2.5 * loss).backward()  # a non-unit upstream gradient
    (2.5 * expected).backward()
    torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-5, atol=1e-6)


def test_label_smoothed_nll_bf16_close():
    torch.manual_seed(1)
    logits = torch.randn(64, 50)
    target = torch.randint(0, 50, (64,))
    low = logits.to(torch.bfloat16).requires_grad_()
    ref = logits.to(torch.bfloat16).float().requires_grad_()
    loss, _ = label_smoothed_nll(low, target, 0.1)
    expected = F.cross_entropy(ref, target, label_smoothing=0.1, reduction="sum")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=0.5)
    loss.backward()
    expected.backward()
    assert low.grad.dtype == torch.bfloat16
    torch.testing.assert_close(low.grad.float(), ref.grad, rtol=5e-2, atol=2e-2)


def test_inverse_sqrt_schedule():
    assert inverse_sqrt(1, 1.0, 10) == pytest.approx(0.1)
    assert inverse_sqrt(10, 1.0, 10) == pytest.approx(1.0)
    assert inverse_sqrt(40, 1.0, 10) == pytest.approx(0.5)
    assert inverse_sqrt(5, 2.0, 0) == 2.0


def _adam_pair(weight_decay: float = 0.0):
    """Two copies of the tiny model; the trainer's optimizer on one, plain Adam on the other."""
    cfg = config_mod.load(TINY, {"train.weight_decay": weight_decay, "model.vocab_size": 60})
    torch.manual_seed(0)
    mine, ref = Transformer(cfg.model), Transformer(cfg.model)
    ref.load_state_dict(mine.state_dict())
    t = cfg.train
    plain = torch.optim.Adam(ref.parameters(), lr=t.lr, betas=tuple(t.betas), eps=t.adam_eps,
                             weight_decay=t.weight_decay)
    return mine, build_optimizer(mine, t), ref, plain


def _same_grads_step(models_opts, seed: int) -> None:
    for model, opt in models_opts:
        g = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_trainer_adam_is_fused_on_cpu_and_makes_plain_adams_update(weight_decay):
    mine, opt, ref, plain = _adam_pair(weight_decay)
    assert opt.defaults["fused"]  # one kernel per step on CPU (benchmarks/cpu_tweaks.py)
    before = [p.detach().clone() for p in mine.parameters()]
    for step in range(5):
        _same_grads_step([(mine, opt), (ref, plain)], seed=step)
    moved = 0.0
    for a, b, start in zip(mine.parameters(), ref.parameters(), before):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        moved = max(moved, float((a.detach() - start).abs().max()))
    assert moved > 1e-4  # the steps did move the weights


def test_plain_adam_checkpoint_resumes_fused_with_the_same_update(tmp_path):
    """Optimizer state written by the looping Adam (runs before the fused one) resumes in the
    trainer's Adam, which stays fused and continues with the same update."""
    from gapless.checkpoint import _flatten_optimizer, _restore_optimizer

    mine, opt, ref, plain = _adam_pair()
    for step in range(3):
        _same_grads_step([(ref, plain)], seed=step)
    tensors, meta = _flatten_optimizer(plain)
    save_file(tensors, str(tmp_path / "optim.safetensors"))
    mine.load_state_dict(ref.state_dict())
    _restore_optimizer(opt, load_file(str(tmp_path / "optim.safetensors")),
                       json.loads(json.dumps(meta)))
    assert all(group["fused"] for group in opt.param_groups)
    for step in range(3, 6):
        _same_grads_step([(mine, opt), (ref, plain)], seed=step)
    for a, b in zip(mine.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# a small corpus so that a few dozen updates cross epoch boundaries


def _write_corpus(folder: Path, n_train: int, n_valid: int = 30) -> Path:
    rng = random.Random(7)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_valid), ("test2016", n_valid)):
        pairs = [synthetic_pair(rng) for _ in range(n)]
        for lang, col in (("de", 0), ("en", 1)):
            (folder / f"{split}.{lang}").write_text("".join(p[col] + "\n" for p in pairs))
    return folder


def _cfg(corpus: Path, **overrides):
    base = {
        "data.corpus": str(corpus),
        "train.device": "cpu",
        "train.dtype": "fp32",
        "train.valid_every": 10,
        "train.save_every": 10,
        "train.log_every": 5,
        "train.valid_max_sentences": 10,
        "train.keep_last": 3,
        "train.threads": 1,
        "decode.beam": 1,
    }
    base.update(overrides)
    return config_mod.load(TINY, base)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """One prepared run directory (SentencePiece + encoded data), copied by each test."""
    root = tmp_path_factory.mktemp("train")
    corpus = _write_corpus(root / "corpus", 300)
    prepare(_cfg(corpus), root / "prepared")
    return corpus, root / "prepared"


def _fresh_run(prepared, dest: Path) -> Path:
    shutil.copytree(prepared[1], dest)
    return dest


def _weights(run: Path, tag: str = "last") -> dict:
    return load_file(str(RunDir(run).pointer(tag) / "model.safetensors"))


def _records(run: Path, kind: str, after: int = 0) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in TIMING}
        for r in RunDir(run).read_log()
        if r["kind"] == kind and r["update"] > after
    ]


@pytest.mark.parametrize("dtype,kill_at", [("fp32", 15), ("fp32", 20), ("bf16", 10)])
def test_resume_is_exact(prepared, tmp_path, dtype, kill_at):
    """K updates, 'killed', then resumed to N == N updates uninterrupted (dropout on)."""
    corpus = prepared[0]
    n = 30
    over = {"model.dropout": 0.1, "train.dtype": dtype}

    straight = _fresh_run(prepared, tmp_path / "straight")
    state = train(_cfg(corpus, **over, **{"train.max_updates": n}), straight)
    assert state.update == n and state.epoch > 1  # crossed at least one epoch boundary

    resumed = _fresh_run(prepared, tmp_path / "resumed")
    first = train(_cfg(corpus, **over, **{"train.max_updates": kill_at}), resumed)
    assert first.update == kill_at
    ckpt = resumed / "checkpoints"
    assert (ckpt / "last.json").is_file() and (ckpt / "best.json").is_file()
    assert RunDir(resumed).pointer("last").name == f"step_{kill_at:08d}"
    # a crash while writing the next checkpoint leaves a temp dir, and the log may hold records
    # written after the checkpoint: neither may disturb the resumed run
    junk = ckpt / f".step_{kill_at + 5:08d}.tmp"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"half a file")
    RunDir(resumed).append_log({"kind": "train", "update": kill_at + 1, "loss": -1.0})
    second = train(_cfg(corpus, **over, **{"train.max_updates": n}), resumed)
    assert second.update == n and second.epoch == state.epoch

    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert _records(resumed, "train") == _records(straight, "train")
    assert _records(resumed, "valid", after=kill_at) == _records(straight, "valid", after=kill_at)
    assert not junk.exists()
    # the stand-in kill (max_updates = kill_at) validates once more, at kill_at, which a real
    # kill would not: the resumed best is the straight run's best or that extra score
    assert second.tokens == state.tokens
    assert second.best_bleu == max(state.best_bleu, first.best_bleu)


def test_resume_is_exact_with_cached_sentence_oracles(prepared, tmp_path):
    """The oracle cache travels in the checkpoint: a resumed run reuses the same oracles."""
    corpus = prepared[0]
    over = {"model.dropout": 0.1, "strategy.name": "sentence_oracle",
            "strategy.schedule": "constant", "strategy.constant_p": 0.5, "strategy.oracle_beam": 2,
            "strategy.oracle_refresh": 1000}
    straight = _fresh_run(prepared, tmp_path / "straight")
    state = train(_cfg(corpus, **over, **{"train.max_updates": 24}), straight)
    assert state.epoch > 1  # epoch 2 reads the cache
    resumed = _fresh_run(prepared, tmp_path / "resumed")
    train(_cfg(corpus, **over, **{"train.max_updates": 15}), resumed)
    saved = json.loads((RunDir(resumed).pointer("last") / "state.json").read_text())
    assert saved["extra"]["strategy"]["oracle_cache"]  # the cache was checkpointed
    train(_cfg(corpus, **over, **{"train.max_updates": 24}), resumed)
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[name], b[name]) for name in a)
    records = _records(resumed, "train")
    assert records == _records(straight, "train")
    assert any(r["oracle_searched"] < 1 for r in records)  # the cache was used


def test_init_from_fine_tunes_with_the_base_vocabulary(prepared, tmp_path):
    """--init-from: the base's SentencePiece model even on another corpus, its best weights,
    a fresh optimizer by default (or the base's), the counter restart logged; a different
    architecture is refused with the mismatching keys named."""
    corpus = prepared[0]
    base = _fresh_run(prepared, tmp_path / "base")
    train(_cfg(corpus, **{"train.max_updates": 10}), base)
    other = _write_corpus(tmp_path / "other", 40)
    (other / "train.de").write_text("völlig neue wörter hier\n" * 40)  # another domain
    tuned = tmp_path / "tuned"
    over = {"train.max_updates": 2, "train.lr": 1e-30}  # the weights stay the base's
    train(_cfg(other, **over), tuned, init_from=base)
    assert (tuned / "spm.model").read_bytes() == (base / "spm.model").read_bytes()
    a, b = _weights(base, "best"), _weights(tuned)
    assert all(torch.equal(a[k], b[k]) for k in a)
    record = RunDir(tuned).read_log()[0]  # the first record
    assert record["kind"] == "init" and record["optimizer"] == "fresh" and record["schedule_starts_at"] == {
        "update": 0, "epoch": 1}
    assert record["base_update"] == 10
    key = json.loads((tuned / "data" / "prepare.json").read_text())["key"]
    assert key["vocab_from"] == os.path.relpath(base)  # no folder of this machine
    kept = tmp_path / "kept"
    train(_cfg(other, **over), kept, init_from=base, init_optimizer=True)
    assert RunDir(kept).read_log()[0]["optimizer"].startswith("restored")
    with pytest.raises(config_mod.ConfigError, match="model.d_model"):
        train(_cfg(other, **over, **{"model.d_model": 48}), tmp_path / "bad", init_from=base)


def test_train_again_after_the_end_is_a_no_op(prepared, tmp_path):
    """Running a finished run again (same max_updates) must not take another step."""
    corpus = prepared[0]
    run = _fresh_run(prepared, tmp_path / "run")
    cfg = {"train.max_updates": 10}
    assert train(_cfg(corpus, **cfg), run).update == 10
    before = _weights(run)
    again = train(_cfg(corpus, **cfg), run)
    assert again.update == 10 and again.stopped == "max_updates"
    assert RunDir(run).pointer("last").name == "step_00000010"
    after = _weights(run)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [r["update"] for r in RunDir(run).read_log() if r["kind"] == "train"] == [5, 10]
    # the same for a run stopped by its time budget
    timed = _fresh_run(prepared, tmp_path / "timed")
    cfg = {"train.max_minutes": 1e-6}
    first = train(_cfg(corpus, **cfg), timed)
    assert first.stopped == "max_minutes" and first.update == 1
    again = train(_cfg(corpus, **cfg), timed)
    assert again.update == 1 and again.stopped == "max_minutes"


def test_resume_weights_change_without_rng_restore(prepared, tmp_path, monkeypatch):
    """The resume test can fail: with the RNG state not restored, dropout masks differ."""
    import gapless.checkpoint as ckpt_mod

    corpus = prepared[0]
    over = {"model.dropout": 0.1}
    straight = _fresh_run(prepared, tmp_path / "straight")
    train(_cfg(corpus, **over, **{"train.max_updates": 20}), straight)
    resumed = _fresh_run(prepared, tmp_path / "resumed")
    train(_cfg(corpus, **over, **{"train.max_updates": 10}), resumed)
    monkeypatch.setattr(ckpt_mod, "_restore_rng", lambda tensors, py: torch.manual_seed(99))
    train(_cfg(corpus, **over, **{"train.max_updates": 20}), resumed)
    a, b = _weights(straight), _weights(resumed)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_pruning_keeps_pinned(prepared, tmp_path):
    corpus = prepared[0]
    run = _fresh_run(prepared, tmp_path / "run")
    train(_cfg(corpus, **{"train.max_updates": 40, "train.keep_last": 1}), run)
    rd = RunDir(run)
    steps = sorted(p.name for p in rd.checkpoints.glob("step_*"))
    assert rd.pointer("last").name == "step_00000040"
    assert set(steps) == {rd.pointer("last").name, rd.pointer("best").name}
    for p in rd.checkpoints.iterdir():
        assert not p.name.startswith("."), p  # no temp files
    cfg = config_mod.load(run / "config.yaml")
    assert cfg.model.vocab_size == len(__import__("gapless.data").data.Vocab(rd.spm_model))


# ----------------------------------------------------------------------------------------------
# DDP: 2 ranks x 1 micro-batch == 1 rank x 2 micro-batches

_WORKER = """
import json, sys
from gapless import config
from gapless.training import train
for run_dir, overrides in json.loads(sys.argv[2]):  # one process group, several runs
    train(config.load(sys.argv[1], overrides), run_dir)
import torch.distributed as dist
if dist.is_initialized():  # gloo's threads must not outlive the interpreter
    dist.barrier()
    dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_overrides(corpus: Path, updates: int) -> dict:
    return {
        "data.corpus": str(corpus),
        "train.device": "cpu",
        "train.dtype": "fp32",
        "model.dropout": 0.0,
        "train.max_tokens": 128,
        "train.max_updates": updates,
        "train.valid_every": 1000,
        "train.save_every": 1000,
        "train.log_every": 1,
        "train.valid_max_sentences": 5,
        "train.threads": 1,
        "decode.beam": 1,
        "train.clip_norm": 1e9,
    }  # no clipping, but grad_norm is logged


def _without_key_bias(name: str, t: torch.Tensor, inner: int) -> torch.Tensor:
    """The bias of W_k gets a zero gradient in exact arithmetic (softmax is shift invariant),
    so Adam turns its rounding noise, which depends on the summation order, into lr-sized
    steps: leave it out of the comparison."""
    t = t.clone()
    if name.endswith("qkv_proj.bias"):  # [b_q; b_k; b_v]
        t[inner : 2 * inner] = 0
    elif name.endswith("kv_proj.bias"):  # [b_k; b_v]
        t[:inner] = 0
    return t


def test_ddp_equals_accumulation(prepared, tmp_path):
    """2 ranks x accum micro-batches == 1 rank x 2*accum micro-batches, for accum 1 and 2
    (the second exercises DDP's no_sync accumulation)."""
    corpus, updates = prepared[0], 4
    over = _ddp_overrides(corpus, updates)
    jobs = []
    for accum in (1, 2):
        single = _fresh_run(prepared, tmp_path / f"single{accum}")
        train(config_mod.load(TINY, {**over, "train.accum": 2 * accum}), single)
        ddp = _fresh_run(prepared, tmp_path / f"ddp{accum}")
        jobs.append((single, ddp, {**over, "train.accum": accum}))

    _launch_ddp(tmp_path, [(str(ddp), o) for _, ddp, o in jobs])

    for single, ddp, _ in jobs:
        a, b = _weights(single), _weights(ddp)
        assert RunDir(ddp).pointer("last").name == f"step_{updates:08d}"
        inner = config_mod.load(single / "config.yaml").model.d_model
        for name in a:
            x, y = _without_key_bias(name, a[name], inner), _without_key_bias(name, b[name], inner)
            torch.testing.assert_close(y, x, atol=1e-5, rtol=0, msg=f"{ddp.name}: {name}")
        # the comparison means something: training moved the weights well beyond the tolerance
        torch.manual_seed(1)
        init = Transformer(config_mod.load(single / "config.yaml").model).state_dict()
        assert max(float((a[k] - init[k]).abs().max()) for k in a) > 1e-3
        # each update saw the same groups: the same target tokens in total
        state = [
            json.loads((RunDir(r).pointer("last") / "state.json").read_text())
            for r in (single, ddp)
        ]
        assert state[0]["tokens"] == state[1]["tokens"] and state[0]["update"] == updates
        # Adam hides a wrong gradient scale; the logged norm of the summed gradient does not
        norms = [
            [r["grad_norm"] for r in RunDir(run).read_log() if r["kind"] == "train"]
            for run in (single, ddp)
        ]
        assert len(norms[0]) == len(norms[1]) == updates
        assert norms[1] == pytest.approx(norms[0], abs=2e-3), ddp.name


def _launch_ddp(tmp_path: Path, spec: list) -> None:
    """Run the worker on 2 gloo ranks over ``spec`` = [(run_dir, overrides), ...] in order."""
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(TINY), json.dumps(spec)],
                         env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(2)
    ]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(outputs)


# oracles cached for good, and an epoch of about 4 updates: the resumed epoch reuses them
CACHED_ORACLE = {"strategy.name": "sentence_oracle", "strategy.schedule": "constant",
                 "strategy.constant_p": 0.5, "strategy.oracle_beam": 2,
                 "strategy.oracle_refresh": 1000, "train.max_tokens": 512}


@pytest.mark.parametrize("strategy,kill,updates", [({}, 2, 4), (CACHED_ORACLE, 5, 9)],
                         ids=["dropout", "cached_oracle"])
def test_ddp_resume_with_dropout_is_exact(prepared, tmp_path, strategy, kill, updates):
    """A 2-rank run with dropout killed and resumed equals the uninterrupted 2-rank run: each
    rank restores its own RNG state (its own dropout masks) and its own strategy state (the
    oracles cached for the sentences that rank saw, reused in the next epoch)."""
    corpus = prepared[0]
    over = {**_ddp_overrides(corpus, updates), "model.dropout": 0.1, "train.save_every": 2,
            **strategy}
    whole = _fresh_run(prepared, tmp_path / "whole")
    resumed = _fresh_run(prepared, tmp_path / "resumed")
    _launch_ddp(tmp_path, [(str(whole), over),
                           (str(resumed), {**over, "train.max_updates": kill}),
                           (str(resumed), over)])
    assert (RunDir(resumed).checkpoints / "rng" / "rank1.safetensors").is_file()
    own, straight = (json.loads((RunDir(r).checkpoints / "rng" / "rank1.json").read_text())
                     for r in (resumed, whole))
    assert own["update"] == updates
    assert bool(own["strategy"].get("oracle_cache")) == bool(strategy)
    assert own == straight  # the same oracles, searched at the same updates
    a, b = _weights(whole), _weights(resumed)
    inner = config_mod.load(whole / "config.yaml").model.d_model
    for name in a:
        x, y = _without_key_bias(name, a[name], inner), _without_key_bias(name, b[name], inner)
        torch.testing.assert_close(y, x, atol=1e-6, rtol=0, msg=name)


def test_training_releases_free_heap_once_per_log_interval(prepared, tmp_path, monkeypatch):
    """glibc keeps freed blocks of ever-new batch shapes: the loop trims the heap at every
    log interval (gapless/runtime.py), not at every update."""
    import gapless.training.trainer as train_mod

    calls = []
    monkeypatch.setattr(train_mod, "release_free_memory", lambda: calls.append(1))
    run = _fresh_run(prepared, tmp_path / "run")
    train(_cfg(prepared[0], **{"train.max_updates": 10}), run)  # log_every 5
    assert len(calls) == 2


def test_a_rank_reads_only_its_own_micro_batches(prepared, tmp_path, monkeypatch):
    """Rank r of w collates (reads the token rows of) micro-batches r, r + w, ... of a group
    and no other; the group's token count comes from the length arrays alone."""
    import contextlib
    import types

    import numpy as np

    import gapless.training.trainer as train_mod

    run = _fresh_run(prepared, tmp_path / "run")
    trainer = train_mod.Trainer(_cfg(prepared[0], **{"train.max_updates": 1}), run)
    read, real = [], train_mod.collate
    monkeypatch.setattr(train_mod, "collate", lambda data, idx: read.append(idx) or real(data, idx))
    group = [np.arange(i, i + 4) for i in range(0, 20, 4)]  # 5 micro-batches of 4 rows
    trainer.ddp = types.SimpleNamespace(rank=1, world=2, any=lambda flag: flag)
    trainer.step_module.no_sync = contextlib.nullcontext  # what DDP's wrapper provides
    trainer.bar, trainer.interval, trainer.run_start = None, train_mod.Interval(), 0.0  # fit's
    assert trainer.train_update(group)
    assert [r.tolist() for r in read] == [group[1].tolist(), group[3].tolist()]
    lens = trainer.prep.train.tgt_lens
    assert trainer.state.tokens == sum(int(lens[r].sum()) for r in group)
