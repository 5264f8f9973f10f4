"""gapless serve: the HTTP API's answers and errors, dynamic batching (merged batches, order,
settings groups, dropped requests), truncation of long sentences, the page and the CLI."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from gapless.config import DecodeConfig
from gapless.inference import Translation, Translator
from gapless.serve import (
    Background,
    Batcher,
    DecodeSettings,
    ServeSettings,
    create_app,
)
from gapless.serve.app import STATIC

LIMITS = {"max_sentences": 3, "max_chars": 200, "max_beam": 6, "max_wait_ms": 1.0}


class FakeEngine:
    """An Engine that translates ``x`` to ``EN(x)#i`` for its i-th hypothesis and records
    every call; ``gate`` (when set) holds each call until released; a line with ``boom``
    makes the call fail."""

    name = "fake"
    max_source_tokens = 8  # whitespace words (no vocab: the server's fallback pieces)

    def __init__(self, run: Path | None = None):
        self.calls: list[tuple[list[str], dict]] = []
        self.decode_cfg = DecodeConfig(beam=4, len_penalty=0.6)
        self.run = run
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def describe(self) -> dict:
        return {"engine": "fake", "name": "fake-run", "run": str(self.run) if self.run else None,
                "config": {"decode": {"beam": 4}}}

    def translate_text(self, lines: list[str], **settings) -> list[list[Translation]]:
        self.calls.append((list(lines), settings))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if any("boom" in line for line in lines):
            raise RuntimeError("boom")
        return [[Translation(f"EN({line})#{i}", -0.1 * (i + 1), -1.0, 3)
                 for i in range(settings["nbest"])] for line in lines]

    def seen(self) -> list[str]:
        return [line for lines, _ in self.calls for line in lines]


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory):
    """(engine, client) of one server on a free loopback port for the fake-engine tests."""
    run = tmp_path_factory.mktemp("run")
    (run / "eval").mkdir()
    (run / "eval" / "test2016.json").write_text(json.dumps(
        {"split": "test2016", "bleu": 12.34, "chrf": 40.1, "sentences": 1000,
         "bleu_signature": "nrefs:1|case:mixed|tok:13a"}))
    (run / "eval" / "broken.json").write_text("{not json")
    engine = FakeEngine(run)
    with Background(create_app(engine, ServeSettings(**LIMITS))) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        yield engine, client


@pytest.fixture
def fake(fake_server):
    engine, client = fake_server
    engine.calls.clear()
    engine.gate = None
    return engine, client


def test_a_string_gives_one_entry_and_a_list_one_per_sentence_in_order(fake):
    engine, client = fake
    one = client.post("/v1/translate", json={"text": "Ein Hund."}).json()
    assert one["translations"] == [{"text": "EN(Ein Hund.)#0", "score": -0.1,
                                    "truncated": False, "alternatives": []}]
    assert one["model"] == "fake-run" and one["seconds"] >= 0
    assert one["settings"] == {"beam": 4, "n_best": 1, "len_penalty": 0.6, "max_len_a": 1.5,
                               "max_len_b": 10}  # the run's decode config
    many = client.post("/v1/translate", json={"text": ["a", "b", "c"], "beam": 3,
                                              "n_best": 3}).json()
    assert [t["text"] for t in many["translations"]] == ["EN(a)#0", "EN(b)#0", "EN(c)#0"]
    assert many["translations"][1]["alternatives"] == [{"text": "EN(b)#1", "score": -0.2},
                                                       {"text": "EN(b)#2", "score": -0.3}]
    assert engine.calls[-1][1] == {"beam": 3, "nbest": 3, "len_penalty": 0.6,
                                   "max_len_a": 1.5, "max_len_b": 10,
                                   "batch_size": ServeSettings.search_batch}


def test_model_and_health_say_what_is_loaded(fake):
    _, client = fake
    info = client.get("/v1/model").json()
    assert info["name"] == "fake-run" and info["engine"]["engine"] == "fake"
    assert "config" not in info["engine"] and info["config"] == {"decode": {"beam": 4}}
    assert info["scores"] == {"test2016": {"bleu": 12.34, "chrf": 40.1, "sentences": 1000,
                                           "bleu_signature": "nrefs:1|case:mixed|tok:13a"}}
    assert info["decode"]["beam"] == 4 and info["limits"]["max_beam"] == 6
    assert info["limits"]["max_source_tokens"] == 8
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["engine"] == "fake"


BAD = [  # (raw body, the field the 422 names)
    (b'{"text": "a",', "body"),
    (b'\xff\xfe', "body"),
    (b'["a"]', "body"),
    (b'{}', "text"),
    (b'{"text": 5}', "text"),
    (b'{"text": {"de": "a"}}', "text"),
    (b'{"text": ["a", 7]}', "text[1]"),
    (b'{"text": "a", "beem": 5}', "beem"),
    (b'{"text": "a", "beam": "5"}', "beam"),
    (b'{"text": "a", "beam": 2.5}', "beam"),
    (b'{"text": "a", "beam": true}', "beam"),
    (b'{"text": "a", "beam": 0}', "beam"),
    (b'{"text": "a", "beam": 7}', "beam"),  # over max_beam
    (b'{"text": "a", "beam": 2, "n_best": 3}', "n_best"),
    (b'{"text": "a", "n_best": 0}', "n_best"),
    (b'{"text": "a", "len_penalty": "x"}', "len_penalty"),
    (b'{"text": "a", "len_penalty": NaN}', "len_penalty"),
    (b'{"text": "a", "max_len_a": -1}', "max_len_a"),
    (b'{"text": "a", "max_len_b": 1.5}', "max_len_b"),
    (b'[' * 5000, "body")  # nested too deep for the parser,
]


@pytest.mark.parametrize("body,field", BAD, ids=[f for _, f in BAD])
def test_malformed_bodies_are_422_naming_the_field(fake, body, field):
    engine, client = fake
    answer = client.post("/v1/translate", content=body,
                         headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field and field in answer.json()["detail"]
    assert engine.calls == []
    assert client.post("/v1/translate", json={"text": "ok"}).status_code == 200


@pytest.mark.parametrize("text,limit", [(["a", "b", "c", "d"], {"max_sentences": 3}),
                                        (["x" * 150, "y" * 51], {"max_chars": 200}),
                                        ("x" * 100_000, {"max_bytes": 6 * 200 + 8 * 3 + 4096})])
def test_too_many_sentences_or_characters_are_413_with_the_limit(fake, text, limit):
    engine, client = fake
    answer = client.post("/v1/translate", json={"text": text})
    assert answer.status_code == 413 and answer.json()["limit"] == limit
    assert engine.calls == []
    assert client.post("/v1/translate", json={"text": ["a", "b", "c"]}).status_code == 200


def test_an_empty_sentence_is_an_empty_translation(fake):
    engine, client = fake
    empty = client.post("/v1/translate", json={"text": "", "n_best": 2}).json()
    assert empty["translations"] == [{"text": "", "score": 0.0, "truncated": False,
                                      "alternatives": []}]
    assert engine.calls == []  # nothing to translate: the engine is not asked
    mixed = client.post("/v1/translate", json={"text": ["  ", "a", ""]}).json()
    assert [t["text"] for t in mixed["translations"]] == ["", "EN(a)#0", ""]
    assert engine.seen() == ["a"]
    assert client.post("/v1/translate", json={"text": []}).json()["translations"] == []


def test_a_sentence_longer_than_the_model_is_truncated(fake):
    engine, client = fake
    words = " ".join(f"w{i}" for i in range(20))
    out = client.post("/v1/translate", json={"text": [words, "short one"]}).json()
    assert [t["truncated"] for t in out["translations"]] == [True, False]
    assert engine.seen() == [" ".join(f"w{i}" for i in range(8)), "short one"]


def test_a_failing_request_is_a_500_and_the_server_goes_on(fake):
    _, client = fake
    answer = client.post("/v1/translate", json={"text": "boom"})
    assert answer.status_code == 500 and "boom" in answer.json()["detail"]
    assert client.post("/v1/translate", json={"text": "fine"}).status_code == 200


def test_a_client_that_disconnects_leaves_no_work(fake):
    """A request waiting behind a running batch whose client gives up is dropped from the
    queue: the engine never sees it."""
    engine, client = fake
    engine.gate, engine.entered = threading.Event(), threading.Event()
    first: dict = {}
    worker = threading.Thread(target=lambda: first.update(
        client.post("/v1/translate", json={"text": "first"}).json()))
    worker.start()
    assert engine.entered.wait(10)  # the first request's batch is running (held)
    dropped = client.get("/health").json()["dropped"]
    with httpx.Client(base_url=str(client.base_url), timeout=0.3) as impatient, \
            pytest.raises(httpx.TimeoutException):
        impatient.post("/v1/translate", json={"text": "gone"})
    deadline = time.monotonic() + 10
    while client.get("/health").json()["dropped"] == dropped and time.monotonic() < deadline:
        time.sleep(0.02)
    engine.gate.set()
    worker.join(10)
    assert first["translations"][0]["text"] == "EN(first)#0"
    assert client.post("/v1/translate", json={"text": "after"}).status_code == 200
    assert engine.seen() == ["first", "after"]


# -- the batcher ------------------------------------------------------------------------------

GREEDY = DecodeSettings(beam=1, n_best=1, len_penalty=1.0, max_len_a=1.5, max_len_b=10)
BEAM2 = DecodeSettings(beam=2, n_best=2, len_penalty=1.0, max_len_a=1.5, max_len_b=10)


async def _held_first(batcher: Batcher, engine: FakeEngine) -> asyncio.Task:
    """A first request whose batch runs and is held by the engine's gate."""
    engine.gate = threading.Event()
    first = asyncio.ensure_future(batcher.translate(["first"], GREEDY))
    while not engine.entered.is_set():
        await asyncio.sleep(0.005)
    return first


