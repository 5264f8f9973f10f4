"""Load test of ``gapless serve`` on the loopback: concurrent clients against the server in a
subprocess, next to offline decoding of the same sentences; prints one JSON document (and
writes it to ``--out``).

Protocol: the server (``python -m gapless serve RUN``, its own process, ``--threads`` torch
threads) on a free 127.0.0.1 port; ``--clients`` (32) clients, each with one keep-alive
HTTP/1.1 connection, send ``--requests`` (2,000) POST /v1/translate requests of 1-5 sentences of
the test split drawn at random with ``--seed``, at ``--beam``, after ``--warmup-requests`` (64)
untimed ones (kernel set-up for the batch shapes). The clients are coroutines of one asyncio
loop in one thread, writing prepared request bytes and reading the answers off raw streams:
on a machine whose cores the server shares, the load generator should cost it as little CPU
as it can (its CPU seconds are reported). A request fails when its status is not 200, its
answer does not hold one translation per sentence, the connection breaks or it times out.
Reported: failed requests (and the statuses seen), served sentences/s (successful sentences /
wall-clock of the load), latency p50/p95/p99/max, the server's batches and engine-busy seconds
(from /health), CPU seconds of server and client and of the server's main thread alone
(uvicorn's event loop: HTTP parsing, routing, JSON; the engine runs in other threads), the
server's memory (VmHWM peak and VmRSS
current, from /proc/PID/status) after request ``--rss-at`` (500) and after the last one, and
offline sentences/s: ``engine.translate`` of the same sentences in a fresh process with the
server's environment and runtime settings (``gapless.serve.server.prepare_runtime``), the same
loader, beam and threads, after the server has stopped. ``--also-offline-default`` adds the
same offline pass with gapless's offline runtime settings (``gapless.load`` alone);
``--offline-served-batches`` one that calls the engine with the server's mean batch size of
consecutive sentences in request order (mixed lengths, as merged requests are), each call one
search (as the server runs a merged batch of up to ``search_batch`` sentences) and with the
server's source padding (``gapless.serve.server.pad_sources``; the other offline passes are
``gapless translate``'s, unpadded), which tells the engine's cost of served batches apart from
the server's own.

``--rounds N`` alternates N times: a fresh server under the load, then the offline pass of the
sentences it answered (the extra offline passes in round 1 only). The offline rate drifts
within minutes on a shared VM, so each round's ratio pairs two neighbouring measurements and
the median of the rounds is the verdict (``rounds``: per-round rows, the ratios' median, min
and max); the document's other keys are round 1's, as a one-round run writes them.

``--server-env KEY=VALUE`` (repeatable) sets a variable for the server and the offline process
alike (``OMP_WAIT_POLICY=PASSIVE``, ``GAPLESS_SERVE_BATCH_START=quiet``,
``ONEDNN_PRIMITIVE_CACHE_CAPACITY=16384``, ...).

Bounded: ``--max-seconds`` stops sending new requests (``stopped_early`` says so), every
request has a timeout, and the server is stopped at the end whatever happens.

    python -m benchmarks.serve_load --run runs/NAME --out DIR/serve_load.json  # the protocol
    python -m benchmarks.serve_load --run runs/tiny --requests 40 --clients 4   # smoke
    python -m benchmarks.serve_load --run runs/NAME --rounds 3  # served/offline x3, the median
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    REPO,
    child_json,
    emit,
    finish,
    machine,
    relpath,
    reply,
    say,
    split_lines,
)


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
    p.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"],
                   help="the server's HTTP parser (gapless serve --http)")
    p.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"],
                   help="the server's event loop (gapless serve --loop)")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                   help="an environment variable of the server and the offline process")
    p.add_argument("--warmup-requests", type=int, default=64,
                   help="untimed requests first (other sentences of the same split)")
    p.add_argument("--rss-at", type=int, default=500, help="sample the server's memory here")
    p.add_argument("--max-seconds", type=float, default=1800, help="stop sending after this")
    p.add_argument("--request-timeout", type=float, default=300)
    p.add_argument("--no-offline", action="store_true", help="skip the offline pass")
    p.add_argument("--out", default="", help="also write the JSON document here")
    p.add_argument("--also-offline-default", action="store_true",
                   help="also translate offline with gapless.load's own runtime settings")
    p.add_argument("--offline-served-batches", action="store_true",
                   help="also translate offline in the server's mean batch size, in request "
                        "order (mixed lengths, as merged requests are): the engine's cost of "
                        "served batches without the server")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate the served load and the offline pass this many times (a "
                        "fresh server each round); the median ratio is the verdict")
    p.add_argument("--offline-worker", help=argparse.SUPPRESS)  # child mode: a file of lines
    p.add_argument("--offline-chunk", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--offline-runtime", default="server", choices=["server", "default"],
                   help=argparse.SUPPRESS)
    return p.parse_args(argv)


def server_env(args) -> dict:
    """The environment of the server and of the offline process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for item in args.server_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--server-env {item!r}: expected KEY=VALUE")
        env[key] = value
    return env


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


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), or of its thread
    ``thread`` alone (the main thread's id is ``pid``)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
                        "--max-wait-ms", str(args.max_wait_ms), "--max-beam", str(args.beam),
                        "--http", args.http, "--loop", args.loop]
        self.env = server_env(args)
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


