"""The server under load: when the batcher starts a batch (``oldest`` / ``quiet`` /
``refill``), one tokenizer call for the requests taken together, the heap trim before
answering, the engine's busy time, the engine thread that loads the model and runs its
batches, settings from the environment, merged batches (one search or several) equal to
translating alone on a real model, the source padded to a multiple in served searches only,
and the load generator of ``benchmarks/serve_load.py`` counting what fails and alternating
served and offline rounds."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from benchmarks import serve_load
from gapless.config import ConfigError, DecodeConfig
from gapless.corpora import synthetic_pair
from gapless.decode import ModelStepper
from gapless.inference import Translation, Translator
from gapless.serve import (
    Background,
    Batcher,
    DecodeSettings,
    EngineThread,
    ServeSettings,
    create_app,
)
from gapless.serve import batcher as batcher_mod
from gapless.serve import server as server_mod
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
    batcher = Batcher(Echo(), max_wait_ms=10, batch_start="oldest")
    jobs = [_job(100.0), _job(100.008), _job(100.016)]
    assert batcher._start_at(jobs) == pytest.approx(100.010)
    batcher._last_done = 100.5  # and not before the last batch is out
    assert batcher._start_at(jobs) == pytest.approx(100.510)


def test_quiet_waits_for_arrivals_to_pause_up_to_max_hold():
    batcher = Batcher(Echo(), max_wait_ms=10, batch_start="quiet", max_hold_ms=100)
    jobs = [_job(100.0), _job(100.008), _job(100.016)]
    assert batcher._start_at(jobs) == pytest.approx(100.026)  # 10 ms after the newest
    jobs.append(_job(100.095))
    assert batcher._start_at(jobs) == pytest.approx(100.100)  # held at most 100 ms
    batcher._last_done = 100.2  # counted from the last batch when that is later
    assert batcher._start_at(jobs) == pytest.approx(100.210)


def test_quiet_counts_from_the_last_answer_sent():
    batcher = Batcher(Echo(), max_wait_ms=10, batch_start="quiet", max_hold_ms=100)
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


def test_an_unknown_start_rule_or_an_empty_search_is_refused():
    with pytest.raises(ValueError, match="batch_start"):
        Batcher(Echo(), batch_start="eager")
    with pytest.raises(ValueError, match="search_batch"):
        Batcher(Echo(), search_batch=0)
    for field in ("max_hold_ms", "trim_every", "source_multiple"):  # the checks of the env too
        with pytest.raises(ValueError, match=field):
            Batcher(Echo(), **{field: -1})


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
    _staggered(Batcher(oldest, max_wait_ms=400, batch_start="oldest"), 0.15, 4)
    results = _staggered(Batcher(quiet, max_wait_ms=400, batch_start="quiet", max_hold_ms=5000),
                         0.15, 4)
    assert quiet.calls == [["s0", "s1", "s2", "s3"]]
    assert len(oldest.calls) > 1 and _flat(oldest.calls) == ["s0", "s1", "s2", "s3"]
    assert [r.translations[0][0].text for r in results] == [f"EN(s{i})" for i in range(4)]


def test_refill_waits_for_as_many_arrivals_as_the_last_batch_answered():
    batcher = Batcher(Echo(), max_wait_ms=10, batch_start="refill", max_hold_ms=100)
    assert batcher._start_at([_job(100.0)]) == pytest.approx(100.010)  # none answered yet
    batcher._last_done, batcher._answered = 100.5, 3
    jobs = [_job(100.4), _job(100.51), _job(100.52)]  # one from before the batch, two back
    assert batcher._start_at(jobs) == pytest.approx(100.6)  # held, max_hold at the latest
    jobs.append(_job(100.53))  # the third caller is back
    assert batcher._start_at(jobs) == pytest.approx(100.51)


def test_refill_keeps_callers_that_come_back_in_one_batch():
    """Three callers, each sending its next request once answered, one of them slower to
    come back than ``max_wait``: every batch holds one request of each, and every caller
    gets its own answers."""
    engine = Echo(delay=0.02)
    batcher = Batcher(engine, max_wait_ms=20, batch_start="refill", max_hold_ms=5000)

    async def caller(name: str) -> list[str]:
        out = []
        for i in range(3):
            result = await batcher.translate([f"{name}{i}"], GREEDY)
            out.append(result.translations[0][0].text)
            await asyncio.sleep(0.2 if name == "c" else 0.0)
        return out

    async def scenario():
        return await asyncio.gather(*(caller(name) for name in "abc"))

    try:
        answers = asyncio.run(scenario())
    finally:
        batcher.close()
    assert [sorted(call) for call in engine.calls] == [[f"a{i}", f"b{i}", f"c{i}"]
                                                        for i in range(3)]
    assert answers == [[f"EN({name}{i})" for i in range(3)] for name in "abc"]


# -- preparing sources --------------------------------------------------------------------------


class Pieces(Echo):
    """``Echo`` with a tokenizer hook that records its calls and fails on a line with
    ``badtok``."""

    def __init__(self):
        super().__init__()
        self.tokenized: list[list[str]] = []

    def pieces(self, lines: list[str]) -> list[list[str]]:
        self.tokenized.append(list(lines))
        if any("badtok" in line for line in lines):
            raise ValueError("cannot tokenize badtok")
        return [["\u2581" + w for w in line.split()] for line in lines]


def test_the_requests_taken_together_are_tokenized_in_one_call():
    engine = Pieces()
    batcher = Batcher(engine)
    loop = asyncio.new_event_loop()
    try:
        jobs = [Job(lines, GREEDY, loop.create_future(), loop)
                for lines in (["ein Hund", ""], ["zwei"], ["drei Katzen da"])]
        batcher._prepare_all(jobs)
    finally:
        loop.close()
    assert engine.tokenized == [["ein Hund", "zwei", "drei Katzen da"]]
    assert [[s and (s.text, s.pieces) for s in job.sources] for job in jobs] == [
        [("ein Hund", 2), None], [("zwei", 1)], [("drei Katzen da", 3)]]


def test_a_request_the_tokenizer_refuses_fails_alone():
    engine = Pieces()
    batcher = Batcher(engine, max_wait_ms=20)

    async def scenario():
        return await asyncio.gather(*(batcher.translate(lines, GREEDY) for lines in
                                      (["gut"], ["badtok hier"], ["auch gut"])),
                                    return_exceptions=True)

    try:
        good, bad, other = asyncio.run(scenario())
    finally:
        batcher.close()
    assert isinstance(bad, ValueError) and "badtok" in str(bad)
    assert good.translations[0][0].text == "EN(gut)"
    assert other.translations[0][0].text == "EN(auch gut)"
    assert all("badtok hier" not in call for call in engine.calls)


# -- the engine thread --------------------------------------------------------------------------


def test_the_engine_thread_runs_calls_in_order_in_one_thread():
    owner = EngineThread()
    seen: list[int] = []
    try:
        futures = [owner.submit(lambda i=i: seen.append(i) or threading.get_ident())
                   for i in range(5)]
        assert {f.result() for f in futures} == {owner.ident}
        assert seen == list(range(5)) and owner.ident != threading.get_ident()
        with pytest.raises(ZeroDivisionError):
            owner.call(lambda: 1 / 0)
        assert owner.call(lambda: 2) == 2  # an error is the caller's; the thread goes on
    finally:
        owner.close()
    with pytest.raises(RuntimeError, match="closed"):
        owner.submit(lambda: 1)


class Where(Echo):
    """``Echo`` that records the thread it was made in and the thread of each call."""

    def __init__(self):
        super().__init__()
        self.made_in = threading.get_ident()
        self.threads: list[int] = []

    def translate_text(self, lines: list[str], **settings) -> list[list[Translation]]:
        self.threads.append(threading.get_ident())
        return super().translate_text(lines, **settings)


def _two_requests(batcher: Batcher) -> None:
    async def scenario():
        await batcher.translate(["a"], GREEDY)
        await batcher.translate(["b"], GREEDY)

    try:
        asyncio.run(scenario())
    finally:
        batcher.close()


def test_the_batcher_runs_the_engine_in_the_thread_that_loaded_it():
    owner = EngineThread()
    try:
        engine = owner.call(Where)
        _two_requests(Batcher(engine, max_wait_ms=1, owner=owner))
        assert engine.made_in == owner.ident and engine.threads == [owner.ident] * 2
        assert owner.call(lambda: 3) == 3  # the batcher has left the thread for other calls
    finally:
        owner.close()
    alone = Where()  # no owner: a worker thread of the batcher's own
    _two_requests(Batcher(alone, max_wait_ms=1))
    assert len(set(alone.threads)) == 1 and alone.threads[0] != threading.get_ident()


def test_serve_run_loads_the_model_in_the_thread_that_serves_it(monkeypatch, tmp_path):
    seen: dict = {}

    def load(run, checkpoint, device, dtype, engine):
        seen["loaded_in"] = threading.get_ident()
        return Where()

    monkeypatch.setattr(server_mod, "prepare_runtime", lambda: None)  # no process settings
    monkeypatch.setattr(server_mod, "load_model", load)
    monkeypatch.setattr(server_mod, "serve", lambda model, settings, owner=None: seen.update(
        owner=owner, model=model))
    server_mod.serve_run(tmp_path, ServeSettings())
    assert seen["owner"] is not None and seen["loaded_in"] == seen["owner"].ident
    assert seen["model"].made_in == seen["owner"].ident
    seen["owner"].close()


def test_the_server_stack_resolves_auto_to_what_is_installed_and_refuses_what_is_not(
        monkeypatch):
    installed = {"h11", "asyncio", "httptools", "uvloop"}
    monkeypatch.setattr(server_mod, "_installed", lambda module: module in installed)
    stack = server_mod.server_stack
    assert stack(ServeSettings()) == {"http": "httptools", "loop": "uvloop"}
    assert stack(ServeSettings(http="h11", loop="asyncio")) == {"http": "h11", "loop": "asyncio"}
    installed -= {"httptools", "uvloop"}
    assert stack(ServeSettings()) == {"http": "h11", "loop": "asyncio"}
    with pytest.raises(ConfigError, match="--http httptools: not installed"):
        stack(ServeSettings(http="httptools"))
    with pytest.raises(ConfigError, match="--loop uvloop: not installed"):
        stack(ServeSettings(loop="uvloop"))
    with pytest.raises(ConfigError, match="--loop 'trio'"):
        stack(ServeSettings(loop="trio"))


def test_serve_run_resolves_the_stack_before_loading_and_the_server_uses_it(monkeypatch,
                                                                             tmp_path):
    monkeypatch.setattr(server_mod, "_installed", lambda module: module != "uvloop")
    monkeypatch.setattr(server_mod, "prepare_runtime", lambda: None)
    loaded: list = []
    monkeypatch.setattr(server_mod, "load_model", lambda *a: loaded.append(a) or Where())
    with pytest.raises(ConfigError, match="uvloop"):
        server_mod.serve_run(tmp_path, ServeSettings(loop="uvloop"))
    assert loaded == []  # refused before the model loads
    seen: dict = {}
    monkeypatch.setattr(server_mod, "serve", lambda model, settings, owner=None: seen.update(
        settings=settings, owner=owner))
    server_mod.serve_run(tmp_path, ServeSettings())
    seen["owner"].close()
    assert (seen["settings"].http, seen["settings"].loop) == ("httptools", "asyncio")
    config = server_mod.uvicorn_server(object(), seen["settings"]).config
    assert (config.http, config.loop) == ("httptools", "asyncio")


def test_cpu_seconds_of_the_main_thread_leave_out_the_other_threads():
    pid = os.getpid()

    def burn():
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass

    total, main = serve_load.cpu_seconds(pid), serve_load.cpu_seconds(pid, pid)
    worker = threading.Thread(target=burn)
    worker.start()
    worker.join()
    grew, main_grew = serve_load.cpu_seconds(pid) - total, serve_load.cpu_seconds(pid, pid) - main
    assert grew >= 0.25 and main_grew < 0.1, (grew, main_grew)


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


def test_the_load_test_writes_its_document_where_asked(tmp_path):
    out = tmp_path / "new" / "serve_load.json"
    serve_load.write_out({"served": {"failed": 0}}, str(out))
    assert json.loads(out.read_text(encoding="utf-8")) == {"served": {"failed": 0}}
    serve_load.write_out({"x": 1}, "")  # no --out: nothing written
    assert serve_load.parse_args(["--run", "r"]).out == ""


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
    assert settings_from_env(base, {"GAPLESS_SERVE_SEARCH_BATCH": "64"}).search_batch == 64
    assert base.source_multiple == 8
    assert settings_from_env(base, {"GAPLESS_SERVE_SOURCE_MULTIPLE": "0"}).source_multiple == 0


@pytest.mark.parametrize("name, value, expected", [
    ("BATCH_START", "eager", "one of oldest, quiet, refill"),
    ("SEARCH_BATCH", "0", "an integer >= 1"),
    ("SEARCH_BATCH", "many", "an integer >= 1"),
    ("MAX_HOLD_MS", "-5", "a number >= 0"),
    ("TRIM_EVERY", "-1", "an integer >= 0 (0: never)"),
    ("SOURCE_MULTIPLE", "-8", "an integer >= 0 (0: unpadded)")])
def test_a_setting_out_of_range_in_the_environment_is_named(name, value, expected):
    with pytest.raises(ConfigError) as info:
        settings_from_env(ServeSettings(), {f"GAPLESS_SERVE_{name}": value})
    assert str(info.value) == f"GAPLESS_SERVE_{name}={value!r}: expected {expected}"


# -- a real model: merged = alone ---------------------------------------------------------------


@pytest.fixture(scope="module")
def translator(tiny_translator) -> Translator:
    """The tiny random-init translator of ``conftest.tiny_translator`` (beam=2, max_len_b=5,
    batch_size=3)."""
    return tiny_translator(beam=2, max_len_b=5, batch_size=3)


@pytest.mark.parametrize("search_batch", [128, 2])
def test_merged_requests_get_what_each_sentence_gets_alone(translator, search_batch):
    """Requests merged into one engine call (one search, or sorted and split into searches
    of ``search_batch`` sentences) answer each sentence as translating it alone does, in
    order."""
    rng = random.Random(3)
    requests = [[synthetic_pair(rng)[0] for _ in range(rng.randint(1, 4))] for _ in range(6)]
    alone = {line: translator.translate_text([line], **BEAM2.engine_kwargs())[0][0].text
             for lines in requests for line in lines}
    batcher = Batcher(translator, max_wait_ms=300, batch_start="quiet", max_hold_ms=5000,
                      search_batch=search_batch)

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


def test_served_searches_pad_the_source_and_offline_ones_do_not(tiny_translator):
    """``pad_sources`` gives a Translator a stepper that pads the source to the multiple
    (``gapless serve``'s default 8); 0 or an engine without ``ModelStepper`` stays as it is."""
    translator = tiny_translator(beam=2, max_len_b=5)
    assert translator.stepper is ModelStepper  # offline: unpadded
    served = tiny_translator(beam=2, max_len_b=5)
    server_mod.pad_sources(served, 8)
    assert isinstance(served.stepper, functools.partial)
    assert served.stepper.func is ModelStepper and served.stepper.keywords == {
        "source_multiple": 8}
    lines = [synthetic_pair(random.Random(i))[0] for i in range(7)]
    assert served.translate(lines) == translator.translate(lines)
    unpadded = tiny_translator(beam=2, max_len_b=5)
    server_mod.pad_sources(unpadded, 0)
    echo = Echo()
    server_mod.pad_sources(echo, 8)
    assert unpadded.stepper is ModelStepper and not hasattr(echo, "stepper")


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


def test_ratio_summary_of_the_rounds():
    assert serve_load.ratio_summary([0.8, 0.7, 0.9]) == {"median": 0.8, "min": 0.7, "max": 0.9}
    assert serve_load.ratio_summary([0.8, None, 0.7, 0.9, 0.6]) == {
        "median": 0.75, "min": 0.6, "max": 0.9}
    assert serve_load.ratio_summary([None]) == {"median": None, "min": None, "max": None}


def test_rounds_alternate_the_served_load_and_the_offline_pass(monkeypatch, tmp_path,
                                                                tiny_translator):
    """``--rounds 3`` on the tiny model (served in this process, offline timed here): served,
    offline, served, offline, ... (the served-batches pass in round 1 only); round 1 fills the
    keys of a one-round document, the rounds their rows and the median ratio."""
    translator = tiny_translator(beam=2, max_len_b=5)
    rng = random.Random(5)
    src = [synthetic_pair(rng)[0] for _ in range(12)]
    order: list = []

    def load_server(args, requests, warmup):
        order.append("served")
        app = create_app(translator, ServeSettings(max_wait_ms=2))
        with Background(app) as url:
            port = int(url.rsplit(":", 1)[1])
            load = serve_load.Load(port, requests, args.beam, args.clients, 60, 30,
                                   rss_at=args.rss_at)
            seconds = load.run(os.getpid())
            stats = app.state.service.batcher.stats()
        return load, serve_load.served(load, seconds, stats, {}), {"name": "tiny"}

    def offline(args, lines, runtime, chunk=0):
        order.append(("offline", chunk))
        start = time.perf_counter()
        translator.translate(lines, beam=args.beam)
        rate = len(lines) / (time.perf_counter() - start)
        return {"sentences": len(lines), "sentences_per_second": round(rate, 2)}

    monkeypatch.setattr(serve_load, "load_server", load_server)
    monkeypatch.setattr(serve_load, "offline", offline)
    monkeypatch.setattr(serve_load, "split_lines",
                        lambda run, split: (src, src, tmp_path / "test.de"))
    out = tmp_path / "rounds.json"
    assert serve_load.main(["--run", str(tmp_path), "--requests", "8", "--clients", "2",
                            "--beam", "2", "--rounds", "3", "--rss-at", "4",
                            "--offline-served-batches", "--out", str(out)]) == 0
    served_chunk = order[2][1]
    assert order == ["served", ("offline", 0), ("offline", served_chunk),
                     "served", ("offline", 0), "served", ("offline", 0)] and served_chunk > 0
    doc = json.loads(out.read_text(encoding="utf-8"))
    rows = doc["rounds"]["per_round"]
    assert [row["round"] for row in rows] == [1, 2, 3] and doc["protocol"]["rounds"] == 3
    assert doc["served_over_offline"] == rows[0]["served_over_offline"]
    assert doc["served"]["sentences_per_second"] == rows[0]["served_sentences_per_second"]
    assert doc["offline"]["sentences_per_second"] == rows[0]["offline_sentences_per_second"]
    assert doc["server_memory_mb"] == rows[0]["server_memory_mb"]
    assert set(doc["server_memory_mb"]) == {"after_request_4", "after_request_8"}
    assert doc["offline_in_served_batches"]["sentences"] == doc["served"]["sentences"]
    ratios = sorted(row["served_over_offline"] for row in rows)
    assert doc["rounds"]["served_over_offline"] == {"median": ratios[1], "min": ratios[0],
                                                    "max": ratios[2]}
    assert all(row["failed"] == 0 for row in rows)
