"""Export a run to CTranslate2 (``export``) and run the exported model behind the Engine
protocol (``CTranslate2Engine``, ``load_engine``). Needs the optional ``ctranslate2`` package:
``pip install 'gapless[export]'``."""

from .convert import QUANTIZATIONS, ExportError, require_ctranslate2, unsupported
from .directory import export, is_export_dir, read_info
from .engine import ENGINES, CTranslate2Engine, engine_config, load_engine

__all__ = ["ENGINES", "QUANTIZATIONS", "CTranslate2Engine", "ExportError", "engine_config",
           "export", "is_export_dir", "load_engine", "read_info", "require_ctranslate2",
           "unsupported"]
