"""Running the server: load a run's engine and serve it with uvicorn (one process, one model)."""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path

from .. import inference
from ..config import ConfigError
from .app import create_app
from .schema import ServeSettings

log = logging.getLogger(__name__)


SERVER_ONEDNN_CACHE = "1024"  # oneDNN's own default


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


def uvicorn_server(app, settings: ServeSettings, log_level: str = "info"):
    """A ``uvicorn.Server`` for ``app`` on ``settings.host:port`` (not started)."""
    import uvicorn

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                            workers=1, lifespan="on", timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def serve(engine, settings: ServeSettings, log_level: str = "info") -> None:
    """Serve ``engine`` until interrupted."""
    log.info("serving %s on http://%s:%d", engine.describe().get("name", engine.name),
             settings.host, settings.port)
    uvicorn_server(create_app(engine, settings), settings, log_level).run()


def serve_run(run: str | Path, settings: ServeSettings, checkpoint: str = "best",
              device: str = "auto", dtype: str = "fp32", engine: str = "auto") -> None:
    """``gapless serve``: load ``run``'s model and serve it until interrupted. A server meets
    ever-new batch shapes, so oneDNN's kernel cache stays at its default bound (an explicit
    ONEDNN_PRIMITIVE_CACHE_CAPACITY wins) and memory stays flat."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", SERVER_ONEDNN_CACHE)
    model = load_model(run, checkpoint, device, dtype, engine)
    if settings.run is None and Path(run, "eval").is_dir():
        settings.run = run
    serve(model, settings)


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
