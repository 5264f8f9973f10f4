"""gapless: Transformer NMT that trains the way it decodes."""

from . import model, schedules, strategies  # noqa: F401  (their registries declare the choices)
from .config import Config
from .config import load as load_config
from .inference import Translator, load

__all__ = ["Config", "Translator", "load", "load_config"]
__version__ = "0.1.0"