def post_bytes(port: int, lines: list[str], beam: int) -> bytes:
    """One POST /v1/translate request on a keep-alive connection, as bytes."""
    body = json.dumps({"text": lines, "beam": beam}).encode()
    head = (f"POST /v1/translate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes,
                   sentences: int) -> tuple[int, bool]:
    """Send ``request`` and read its answer: (status, whether the server closes the
    connection); status -1 for a 200 whose answer does not hold ``sentences`` translations."""
    writer.write(request)
    await writer.drain()
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection")
    status = int(status_line.split()[1])
    length, close = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            close = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            raise ValueError("a chunked answer")
    payload = await reader.readexactly(length)
    if status == 200 and len(json.loads(payload)["translations"]) != sentences:
        status = -1
    return status, close


class Load:
    """The clients: ``clients`` coroutines, each on its own keep-alive connection, sending
    ``requests`` in order until done or ``max_seconds`` have passed."""

    def __init__(self, port: int, requests: list[list[str]], beam: int, clients: int,
                 max_seconds: float, timeout: float, rss_at: int | None = None):
        self.port, self.requests, self.clients = port, requests, clients
        self.payloads = [post_bytes(port, lines, beam) for lines in requests]
        self.max_seconds, self.timeout, self.rss_at = max_seconds, timeout, rss_at
        self.next = itertools.count()
        self.results: list[tuple[int, float, int]] = []  # (request, seconds, status)
        self.memory: dict = {}
        self.server_pid: int | None = None
        self.deadline = 0.0
        self.cpu_seconds = 0.0  # this process's, during the load

    def _record(self, i: int, seconds: float, status: int) -> None:
        self.results.append((i, seconds, status))
        if self.server_pid is not None and len(self.results) == self.rss_at:
            self.memory[f"after_request_{len(self.results)}"] = memory_mb(self.server_pid)

    async def client(self) -> None:
        reader = writer = None
        while time.monotonic() < self.deadline:
            i = next(self.next)
            if i >= len(self.requests):
                break
            start = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                status, close = await asyncio.wait_for(exchange(
                    reader, writer, self.payloads[i], len(self.requests[i])), self.timeout)
            except (OSError, ValueError, KeyError, TypeError, IndexError,
                    asyncio.IncompleteReadError, asyncio.TimeoutError):
                status, close = 0, True
            if close and writer is not None:
                writer.close()
                writer = None
            self._record(i, time.perf_counter() - start, status)
        if writer is not None:
            writer.close()

    async def _all(self) -> None:
        self.deadline = time.monotonic() + self.max_seconds
        await asyncio.gather(*(self.client() for _ in range(self.clients)))

    def run(self, server_pid: int | None = None) -> float:
        """Wall-clock seconds of the whole load."""
        self.server_pid = server_pid
        cpu, start = time.process_time(), time.perf_counter()
        asyncio.run(self._all())
        seconds = time.perf_counter() - start
        self.cpu_seconds = time.process_time() - cpu
        if server_pid is not None and self.rss_at is not None:
            self.memory[f"after_request_{len(self.results)}"] = memory_mb(server_pid)
        return seconds

    def failed(self) -> int:
        return sum(status != 200 for _, _, status in self.results)


