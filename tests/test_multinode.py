"""Two machines: two ``torchrun`` agents ("nodes" 0 and 1, one process each, gloo over
127.0.0.1) train the same run, and their update equals one process with ``train.accum 2``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import (
    _WORKER,
    TINY,
    _ddp_overrides,
    _free_port,
    _fresh_run,
    _weights,
    _without_key_bias,
    prepared,  # noqa: F401  (the shared prepared-run fixture)
)

from gapless import config as config_mod
from gapless.checkpoint import RunDir
from gapless.model import Transformer
from gapless.training import train

TIMEOUT_S = 150  # both agents together; a node that never joins must not hang the suite
# the worker of test_train, with an optional torch.compile backend for the compiled variant
WORKER = ("import functools, os, torch\n"
          "if os.environ.get('COMPILE_BACKEND'):\n"
          "    torch.compile = functools.partial(torch.compile,"
          " backend=os.environ['COMPILE_BACKEND'])\n" + _WORKER)


def torchrun_node(rank: int, port: int, script: Path, args: list[str]) -> list[str]:
    """The command a cluster user types on machine ``rank`` of two (static rendezvous at
    node 0's address; here 127.0.0.1), one training process per machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
            "--node-rank", str(rank), "--nproc-per-node", "1", "--master-addr", "127.0.0.1",
            "--master-port", str(port), "--max-restarts", "0", str(script), *args]


def launch_two_nodes(tmp_path: Path, spec: list, env: dict | None = None) -> None:
    """Two separate torchrun agents over ``spec`` = [(run_dir, overrides), ...]; both are
    killed (with their workers) if they have not finished within ``TIMEOUT_S``."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", **(env or {})}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    procs = [subprocess.Popen(torchrun_node(r, port, script, [str(TINY), json.dumps(spec)]),
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for r in range(2)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)  # the agent and the worker it started
        outputs += [p.communicate()[0] for p in procs[len(outputs):]]
        pytest.fail("two-node training timed out:\n" + "\n".join(o[-3000:] for o in outputs))
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["eager", "compiled"])
def test_two_nodes_equal_one_process_with_accumulation(prepared, tmp_path, compiled):  # noqa: F811
    """Node 0 and node 1 (one rank each) x 1 micro-batch == 1 process x 2 micro-batches; the
    compiled variant (``train.compile`` on both nodes, Dynamo with the aot_eager backend)
    against the same eager single process."""
    corpus, updates = prepared[0], 4
    over = _ddp_overrides(corpus, updates)
    single = _fresh_run(prepared, tmp_path / "single")
    train(config_mod.load(TINY, {**over, "train.accum": 2}), single)
    nodes = _fresh_run(prepared, tmp_path / "nodes")
    launch_two_nodes(tmp_path, [(str(nodes), {**over, "train.accum": 1,
                                              "train.compile": compiled})],
                     {"COMPILE_BACKEND": "aot_eager"} if compiled else None)

    assert RunDir(nodes).pointer("last").name == f"step_{updates:08d}"
    assert (RunDir(nodes).checkpoints / "rng" / "rank1.safetensors").is_file()  # two ranks
    a, b = _weights(single), _weights(nodes)
    assert a.keys() == b.keys()  # no _orig_mod. prefix from the compiled step
    inner = config_mod.load(single / "config.yaml").model.d_model
    for name in a:
        x, y = _without_key_bias(name, a[name], inner), _without_key_bias(name, b[name], inner)
        torch.testing.assert_close(y, x, atol=1e-5, rtol=0, msg=name)
    torch.manual_seed(1)  # the comparison means something: the weights moved well beyond it
    init = Transformer(config_mod.load(single / "config.yaml").model).state_dict()
    assert max(float((a[k] - init[k]).abs().max()) for k in a) > 1e-3
    states = [json.loads((RunDir(r).pointer("last") / "state.json").read_text())
              for r in (single, nodes)]
    assert states[0]["tokens"] == states[1]["tokens"]
    norms = [[r["grad_norm"] for r in RunDir(run).read_log() if r["kind"] == "train"]
             for run in (single, nodes)]
    assert len(norms[1]) == updates and norms[1] == pytest.approx(norms[0], abs=2e-3)
