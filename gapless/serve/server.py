"""Running the server: load a run's engine and serve it with uvicorn (one process, one model).

Batching settings that the command line does not name come from the environment:
``GAPLESS_SERVE_BATCH_START`` (oldest | quiet | refill), ``GAPLESS_SERVE_MAX_HOLD_MS``,
``GAPLESS_SERVE_TRIM_EVERY``, ``GAPLESS_SERVE_SEARCH_BATCH`` and
``GAPLESS_SERVE_SOURCE_MULTIPLE`` (the ``ServeSettings`` fields of those names).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import os
import socket
import threading
from pathlib import Path

from .. import inference
from ..config import ConfigError
from ..decode import ModelStepper
from .app import create_app
from .owner import EngineThread
from .schema import BATCHING_CHECKS, ServeSettings, batching_problem

log = logging.getLogger(__name__)


SERVER_ONEDNN_CACHE = "1024"  # oneDNN's own default
ENV_PREFIX = "GAPLESS_SERVE_"
ENV_FIELDS = tuple(BATCHING_CHECKS)  # the ServeSettings fields that GAPLESS_SERVE_<FIELD> sets


def settings_from_env(settings: ServeSettings, env: dict | None = None) -> ServeSettings:
    """``settings`` with each of ``ENV_FIELDS`` that a ``GAPLESS_SERVE_<FIELD>`` variable
    sets (a ConfigError names a value of the wrong type or out of range)."""
    env = os.environ if env is None else env
    changes = {}
    for name in ENV_FIELDS:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is None or raw == "":
            continue
        kind = type(getattr(settings, name))
        try:
            value = kind(raw)
        except ValueError:
            value = None
        problem = "expected " + BATCHING_CHECKS[name][1] if value is None \
            else batching_problem(name, value)
        if problem:
            raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r}: {problem}")
        changes[name] = value
    return dataclasses.replace(settings, **changes)


def prepare_runtime(env: dict | None = None) -> None:
    """The process settings of a server, set before its model loads: oneDNN's kernel cache at
    its default bound (a server meets ever-new batch shapes; an explicit
    ONEDNN_PRIMITIVE_CACHE_CAPACITY wins). Offline measurements that compare with a server
    call it too."""
    env = os.environ if env is None else env
    env.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", SERVER_ONEDNN_CACHE)


def load_model(path: str | Path, checkpoint: str = "best", device: str = "auto",
               dtype: str = "fp32", engine: str = "auto"):
    """An ``Engine`` for ``path``: ``gapless.export.load_engine`` (a run, or an exported
    CTranslate2 directory; ``engine`` auto | gapless | ctranslate2), else, without the export
    package, ``gapless.inference.load`` of a run."""
    try:
        from ..export import load_engine
    except ImportError:
        if engine not in ("auto", "gapless"):
            raise ConfigError(f"--engine {engine}: this gapless has only its own engine")
        return inference.load(path, checkpoint, device, dtype)
    return load_engine(path, engine=engine, checkpoint=checkpoint, device=device, dtype=dtype)


STACK = {"http": ("h11", "httptools"), "loop": ("asyncio", "uvloop")}  # (always there, faster)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def server_stack(settings: ServeSettings) -> dict:
    """The HTTP parser and event loop uvicorn will run for ``settings.http`` / ``loop``
    ("auto": httptools and uvloop when installed, as uvicorn picks them, else h11 and
    asyncio); a ConfigError names a choice that does not exist or is not installed."""
    stack = {}
    for field, (plain, fast) in STACK.items():
        name = getattr(settings, field)
        if name not in ("auto", plain, fast):
            raise ConfigError(f"--{field} {name!r}: expected one of auto, {plain}, {fast}")
        if name == "auto":
            name = fast if _installed(fast) else plain
        elif not _installed(name):
            raise ConfigError(f"--{field} {name}: not installed (pip install {name})")
        stack[field] = name
    return stack


def uvicorn_server(app, settings: ServeSettings, log_level: str = "info"):
    """A ``uvicorn.Server`` for ``app`` on ``settings.host:port`` with the parser and loop of
    ``server_stack`` (not started)."""
    import uvicorn

    stack = server_stack(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                            workers=1, lifespan="on", timeout_graceful_shutdown=5,
                            http=stack["http"], loop=stack["loop"])
    return uvicorn.Server(config)


def serve(engine, settings: ServeSettings, log_level: str = "info",
          owner: EngineThread | None = None) -> None:
    """Serve ``engine`` until interrupted (its batches run in ``owner``, the thread that
    loaded it, when given)."""
    log.info("serving %s on http://%s:%d", engine.describe().get("name", engine.name),
             settings.host, settings.port)
    uvicorn_server(create_app(engine, settings, owner), settings, log_level).run()


def pad_sources(engine, multiple: int) -> None:
    """Have ``engine``'s searches pad each batch's source [B,S] with PAD to a multiple of
    ``multiple`` tokens (``gapless.decode.pad_source``; 0: unpadded, as offline). Padded keys
    are masked, but the longer reductions can change a bf16 translation now and then, so
    offline decoding keeps the unpadded source. An engine without gapless's ``ModelStepper``
    (CTranslate2, a custom stepper) is left as it is."""
    if multiple and getattr(engine, "stepper", None) is ModelStepper:
        engine.stepper = functools.partial(ModelStepper, source_multiple=multiple)


def serve_run(run: str | Path, settings: ServeSettings, checkpoint: str = "best",
              device: str = "auto", dtype: str = "fp32", engine: str = "auto") -> None:
    """``gapless serve``: load ``run``'s model (after ``prepare_runtime``) in the
    ``EngineThread`` that will run its batches, and serve it until interrupted, with
    ``settings`` completed by ``settings_from_env`` and its ``http`` / ``loop`` resolved
    (``server_stack``, checked before the model loads)."""
    prepare_runtime()
    settings = dataclasses.replace(settings_from_env(settings), **server_stack(settings))
    owner = EngineThread()
    model = owner.call(load_model, run, checkpoint, device, dtype, engine)
    pad_sources(model, settings.source_multiple)
    if settings.run is None and Path(run, "eval").is_dir():
        settings.run = run
    serve(model, settings, owner=owner)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class Background:
    """A uvicorn server in a daemon thread (tests, screenshots): ``with Background(app) as
    url:`` serves ``app`` on a free loopback port until the block ends."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None):
        self.settings = ServeSettings(host=host, port=port or free_port(host))
        self.server = uvicorn_server(app, self.settings, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def __enter__(self) -> str:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