def served(load: Load, seconds: float, health: dict, before: dict) -> dict:
    """The load's figures; the server's batch counts since ``before`` (its /health then)."""
    batches = health.get("batches", 0) - before.get("batches", 0)
    batched = health.get("sentences", 0) - before.get("sentences", 0)
    busy = health.get("busy_seconds", 0.0) - before.get("busy_seconds", 0.0)
    ok = [(i, s) for i, s, status in load.results if status == 200]
    statuses: dict[str, int] = {}
    for _, _, status in load.results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    sentences = sum(len(load.requests[i]) for i, _ in ok)
    latencies = sorted(s for _, s in ok)

    def pct(q: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3, 1) \
            if latencies else None

    return {"requests_sent": len(load.results), "failed": load.failed(),
            "statuses": statuses, "sentences": sentences, "seconds": round(seconds, 2),
            "sentences_per_second": round(sentences / seconds, 2) if seconds else None,
            "latency_ms": {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99),
                           "max": pct(1.0)},
            "stopped_early": len(load.results) < len(load.requests),
            "server_batches": batches,
            "sentences_per_batch": round(batched / batches, 2) if batches else None,
            "engine_busy_seconds": round(busy, 2),
            "sentences_per_busy_second": round(batched / busy, 2) if busy else None,
            "client_cpu_seconds": round(load.cpu_seconds, 2)}


