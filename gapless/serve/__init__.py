"""The translation server (``gapless serve RUN``): one model behind an HTTP API with dynamic
batching and a web page; the API is described in ``gapless.serve.app``."""

from .app import create_app
from .batcher import Batcher
from .owner import EngineThread
from .schema import DecodeSettings, RequestError, ServeSettings
from .server import Background, load_model, serve, serve_run

__all__ = ["Background", "Batcher", "DecodeSettings", "EngineThread", "RequestError",
           "ServeSettings", "create_app", "load_model", "serve", "serve_run"]
