"""Analysis of trained models: exposure-bias diagnosis with its report
(``gapless.analysis.diagnose.diagnose``), and the experiments behind the Transformer's design
choices (``gapless.analysis.explain.explain``). The entry functions are reached through their
modules, so that ``gapless.analysis.diagnose`` and ``gapless.analysis.explain`` stay modules."""

from .diagnose import DiagnoseSettings
from .explain import CLAIMS, format_result
from .exposure import DEFINITIONS, MeasureSettings, measure
from .probe import ForcedPrefix, ModelProbe, Probe
from .report import FIGURES, compare_report, diagnose_report

__all__ = [
    "CLAIMS", "DEFINITIONS", "FIGURES", "DiagnoseSettings", "ForcedPrefix", "MeasureSettings",
    "ModelProbe", "Probe", "compare_report", "diagnose_report", "format_result", "measure",
]
