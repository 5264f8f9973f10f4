"""Typed configuration: dataclasses are the schema, YAML files and dotted overrides only override.

A config file holds only what differs from the defaults below. Unknown keys are rejected, all of
them listed at once, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .strategy_config import StrategyConfig, strategy_problems


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class ModelConfig:
    """The Transformer and its switches (methods.md section 1)."""

    d_model: int = 512
    n_heads: int = 8
    head_dim: int | None = None  # None: d_model // n_heads (the paper's per-head reduction)
    ffn_dim: int = 2048
    enc_layers: int = 6
    dec_layers: int = 6
    dropout: float = 0.1
    attn_dropout: float = 0.0
    act_dropout: float = 0.0
    # the allowed values of a choice setting are the keys of its registry (``CHOICES``)
    activation: str = "relu"
    score: str = "sqrt"  # attention score scaling
    norm: str = "layer"
    norm_position: str = "post"  # post: the paper's
    projections: str = "separate"  # Q/K/V projections
    tie_encoder_decoder: bool = True  # encoder and decoder share one embedding table
    tie_output: bool = True  # decoder table is the output projection
    embed_scale: str = "sqrt"  # sqrt: x sqrt(d_model)
    positions: str = "sinusoidal"
    max_positions: int = 1024
    vocab_size: int = 0  # filled in from the SentencePiece model
    pad_id: int = 0


@dataclass
class DataConfig:
    """Where the parallel text comes from and how it becomes token ids."""

    corpus: str = "multi30k"  # a named corpus (gapless.corpora) or a directory of <split>.<lang>
    data_dir: str | None = None  # default: $GAPLESS_DATA, else ../shared/data when it exists
    src_lang: str = "de"
    tgt_lang: str = "en"
    train_split: str = "train"
    valid_split: str = "valid"
    test_splits: list[str] = field(default_factory=lambda: ["test2016"])
    vocab_size: int = 8000
    spm_type: str = "bpe"
    character_coverage: float = 1.0
    max_len: int = 256  # tokens per side; longer training pairs are dropped (and counted)
    bad_pairs: str = "drop"  # drop: filter, report counts; error: stop at the first, file:line
    download: bool = True  # fetch a named corpus into the cache when it is not found locally
    spm_sample: int = 2_000_000  # lines per side SentencePiece trains on (a uniform sample)
    workers: int | None = None  # encoding processes for prepare (None: the core count; 0, 1: none)
    shard_pairs: int = 1_000_000  # training pairs per shard file
    max_len_ratio: float = 0.0  # > 0: drop pairs whose longer side has > ratio x the pieces
    dedup: bool = False  # drop exact duplicate pairs after the first
    drop_identical: bool = False  # drop pairs whose source equals the target


@dataclass
class TrainConfig:
    """Optimisation, batching, validation, checkpoints."""

    seed: int = 1
    max_tokens: int = 4096  # per micro-batch: max(src, tgt) incl. padding x sentences
    accum: int = 1  # micro-batches per update (per rank)
    lr: float = 5e-4
    warmup: int = 4000
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 0.0  # 0: no clipping
    label_smoothing: float = 0.1
    max_updates: int = 100_000
    max_epochs: int = 1000
    max_minutes: float = 0.0  # wall-clock budget for training (0: none)
    log_every: int = 50
    valid_every: int = 1000
    valid_beam: int = 1
    valid_max_sentences: int = 0  # 0: the whole validation split
    patience: int = 0  # early stopping after N validations without a better BLEU (0: off)
    save_every: int = 1000
    keep_last: int = 2
    dtype: str = "bf16"  # bf16: autocast, fp32 master weights
    compile: bool = False  # torch.compile the training step (the model object is unchanged)
    device: str = "auto"
    threads: int = 0  # torch intra-op threads (0: leave torch's default)
    nonfinite: str = "stop"  # a NaN/inf loss: stop before any checkpoint, or skip the update
    progress: bool = True


@dataclass
class DecodeConfig:
    """Search settings used by translate / evaluate."""

    beam: int = 5
    len_penalty: float = 1.0  # alpha: beam search ranks by log-prob / lp(len)
    len_norm: str = "fairseq"  # lp: fairseq len**alpha, gnmt ((5 + len) / 6)**alpha (EOS counted)
    max_len_a: float = 1.5
    max_len_b: int = 10
    min_len: int = 1
    min_len_ratio: float = 0.0  # > 0: also at least ceil(ratio x source pieces) tokens
    batch_size: int = 64  # sentences per batch
    nbest: int = 1


@dataclass
class Config:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)


# ----------------------------------------------------------------------------------------------
# merging and checking


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Convert a YAML / command-line value to the field type, or record a problem."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], where, problems)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {value!r}")
            return value
        return [_coerce(v, inner, where, problems) for v in value]
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            raise ValueError
        if tp is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) else int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        problems.append(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def _merge(obj: Any, data: dict, prefix: str, problems: list[str]) -> None:
    types_ = _field_types(type(obj))
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in types_ and where in RENAMED:
            problems.append(f"'{where}' was renamed: {RENAMED[where]}")
            continue
        if key not in types_:
            problems.append(f"unknown key '{where}' (known: {', '.join(sorted(types_))})")
            continue
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                problems.append(f"{where}: expected a mapping, got {value!r}")
                continue
            _merge(current, value, where + ".", problems)
        else:
            setattr(obj, key, _coerce(value, types_[key], where, problems))


# Settings whose allowed values are fixed here; a registry adds its own setting with
# ``register_choices`` (gapless.model, gapless.strategies, gapless.schedules), so its keys are
# the one list of what a setting accepts.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.spm_type": ("bpe", "unigram"),
    "data.bad_pairs": ("drop", "error"),
    "train.dtype": ("bf16", "fp32"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.nonfinite": ("stop", "skip"),
    "strategy.schedule_unit": ("auto", "update", "epoch"),
    "strategy.mix_unit": ("token", "sentence", "batch"),
}

# old names that now say what they are; a config using one gets this message
RENAMED = {
    "strategy.k": "use strategy.constant_p (constant), strategy.linear_start (linear), "
    "strategy.exp_base (exponential) or strategy.sigmoid_k (inverse_sigmoid)",
    "strategy.c": "use strategy.linear_slope",
    "strategy.mu": "use strategy.or_nmt_mu",
}


def register_choices(setting: str, names, extra: tuple[str, ...] = ()) -> None:
    """Declare the allowed values of ``setting`` ("section.key"): ``extra`` + the registry's
    keys ``names``."""
    CHOICES[setting] = tuple(extra) + tuple(names)


def validate(cfg: Config) -> list[str]:
    """Semantic checks that types alone cannot express; returns all problems."""
    problems = []
    for dotted, allowed in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            problems.append(f"{dotted}: {value!r} is not one of {', '.join(allowed)}")
    m = cfg.model
    head_dim = m.head_dim or (m.d_model // max(m.n_heads, 1))
    if m.head_dim is None and m.d_model % max(m.n_heads, 1):
        problems.append(f"model.n_heads={m.n_heads} does not divide model.d_model={m.d_model}")
    if m.projections == "none" and head_dim * m.n_heads != m.d_model:
        problems.append("model.projections=none needs n_heads * head_dim == d_model")
    problems += _range_problems(cfg)
    if m.max_positions < cfg.data.max_len + 1:
        problems.append(f"model.max_positions ({m.max_positions}) must be >= data.max_len + 1 "
                        f"({cfg.data.max_len + 1}: a sentence plus BOS or EOS)")
    if cfg.train.max_tokens < cfg.data.max_len + 1:
        problems.append(f"train.max_tokens ({cfg.train.max_tokens}) must be >= data.max_len + 1 "
                        f"({cfg.data.max_len + 1}): the longest kept sentence must fit a batch")
    if cfg.decode.nbest > cfg.decode.beam:
        problems.append(f"decode.nbest ({cfg.decode.nbest}) must be <= decode.beam "
                        f"({cfg.decode.beam})")
    if 0 < cfg.data.max_len_ratio < 1:
        problems.append(f"data.max_len_ratio ({cfg.data.max_len_ratio}) must be 0 (off) or >= 1")
    problems += strategy_problems(cfg.strategy)
    return problems


SPECIAL_IDS = 4  # PAD, UNK, BOS, EOS (gapless.data)
MIN_VOCAB = SPECIAL_IDS + 12
# "section.key": (lowest, highest, lowest allowed, highest allowed); None: no bound
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    **{f"model.{k}": (1, None, True, True) for k in ("d_model", "n_heads", "ffn_dim",
                                                     "enc_layers", "dec_layers",
                                                     "max_positions")},
    **{f"model.{k}": (0, 1, True, False) for k in ("dropout", "attn_dropout", "act_dropout")},
    "data.vocab_size": (MIN_VOCAB, None, True, True),
    "data.character_coverage": (0, 1, False, True),
    "data.max_len": (1, None, True, True),
    "data.spm_sample": (100, None, False, True),  # SentencePiece's own minimum
    "data.shard_pairs": (1, None, True, True),
    **{f"data.{k}": (0, None, True, True) for k in ("workers", "max_len_ratio")},
    **{f"train.{k}": (1, None, True, True) for k in ("accum", "max_updates", "max_epochs",
                                                     "log_every", "valid_every", "save_every",
                                                     "keep_last", "valid_beam")},
    "train.max_tokens": (8, None, True, True),
    "train.lr": (0, None, False, True),
    "train.adam_eps": (0, None, False, True),
    "train.label_smoothing": (0, 1, True, False),
    **{f"train.{k}": (0, None, True, True) for k in ("warmup", "weight_decay", "clip_norm",
                                                     "max_minutes", "valid_max_sentences",
                                                     "patience", "threads")},
    **{f"decode.{k}": (1, None, True, True) for k in ("beam", "batch_size", "nbest")},
    **{f"decode.{k}": (0, None, True, True) for k in ("len_penalty", "max_len_a", "max_len_b",
                                                      "min_len", "min_len_ratio")},
    **{f"strategy.{k}": (0, 1, True, True) for k in ("mrt_weight", "cass_low", "cass_high")},
    **{f"strategy.{k}": (0, None, True, True) for k in ("mrt_max_len_a", "mrt_max_len_b")},
    "strategy.mrt_samples": (1, None, True, True),
    "strategy.mrt_alpha": (0, None, False, True),
}


def _range_problems(cfg: Config) -> list[str]:
    """Every numeric setting outside its range (``RANGES``), all at once."""
    problems = []
    for dotted, (low, high, low_ok, high_ok) in RANGES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value is None:  # an optional setting left unset
            continue
        too_low = low is not None and (value < low if low_ok else value <= low)
        too_high = high is not None and (value > high if high_ok else value >= high)
        if too_low or too_high:
            lo = "" if low is None else f"{'[' if low_ok else '('}{low:g}"
            hi = "inf)" if high is None else f"{high:g}{']' if high_ok else ')'}"
            problems.append(f"{dotted} = {value!r} is out of range {lo or '(-inf'}, {hi}")
    if cfg.model.head_dim is not None and cfg.model.head_dim < 1:
        problems.append(f"model.head_dim = {cfg.model.head_dim} must be >= 1 (or none)")
    if any(not 0 <= b < 1 for b in cfg.train.betas) or len(cfg.train.betas) != 2:
        problems.append(f"train.betas = {cfg.train.betas} must be two numbers in [0, 1)")
    return problems


def from_dict(data: dict | None, overrides: list[str] | dict | None = None) -> Config:
    """Build a Config from nested dict data plus dotted overrides; raise ConfigError listing all
    problems (unknown keys, wrong types, bad choices)."""
    cfg = Config()
    problems: list[str] = []
    if data:
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a mapping, got {type(data).__name__}")
        _merge(cfg, data, "", problems)
    for key, value in _parse_overrides(overrides, problems):
        nested: dict = {}
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        _merge(cfg, nested, "", problems)
    try:  # choice and consistency checks, also when other problems were found
        problems += validate(cfg)
    except (TypeError, ValueError, ZeroDivisionError):
        pass  # a value of the wrong type, already reported above
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return cfg


def _parse_overrides(overrides, problems: list[str]) -> list[tuple[str, Any]]:
    if not overrides:
        return []
    if isinstance(overrides, dict):
        return list(overrides.items())
    pairs = []
    items = list(overrides)
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--"):
            problems.append(f"override {item!r} must look like --section.key VALUE")
            i += 1
            continue
        key = item[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(items):
            value = items[i + 1]
            i += 2
        else:
            problems.append(f"override {item!r} has no value")
            break
        pairs.append((key.replace("-", "_"), yaml.safe_load(value) if value != "" else value))
    return pairs


PRESETS = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    """The shipped presets (``gapless/presets/NAME.yaml``)."""
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no preset {name!r} (presets: {', '.join(preset_names())})")
    return path


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A YAML config as a dict, with its ``base:`` (a preset name or a path relative to the
    file) merged underneath, recursively."""
    if path in chain:
        raise ConfigError(f"{path}: 'base' loops: {' -> '.join(map(str, chain + (path,)))}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or "base" not in data:
        return data
    base = str(data.pop("base"))
    local = path.parent / base
    base_path = local if base.endswith((".yaml", ".yml")) and local.is_file() else None
    if base_path is None:
        try:
            base_path = preset_path(base)
        except ConfigError as exc:
            raise ConfigError(f"{path}: base: {exc}") from None
    return _deep_merge(_read_yaml(base_path, chain + (path,)), data)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load(path: str | Path | None, overrides: list[str] | dict | None = None,
         migrate=None) -> Config:
    """Read a YAML config (only the differences from the defaults, or from its ``base``) and
    apply overrides. ``path`` may also name a preset (``tiny``, ``multi30k_de_en``, ...).
    ``migrate``: a function applied to the file's data first (old names of a saved run)."""
    if path is None:
        return from_dict({}, overrides)
    path = Path(path)
    if not path.is_file():
        if path.suffix or len(path.parts) > 1:
            raise ConfigError(f"config file not found: {path}")
        path = preset_path(str(path))
    data = _read_yaml(path)
    if migrate is not None and isinstance(data, dict):
        data = migrate(data)
    try:
        return from_dict(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load_preset(name: str, overrides: list[str] | dict | None = None) -> Config:
    """A shipped preset (``gapless/presets/NAME.yaml``) with overrides."""
    return load(preset_path(name), overrides)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
