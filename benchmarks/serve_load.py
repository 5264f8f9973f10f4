"""Load test of ``gapless serve`` on the loopback: concurrent clients against the server in a
subprocess, next to offline decoding of the same sentences; prints one JSON document.

Protocol: the server (``python -m gapless serve RUN``, its own process, ``--threads`` torch
threads) on a free 127.0.0.1 port; ``--clients`` (32) threads, each with one keep-alive
connection (the standard library's ``http.client``: the least client CPU on the same machine),
send ``--requests`` (2,000) POST /v1/translate requests of 1-5 sentences of the test split drawn
at random with ``--seed``, at ``--beam``, after ``--warmup-requests`` (64) untimed ones (kernel
set-up for the batch shapes). Reported: failed requests (and the statuses seen),
served sentences/s (successful sentences / wall-clock of the load), latency p50/p95/p99/max,
the server's batches (from /health), its memory (VmHWM peak and VmRSS current, from
/proc/PID/status) after request ``--rss-at`` (500) and after the last one, and offline
sentences/s: ``engine.translate`` of the same sentences in this process (after the server has
stopped; same loader, beam and threads) — what batching costs or gains over one big batch.

Bounded: ``--max-seconds`` stops sending new requests (``stopped_early`` says so), every
request has a timeout, and the server is stopped at the end whatever happens.

    python -m benchmarks.serve_load --run runs/NAME                    # the protocol (long)
    python -m benchmarks.serve_load --run runs/tiny --requests 40 --clients 4   # smoke
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks.common import REPO, emit, finish, machine, relpath, say, split_lines


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a run directory (runs/NAME)")
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--split", default="test2016")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch threads (server and offline)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--engine", default="auto", choices=["auto", "gapless", "ctranslate2"])
    p.add_argument("--max-batch-tokens", type=int, default=4096)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--warmup-requests", type=int, default=64,
                   help="untimed requests first (other sentences of the same split)")
    p.add_argument("--rss-at", type=int, default=500, help="sample the server's memory here")
    p.add_argument("--max-seconds", type=float, default=1800, help="stop sending after this")
    p.add_argument("--request-timeout", type=float, default=300)
    return p.parse_args(argv)


def draw_requests(src: list[str], n: int, seed: int) -> list[list[str]]:
    """``n`` requests of 1-5 distinct sentences of ``src``, fixed by ``seed``."""
    rng = random.Random(seed)
    return [rng.sample(src, rng.randint(1, min(5, len(src)))) for _ in range(n)]


def memory_mb(pid: int) -> dict:
    """VmHWM (peak) and VmRSS (current) of process ``pid`` in MB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmHWM", "VmRSS"):
                out[f"{key}_mb"] = round(int(line.split()[1]) / 1024, 1)
    return out


class Server:
    """``python -m gapless serve`` in a subprocess on a free loopback port (a context)."""

    def __init__(self, args):
        from gapless.serve.server import free_port

        self.port = free_port()
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by __exit__)
        self.command = [sys.executable, "-m", "gapless", "serve", str(args.run),
                        "--port", str(self.port), "--checkpoint", args.checkpoint,
                        "--device", args.device, "--dtype", args.dtype, "--engine", args.engine,
                        "--max-batch-tokens", str(args.max_batch_tokens),
                        "--max-wait-ms", str(args.max_wait_ms), "--max-beam", str(args.beam)]
        self.env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        self.proc: subprocess.Popen | None = None

    def get(self, path: str) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def __enter__(self):
        self.proc = subprocess.Popen(self.command, cwd=REPO, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                self.get("/health")
                return self
            except OSError:
                time.sleep(0.2)
        tail = self.log_tail()
        self.__exit__()
        raise SystemExit(f"the server did not start:\n{tail}")

    def log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-4000:]

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