def test_concurrent_requests_merge_by_settings_and_answer_in_order():
    engine = FakeEngine()
    batcher = Batcher(engine, max_batch_tokens=1000, max_wait_ms=1)

    async def scenario():
        first = await _held_first(batcher, engine)
        jobs = [batcher.translate([f"s{i}a", f"s{i}b"], GREEDY) for i in range(4)]
        other = batcher.translate(["other"], BEAM2)
        tasks = [asyncio.ensure_future(j) for j in [*jobs, other]]
        await asyncio.sleep(0.05)  # all queued behind the held batch
        engine.gate.set()
        return await first, await asyncio.gather(*tasks)

    try:
        first, results = asyncio.run(scenario())
    finally:
        batcher.close()
    assert first.translations[0][0].text == "EN(first)#0"
    for i, result in enumerate(results[:4]):
        assert [h[0].text for h in result.translations] == [f"EN(s{i}a)#0", f"EN(s{i}b)#0"]
    assert [h.text for h in results[4].translations[0]] == ["EN(other)#0", "EN(other)#1"]
    assert [lines for lines, _ in engine.calls] == [
        ["first"], [f"s{i}{x}" for i in range(4) for x in "ab"], ["other"]]
    assert batcher.stats()["batches"] == 3


def test_a_batch_holds_at_most_max_batch_tokens():
    engine = FakeEngine()
    batcher = Batcher(engine, max_batch_tokens=6, max_wait_ms=1)  # a job: 2 x (1 word + EOS)

    async def scenario():
        first = await _held_first(batcher, engine)
        tasks = [asyncio.ensure_future(batcher.translate([f"s{i}a", f"s{i}b"], GREEDY))
                 for i in range(3)]
        await asyncio.sleep(0.05)
        engine.gate.set()
        await first
        return await asyncio.gather(*tasks)

    try:
        asyncio.run(scenario())
    finally:
        batcher.close()
    assert [len(lines) for lines, _ in engine.calls] == [1, 2, 2, 2]


