"""The shipped configs (``NAME.yaml`` here), read by ``gapless train NAME``, quickstart and the
benchmarks; a YAML file may start from one with ``base: NAME``."""

from ..config import load_preset as load
from ..config import preset_names as names
from ..config import preset_path as path

__all__ = ["load", "names", "path"]