def offline_worker(args) -> int:
    """Child mode: translate the lines of ``--offline-worker`` as one offline pass; one JSON
    line with the sentences and seconds."""
    import torch

    from gapless.serve.schema import ServeSettings
    from gapless.serve.server import load_model, pad_sources, prepare_runtime, settings_from_env

    if args.offline_runtime == "server":
        prepare_runtime()
    torch.set_num_threads(args.threads)
    engine = load_model(args.run, args.checkpoint, args.device, args.dtype, args.engine)
    if args.offline_chunk:  # the server's batches: its searches as well
        pad_sources(engine, settings_from_env(ServeSettings()).source_multiple)
    lines = Path(args.offline_worker).read_text(encoding="utf-8").split("\n")
    engine.translate(lines[:8], beam=args.beam)  # warm-up
    chunk = args.offline_chunk or len(lines)
    per_search = {"batch_size": chunk} if args.offline_chunk else {}  # a call: one search
    start = time.perf_counter()
    for i in range(0, len(lines), chunk):
        engine.translate(lines[i:i + chunk], beam=args.beam, **per_search)
    seconds = time.perf_counter() - start
    reply({"sentences": len(lines), "seconds": round(seconds, 2),
           "sentences_per_second": round(len(lines) / seconds, 2),
           "sentences_per_call": chunk,
           "source_multiple": getattr(getattr(engine, "stepper", None), "keywords", {}).get(
               "source_multiple", 0),
           "onednn_cache": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY")})
    return 0


def offline(args, lines: list[str], runtime: str, chunk: int = 0) -> dict:
    """``engine.translate`` of ``lines`` in a fresh process with the server's environment,
    loaded as the server loads it (``runtime`` server: after ``prepare_runtime``), all in one
    call or ``chunk`` sentences per call (one search each)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as f:
        f.write("\n".join(lines))
        f.flush()
        child = ["--run", str(args.run), "--checkpoint", args.checkpoint, "--threads",
                 str(args.threads), "--device", args.device, "--dtype", args.dtype, "--engine",
                 args.engine, "--beam", str(args.beam), "--offline-worker", f.name,
                 "--offline-runtime", runtime, "--offline-chunk", str(chunk)]
        env = server_env(args) if runtime == "server" else {**os.environ, "OMP_NUM_THREADS":
                                                            str(args.threads)}
        return {**child_json("benchmarks.serve_load", child, env), "runtime": runtime}


def load_server(args, requests, warmup) -> tuple[Load, dict, dict]:
    """Start the server, warm it up, run the load: (load, served figures, /v1/model)."""
    with Server(args) as server:
        before: dict = {}
        if warmup:
            Load(server.port, warmup, args.beam, args.clients, args.max_seconds,
                 args.request_timeout).run()
            before = server.get("/health")
        load = Load(server.port, requests, args.beam, args.clients, args.max_seconds,
                    args.request_timeout, min(args.rss_at, len(requests)))
        pid = server.proc.pid
        cpu, main = cpu_seconds(pid), cpu_seconds(pid, pid)
        seconds = load.run(pid)
        result = served(load, seconds, server.get("/health"), before)
        result["server_cpu_seconds"] = round(cpu_seconds(pid) - cpu, 2)
        result["server_event_loop_cpu_seconds"] = round(cpu_seconds(pid, pid) - main, 2)
        model = server.get("/v1/model")
    return load, result, model


def one_round(args, requests, warmup, extras: bool) -> dict:
    """One round: the load on a fresh server, then the offline pass of the sentences it
    answered (``extras``: also the ``--also-offline-default`` / ``--offline-served-batches``
    passes). The round's figures: load, served, model, offline, offline_default_runtime,
    offline_in_served_batches, served_over_offline."""
    load, result, model = load_server(args, requests, warmup)
    say("serve_load", f"served {result['sentences_per_second']} sentences/s, "
        f"{result['failed']} failed; offline ...")
    sent = [line for i, _, status in load.results if status == 200 for line in requests[i]]
    off = offline(args, sent, "server") if sent and not args.no_offline else None
    off_default = offline(args, sent, "default") \
        if sent and extras and args.also_offline_default else None
    per_batch = round(result["sentences_per_batch"] or 0)
    off_served = offline(args, sent, "server", per_batch) \
        if sent and per_batch and extras and args.offline_served_batches else None
    ratio = round(result["sentences_per_second"] / off["sentences_per_second"], 3) \
        if off and result["sentences_per_second"] else None
    return {"load": load, "served": result, "model": model, "offline": off,
            "offline_default_runtime": off_default, "offline_in_served_batches": off_served,
            "served_over_offline": ratio}


def round_figures(number: int, one: dict) -> dict:
    """The JSON row of round ``number`` (from 1) of ``one_round``'s figures."""
    served, off = one["served"], one["offline"] or {}
    return {"round": number, "failed": served["failed"],
            "served_sentences_per_second": served["sentences_per_second"],
            "offline_sentences_per_second": off.get("sentences_per_second"),
            "served_over_offline": one["served_over_offline"],
            "engine_busy_seconds": served["engine_busy_seconds"],
            "seconds": served["seconds"],
            "sentences_per_busy_second": served["sentences_per_busy_second"],
            "latency_ms_p50": served["latency_ms"]["p50"],
            "server_memory_mb": one["load"].memory}


def ratio_summary(ratios: list[float | None]) -> dict:
    """Median, min and max of the rounds' served/offline ratios (None: a round without one;
    the median of an even count is the mean of the middle two)."""
    known = sorted(r for r in ratios if r is not None)
    if not known:
        return {"median": None, "min": None, "max": None}
    mid = len(known) // 2
    median = known[mid] if len(known) % 2 else (known[mid - 1] + known[mid]) / 2
    return {"median": round(median, 3), "min": known[0], "max": known[-1]}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.offline_worker:
        return offline_worker(args)
    if args.rounds < 1:
        raise SystemExit("--rounds: at least 1")
    info = machine(args.threads)
    src, _, src_path = split_lines(args.run, args.split)
    requests = draw_requests(src, args.requests, args.seed)
    say("serve_load", f"{len(requests)} requests, {args.clients} clients, beam {args.beam}, "
        f"{args.rounds} round(s)")
    warmup = draw_requests(src, args.warmup_requests, args.seed + 1)
    rounds = []
    for number in range(1, args.rounds + 1):
        rounds.append(one_round(args, requests, warmup, extras=number == 1))
        say("serve_load", f"round {number}: served/offline {rounds[-1]['served_over_offline']}")
    first, model = rounds[0], rounds[0]["model"]
    doc = {
        "benchmark": "serve_load", "run": relpath(args.run), "checkpoint": args.checkpoint,
        "model": {"name": model.get("name"), "engine": model.get("engine"),
                  "limits": model.get("limits"), "server": model.get("server")},
        "protocol": {"split": args.split, "source": relpath(src_path), "requests": args.requests,
                     "clients": args.clients, "sentences_per_request": "1-5", "seed": args.seed,
                     "beam": args.beam, "threads": args.threads, "device": args.device,
                     "dtype": args.dtype, "max_batch_tokens": args.max_batch_tokens,
                     "max_wait_ms": args.max_wait_ms, "max_seconds": args.max_seconds,
                     "warmup_requests": args.warmup_requests, "server_env": args.server_env,
                     "http": args.http, "loop": args.loop,
                     "rounds": args.rounds,
                     "client": "one asyncio loop, one keep-alive connection per client"},
        **{key: first[key] for key in ("served", "offline", "offline_default_runtime",
                                       "offline_in_served_batches", "served_over_offline")},
        "server_memory_mb": first["load"].memory,
        "rounds": {"per_round": [round_figures(n, one) for n, one in enumerate(rounds, 1)],
                   "served_over_offline": ratio_summary([one["served_over_offline"]
                                                         for one in rounds])},
        "machine": finish(info),
    }
    emit(doc)
    write_out(doc, args.out)
    return 0 if all(one["served"]["failed"] == 0 for one in rounds) else 1


def write_out(doc: dict, path: str) -> None:
    """``doc`` as JSON into ``path`` (its folder made; nothing when ``path`` is empty)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