def test_a_cancelled_request_never_reaches_the_engine():
    engine = FakeEngine()
    batcher = Batcher(engine, max_wait_ms=1)

    async def scenario():
        first = await _held_first(batcher, engine)
        doomed = asyncio.ensure_future(batcher.translate(["doomed"], GREEDY))
        kept = asyncio.ensure_future(batcher.translate(["kept"], GREEDY))
        await asyncio.sleep(0.05)
        doomed.cancel()
        await asyncio.sleep(0.01)
        engine.gate.set()
        await first
        return await kept

    try:
        kept = asyncio.run(scenario())
    finally:
        batcher.close()
    assert kept.translations[0][0].text == "EN(kept)#0"
    assert engine.seen() == ["first", "kept"]
    assert batcher.stats()["dropped"] == 1


def test_a_failing_request_does_not_fail_its_batch_neighbours():
    engine = FakeEngine()
    batcher = Batcher(engine, max_wait_ms=1)

    async def scenario():
        first = await _held_first(batcher, engine)
        tasks = [asyncio.ensure_future(batcher.translate([t], GREEDY))
                 for t in ("ok1", "boom", "ok2")]
        await asyncio.sleep(0.05)
        engine.gate.set()
        await first
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        ok1, boom, ok2 = asyncio.run(scenario())
    finally:
        batcher.close()
    assert isinstance(boom, RuntimeError)
    assert ok1.translations[0][0].text == "EN(ok1)#0" and ok2.translations[0][0].text == \
        "EN(ok2)#0"