class Load:
    """The clients: ``clients`` threads sending ``requests`` in order until done or the
    deadline; ``on_done(count)`` is called after each finished request."""

    def __init__(self, port: int, requests: list[list[str]], beam: int, args,
                 rss_at: int | None = None):
        self.port, self.requests, self.beam, self.args = port, requests, beam, args
        self.rss_at = rss_at
        self.next = itertools.count()
        self.lock = threading.Lock()
        self.results: list[tuple[int, float, int]] = []  # (request, seconds, status)
        self.memory: dict = {}
        self.deadline = time.monotonic() + args.max_seconds
        self.server_pid: int | None = None

    def send(self, conn: http.client.HTTPConnection, lines: list[str]) -> int:
        body = json.dumps({"text": lines, "beam": self.beam})
        conn.request("POST", "/v1/translate", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
        if response.status == 200 and len(answer["translations"]) != len(lines):
            return -1  # a wrong answer counts as failed
        return response.status

    def client(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                          timeout=self.args.request_timeout)
        while time.monotonic() < self.deadline:
            i = next(self.next)
            if i >= len(self.requests):
                break
            start = time.perf_counter()
            try:
                status = self.send(conn, self.requests[i])
            except (OSError, ValueError, http.client.HTTPException):
                status = 0
                conn.close()  # reconnects on the next request
            with self.lock:
                self.results.append((i, time.perf_counter() - start, status))
                if len(self.results) == self.rss_at:
                    self.memory[f"after_request_{len(self.results)}"] = memory_mb(
                        self.server_pid)
        conn.close()

    def run(self, server_pid: int) -> float:
        """Wall-clock seconds of the whole load."""
        self.server_pid = server_pid
        threads = [threading.Thread(target=self.client) for _ in range(self.args.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
        if self.rss_at is not None:
            self.memory[f"after_request_{len(self.results)}"] = memory_mb(server_pid)
        return seconds


def served(load: Load, seconds: float, health: dict, before: dict) -> dict:
    """The load's figures; the server's batch counts since ``before`` (its /health then)."""
    batches = health.get("batches", 0) - before.get("batches", 0)
    batched = health.get("sentences", 0) - before.get("sentences", 0)
    ok = [(i, s) for i, s, status in load.results if status == 200]
    statuses: dict[str, int] = {}
    for _, _, status in load.results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    sentences = sum(len(load.requests[i]) for i, _ in ok)
    latencies = sorted(s for _, s in ok)

    def pct(q: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3, 1) \
            if latencies else None

    return {"requests_sent": len(load.results), "failed": len(load.results) - len(ok),
            "statuses": statuses, "sentences": sentences, "seconds": round(seconds, 2),
            "sentences_per_second": round(sentences / seconds, 2) if seconds else None,
            "latency_ms": {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99),
                           "max": pct(1.0)},
            "stopped_early": len(load.results) < len(load.requests),
            "server_batches": batches,
            "sentences_per_batch": round(batched / batches, 2) if batches else None}


def offline(args, lines: list[str]) -> dict:
    """``engine.translate`` of ``lines`` in this process, loaded as the server loads it."""
    import torch

    from gapless.serve.server import load_model

    torch.set_num_threads(args.threads)
    engine = load_model(args.run, args.checkpoint, args.device, args.dtype, args.engine)
    engine.translate(lines[:8], beam=args.beam)  # warm-up
    start = time.perf_counter()
    engine.translate(lines, beam=args.beam)
    seconds = time.perf_counter() - start
    return {"sentences": len(lines), "seconds": round(seconds, 2),
            "sentences_per_second": round(len(lines) / seconds, 2)}


def main(argv=None) -> int:
    args = parse_args(argv)
    info = machine(args.threads)
    src, _, src_path = split_lines(args.run, args.split)
    requests = draw_requests(src, args.requests, args.seed)
    say("serve_load", f"{len(requests)} requests, {args.clients} clients, beam {args.beam}")
    warmup = draw_requests(src, args.warmup_requests, args.seed + 1)
    with Server(args) as server:
        if warmup:
            Load(server.port, warmup, args.beam, args).run(server.proc.pid)
            warm = server.get("/health")
        load = Load(server.port, requests, args.beam, args, min(args.rss_at, len(requests)))
        seconds = load.run(server.proc.pid)
        result = served(load, seconds, server.get("/health"), warm if warmup else {})
        model = server.get("/v1/model")
    say("serve_load", f"served {result['sentences_per_second']} sentences/s, "
        f"{result['failed']} failed; offline ...")
    sent = [line for i, _, status in load.results if status == 200 for line in requests[i]]
    off = offline(args, sent) if sent else None
    emit({
        "benchmark": "serve_load", "run": relpath(args.run), "checkpoint": args.checkpoint,
        "model": {"name": model.get("name"), "engine": model.get("engine")},
        "protocol": {"split": args.split, "source": relpath(src_path), "requests": args.requests,
                     "clients": args.clients, "sentences_per_request": "1-5", "seed": args.seed,
                     "beam": args.beam, "threads": args.threads, "device": args.device,
                     "dtype": args.dtype, "max_batch_tokens": args.max_batch_tokens,
                     "max_wait_ms": args.max_wait_ms, "max_seconds": args.max_seconds,
                     "warmup_requests": args.warmup_requests},
        "served": result, "offline": off,
        "served_over_offline": round(result["sentences_per_second"]
                                     / off["sentences_per_second"], 3)
        if off and result["sentences_per_second"] else None,
        "server_memory_mb": load.memory, "machine": finish(info),
    })
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
