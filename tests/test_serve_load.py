"""The server under load: when the batcher starts a batch (``oldest`` / ``quiet``), the heap
trim before answering, the engine's busy time, settings from the environment, merged batches
equal to translating alone on a real model, and the load generator of
``benchmarks/serve_load.py`` counting what fails."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time

import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from benchmarks import serve_load
from gapless import config as config_mod
from gapless.config import ConfigError, DecodeConfig
from gapless.corpora import synthetic_pair
from gapless.data import Vocab
from gapless.inference import Translation, Translator
from gapless.model import Transformer
from gapless.serve import Background, Batcher, DecodeSettings, ServeSettings, create_app
from gapless.serve import batcher as batcher_mod
from gapless.serve.batcher import Job
from gapless.serve.server import settings_from_env

GREEDY = DecodeSettings(beam=1, n_best=1, len_penalty=1.0, max_len_a=1.5, max_len_b=10)
BEAM2 = DecodeSettings(beam=2, n_best=1, len_penalty=1.0, max_len_a=1.5, max_len_b=10)


class Echo:
    """An Engine that answers ``EN(x)`` and records its calls (and, in ``log``, when)."""

    name = "echo"
    max_source_tokens = 50

    def __init__(self, log: list | None = None, delay: float = 0.0):
        self.calls: list[list[str]] = []
        self.log = log if log is not None else []
        self.delay = delay
        self.decode_cfg = DecodeConfig(beam=1)

    def describe(self) -> dict:
        return {"engine": "echo", "name": "echo"}

    def translate_text(self, lines: list[str], **settings) -> list[list[Translation]]:
        self.calls.append(list(lines))
        self.log.append("call")
        if self.delay:
            time.sleep(self.delay)
        if any("boom" in line for line in lines):
            raise RuntimeError("boom")
        return [[Translation(f"EN({line})", -0.1, -1.0, 2)] for line in lines]


def _flat(lists: list[list[str]]) -> list[str]:
    return [x for items in lists for x in items]


def _job(arrived: float) -> Job:
    return Job(["a"], GREEDY, None, None, arrived=arrived)


# -- when a batch starts ------------------------------------------------------------------------


def test_oldest_counts_the_wait_from_the_oldest_request():
    batcher = Batcher(Echo(), max_wait_ms=10)
    jobs = [_job(100.0), _job(100.008), _job(100.016)]
    assert batcher._start_at(jobs) == pytest.approx(100.010)
    batcher._last_done = 100.5  # and not before the last batch is out
    assert batcher._start_at(jobs) == pytest.approx(100.510)


def test_quiet_waits_for_arrivals_to_pause_up_to_max_hold():
    batcher = Batcher(Echo(), max_wait_ms=10, start="quiet", max_hold_ms=100)
    jobs = [_job(100.0), _job(100.008), _job(100.016)]
    assert batcher._start_at(jobs) == pytest.approx(100.026)  # 10 ms after the newest
    jobs.append(_job(100.095))
    assert batcher._start_at(jobs) == pytest.approx(100.100)  # held at most 100 ms
    batcher._last_done = 100.2  # counted from the last batch when that is later
    assert batcher._start_at(jobs) == pytest.approx(100.210)


def test_quiet_counts_from_the_last_answer_sent():
    batcher = Batcher(Echo(), max_wait_ms=10, start="quiet", max_hold_ms=100)
    jobs = [_job(100.0)]
    batcher._last_done, batcher._delivered = 100.0, 100.05  # answers still going out
    assert batcher._start_at(jobs) == pytest.approx(100.06)
    batcher._delivered = 100.5  # held no longer than max_hold all the same
    assert batcher._start_at(jobs) == pytest.approx(100.1)
    before = time.monotonic()
    batcher.delivered()
    assert batcher._delivered >= before


def test_the_app_marks_an_answer_delivered_once_it_is_sent():
    engine = Echo()
    app = create_app(engine, ServeSettings(max_wait_ms=1))
    batcher = app.state.service.batcher
    with Background(app) as url:
        port = int(url.rsplit(":", 1)[1])
        load = serve_load.Load(port, [["a"]], beam=1, clients=1, max_seconds=30, timeout=10)
        before = time.monotonic()
        load.run()
    assert load.failed() == 0 and batcher._delivered >= before


def test_an_unknown_start_rule_is_refused():
    with pytest.raises(ValueError, match="start"):
        Batcher(Echo(), start="eager")


def _staggered(batcher: Batcher, gap: float, n: int) -> list:
    """``n`` one-line requests ``gap`` seconds apart; their results."""

    async def scenario():
        tasks = []
        for i in range(n):
            tasks.append(asyncio.ensure_future(batcher.translate([f"s{i}"], GREEDY)))
            await asyncio.sleep(gap)
        return await asyncio.gather(*tasks)

    try:
        return asyncio.run(scenario())
    finally:
        batcher.close()


def test_quiet_merges_requests_that_keep_arriving_which_oldest_splits():
    oldest, quiet = Echo(), Echo()
    _staggered(Batcher(oldest, max_wait_ms=400), 0.15, 4)
    results = _staggered(Batcher(quiet, max_wait_ms=400, start="quiet", max_hold_ms=5000),
                         0.15, 4)
    assert quiet.calls == [["s0", "s1", "s2", "s3"]]
    assert len(oldest.calls) > 1 and _flat(oldest.calls) == ["s0", "s1", "s2", "s3"]
    assert [r.translations[0][0].text for r in results] == [f"EN(s{i})" for i in range(4)]


# -- memory, busy time --------------------------------------------------------------------------


def test_the_heap_is_trimmed_every_trim_every_batches_before_answering(monkeypatch):
    log: list[str] = []
    monkeypatch.setattr(batcher_mod, "release_free_memory", lambda: log.append("trim"))

    def run(trim_every: int) -> list[str]:
        log.clear()
        batcher = Batcher(Echo(log), max_wait_ms=1, trim_every=trim_every)

        async def scenario():
            for i in range(4):
                await batcher.translate([f"s{i}"], GREEDY)
                log.append("answered")

        try:
            asyncio.run(scenario())
        finally:
            batcher.close()
        return log[:]

    assert run(1) == ["call", "trim", "answered"] * 4  # the trim comes before the answer
    assert run(2) == ["call", "answered", "call", "trim", "answered"] * 2
    assert run(0) == ["call", "answered"] * 4


def test_health_counts_the_engines_busy_seconds():
    batcher = Batcher(Echo(delay=0.05), max_wait_ms=1)

    async def scenario():
        await batcher.translate(["a"], GREEDY)
        await batcher.translate(["b"], GREEDY)

    try:
        asyncio.run(scenario())
        stats = batcher.stats()
    finally:
        batcher.close()
    assert stats["batches"] == 2 and stats["busy_seconds"] >= 0.1


def test_settings_from_the_environment():
    base = ServeSettings(max_wait_ms=2.0)
    env = {"GAPLESS_SERVE_BATCH_START": "quiet", "GAPLESS_SERVE_MAX_HOLD_MS": "150",
           "GAPLESS_SERVE_TRIM_EVERY": "1", "GAPLESS_SERVE_MAX_WAIT_MS": "99"}
    got = settings_from_env(base, env)
    assert (got.batch_start, got.max_hold_ms, got.trim_every) == ("quiet", 150.0, 1)
    assert got.max_wait_ms == 2.0  # the command line's settings are not the environment's
    assert settings_from_env(base, {}) == base
    with pytest.raises(ConfigError, match="GAPLESS_SERVE_TRIM_EVERY"):
        settings_from_env(base, {"GAPLESS_SERVE_TRIM_EVERY": "often"})


# -- a real model: merged = alone ---------------------------------------------------------------


@pytest.fixture(scope="module")
def translator(tmp_path_factory) -> Translator:
    """A random-init tiny Transformer with a SentencePiece model of the synthetic corpus."""
    folder = tmp_path_factory.mktemp("spm")
    rng = random.Random(7)
    text = "".join(f"{de}\n{en}\n" for de, en in (synthetic_pair(rng) for _ in range(300)))
    (folder / "train.txt").write_text(text, encoding="utf-8")
    vocab = Vocab.train([folder / "train.txt"], folder / "spm", 120, "bpe", 1.0)
    cfg = config_mod.load("tiny", {"model.vocab_size": len(vocab)})
    torch.manual_seed(0)
    return Translator(Transformer(cfg.model), vocab, DecodeConfig(beam=2, max_len_b=5,
                                                                  batch_size=3),
                      torch.device("cpu"))


def test_merged_requests_get_what_each_sentence_gets_alone(translator):
    """Requests merged into one engine call (sorted and split into search batches of
    ``batch_size`` there) answer each sentence as translating it alone does, in order."""
    rng = random.Random(3)
    requests = [[synthetic_pair(rng)[0] for _ in range(rng.randint(1, 4))] for _ in range(6)]
    alone = {line: translator.translate_text([line], **BEAM2.engine_kwargs())[0][0].text
             for lines in requests for line in lines}
    batcher = Batcher(translator, max_wait_ms=300, start="quiet", max_hold_ms=5000)

    async def scenario():
        return await asyncio.gather(*(batcher.translate(lines, BEAM2) for lines in requests))

    try:
        results = asyncio.run(scenario())
        stats = batcher.stats()
    finally:
        batcher.close()
    assert stats["batches"] == 1 and stats["sentences"] == sum(map(len, requests))
    for lines, result in zip(requests, results):
        assert [h[0].text for h in result.translations] == [alone[line] for line in lines]


# -- the load generator -------------------------------------------------------------------------


class Canned:
    """A raw HTTP server on the loopback answering each request with the next of
    ``answers``: (status, body) or None to close the connection unanswered."""

    def __init__(self, answers: list):
        self.answers = list(answers)
        self.lock = threading.Lock()

    async def handle(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                with self.lock:
                    answer = self.answers.pop(0) if self.answers else (200, None)
                if answer is None:
                    return
                status, body = answer
                payload = json.dumps(body).encode()
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(payload)}\r\n"
                             f"content-type: application/json\r\n\r\n".encode() + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _canned_load(answers: list, requests: list[list[str]], clients: int = 1):
    server = Canned(answers)
    ready, port = threading.Event(), []

    def serve():
        async def main():
            srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
            port.append(srv.sockets[0].getsockname()[1])
            ready.set()
            await asyncio.sleep(30)

        asyncio.run(main())

    threading.Thread(target=serve, daemon=True).start()
    assert ready.wait(10)
    load = serve_load.Load(port[0], requests, beam=1, clients=clients, max_seconds=30,
                           timeout=5)
    load.run()
    return load


def test_the_load_generator_counts_every_kind_of_failure():
    ok = {"translations": [{"text": "x"}]}
    answers = [(200, ok), (500, {"detail": "boom"}), (200, {"translations": []}), None,
               (200, ok), (200, {"no": "translations"})]
    load = _canned_load(answers, [["a"]] * 6)
    statuses = [status for _, _, status in sorted(load.results)]
    assert statuses == [200, 500, -1, 0, 200, 0]  # a wrong count -1, a broken connection 0
    assert load.failed() == 4
    figures = serve_load.served(load, 1.0, {}, {})
    assert figures["failed"] == 4 and figures["sentences"] == 2
    assert figures["statuses"] == {"200": 2, "500": 1, "-1": 1, "0": 2}


def test_the_load_generator_against_the_server_in_order_and_keep_alive():
    engine = Echo()
    requests = [[f"r{i}s{j}" for j in range(1 + i % 3)] for i in range(40)] + [["boom"]]
    app = create_app(engine, ServeSettings(max_wait_ms=2, batch_start="quiet"))
    with Background(app) as url:
        port = int(url.rsplit(":", 1)[1])
        load = serve_load.Load(port, requests, beam=1, clients=4, max_seconds=60, timeout=30)
        load.run()
    assert len(load.results) == 41 and load.failed() == 1
    assert sorted(i for i, _, status in load.results if status != 200) == [40]
    assert set(_flat(engine.calls)) == set(_flat(requests))  # a failed batch: retried alone


def test_the_server_and_offline_environment():
    args = serve_load.parse_args(["--run", "runs/x", "--threads", "3", "--server-env",
                                  "OMP_WAIT_POLICY=PASSIVE", "--server-env", "A=b=c"])
    env = serve_load.server_env(args)
    assert env["OMP_NUM_THREADS"] == "3" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env["A"] == "b=c"
    assert not args.offline_served_batches and not args.also_offline_default
    with pytest.raises(SystemExit):
        serve_load.server_env(serve_load.parse_args(["--run", "x", "--server-env", "novalue"]))