def test_an_engine_answering_too_few_sentences_fails_the_request_not_the_worker():
    engine = FakeEngine()
    engine.translate_text = lambda lines, **kw: []
    batcher = Batcher(engine, max_wait_ms=1)

    async def scenario():
        with pytest.raises(RuntimeError, match="answered 0 of 2"):
            await batcher.translate(["a", "b"], GREEDY)
        engine.translate_text = FakeEngine.translate_text.__get__(engine)
        return await batcher.translate(["c"], GREEDY)

    try:
        assert asyncio.run(scenario()).translations[0][0].text == "EN(c)#0"
    finally:
        batcher.close()


# -- a real model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def translator(tiny_translator) -> Translator:
    """The tiny random-init translator of ``conftest.tiny_translator`` (beam=2, max_len_b=5)."""
    return tiny_translator(beam=2, max_len_b=5)


def test_the_real_engine_truncates_what_it_cannot_encode(translator, caplog):
    """A sentence longer than the model's positions: a plain translate cuts it with a warning
    naming the line; the server cuts it to max_source_tokens pieces and flags it."""
    long = " ".join(["Hund"] * 200)
    with caplog.at_level("WARNING"):
        assert len(translator.translate(["Ein Hund.", long])) == 2
    assert "input line 2:" in caplog.text
    with Background(create_app(translator)) as url, httpx.Client(base_url=url) as client:
        out = client.post("/v1/translate", json={"text": [long, "Ein Hund läuft."],
                                                 "n_best": 2}).json()
        info = client.get("/v1/model").json()
    assert [t["truncated"] for t in out["translations"]] == [True, False]
    assert all(len(t["alternatives"]) == 1 for t in out["translations"])
    assert info["limits"]["max_source_tokens"] == translator.max_source_tokens
    assert info["decode"]["beam"] == 2 and info["engine"]["engine"] == "gapless"


# -- the page and the CLI ----------------------------------------------------------------------


def test_the_page_is_served_offline_with_labelled_controls(fake):
    _, client = fake
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers[
        "content-security-policy"]
    html = page.text
    for asset in ("static/app.js", "static/style.css"):  # relative: works under a prefix
        assert f'"{asset}"' in html and client.get(f"/{asset}").status_code == 200
    import re

    for control in re.findall(r"<(?:textarea|input|select)[^>]*\bid=\"([^\"]+)\"", html):
        assert f'<label for="{control}"' in html, control
    for path in STATIC.iterdir():  # nothing fetched from elsewhere
        assert not re.search(r"(?:src|href)=\"(?:https?:)?//|url\((?:https?:)?//|import ",
                             path.read_text(encoding="utf-8")), path.name


def test_cli_serve_passes_its_options(monkeypatch, tmp_path):
    import gapless.serve
    from gapless.cli import main

    seen = {}
    monkeypatch.setattr(gapless.serve, "serve_run", lambda run, settings, **kw: seen.update(
        run=run, settings=settings, **kw))
    assert main(["serve", str(tmp_path), "--port", "9001", "--max-sentences", "5",
                 "--max-wait-ms", "2.5", "--engine", "gapless", "--checkpoint", "last"]) == 0
    assert seen["run"] == str(tmp_path) and seen["checkpoint"] == "last"
    assert seen["engine"] == "gapless" and seen["settings"].port == 9001
    assert seen["settings"].max_sentences == 5 and seen["settings"].max_wait_ms == 2.5
    assert seen["settings"].host == "127.0.0.1"
