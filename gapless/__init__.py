"""gapless: Transformer NMT that trains the way it decodes."""

import os

# oneDNN (CPU bf16 matmuls) caches one compiled kernel per matrix shape, 1024 by default. Beam
# search and token-bucketed batches cycle through more shapes than that, so the LRU cache
# thrashed and bf16 decoding slowed pass after pass (151 -> 134 -> 119 sentences/s on three
# passes over test2016; 147 -> 159 -> 160 with a larger cache). Read when oneDNN first runs.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")

from .config import Config
from .config import load as load_config
from .evaluate import Translator, load

__all__ = ["Config", "Translator", "load", "load_config"]
__version__ = "0.1.0"
