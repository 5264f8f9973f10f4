"""Config: YAML only overrides the dataclass defaults, dotted overrides, every problem reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from gapless import config as C
from gapless.config import Config, ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def errors(excinfo) -> str:
    return str(excinfo.value)


def test_defaults_without_file():
    cfg = C.load(None)
    assert cfg == Config()
    assert cfg.model.d_model == 512 and cfg.train.betas == [0.9, 0.98]


def test_yaml_overrides_only_what_it_names(tmp_path):
    path = write(tmp_path, "model:\n  d_model: 64\n  norm_position: pre\ntrain:\n  lr: 1.0e-3\n")
    cfg = C.load(path)
    assert cfg.model.d_model == 64 and cfg.model.norm_position == "pre"
    assert cfg.train.lr == 1e-3
    # everything else keeps its default
    default = Config()
    assert cfg.model.n_heads == default.model.n_heads
    assert cfg.data == default.data and cfg.decode == default.decode


def test_empty_yaml_is_defaults(tmp_path):
    assert C.load(write(tmp_path, "")) == Config()


def test_dotted_overrides_space_and_equals(tmp_path):
    path = write(tmp_path, "train:\n  lr: 1.0e-3\n  max_updates: 7\n")
    cfg = C.load(path, ["--train.lr", "5e-4", "--train.max_updates=100", "--name", "exp1"])
    assert cfg.train.lr == 5e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_updates == 100 and isinstance(cfg.train.max_updates, int)
    assert cfg.name == "exp1"


def test_override_types_are_coerced():
    cfg = C.from_dict(
        None,
        [
            "--model.tie_output",
            "false",
            "--model.head-dim=8",  # dashes in keys are accepted
            "--train.clip_norm",
            "1",  # an int where a float is expected
            "--name",
            "123",  # a number where a string is expected stays text
        ],
    )
    assert cfg.model.tie_output is False
    assert cfg.model.head_dim == 8
    assert cfg.train.clip_norm == 1.0 and isinstance(cfg.train.clip_norm, float)
    assert cfg.name == "123"
    assert (
        C.from_dict({"model": {"head_dim": 8}}, ["--model.head_dim", "none"]).model.head_dim is None
    )


def test_dict_overrides():
    cfg = C.from_dict({"train": {"lr": 1e-3}}, {"train.lr": "2e-3", "decode.beam": 4})
    assert cfg.train.lr == 2e-3 and cfg.decode.beam == 4


def test_later_override_wins_over_yaml(tmp_path):
    path = write(tmp_path, "decode:\n  beam: 7\n")
    assert C.load(path).decode.beam == 7
    assert C.load(path, ["--decode.beam", "2"]).decode.beam == 2


def test_unknown_keys_all_listed_in_one_error(tmp_path):
    path = write(
        tmp_path,
        "modle:\n  d_model: 3\nmodel:\n  d_modle: 64\n  n_head: 4\ntrain:\n  lrr: 1\n",
    )
    with pytest.raises(ConfigError) as excinfo:
        C.load(path, ["--decode.beem", "3"])
    msg = errors(excinfo)
    for key in ("'modle'", "'model.d_modle'", "'model.n_head'", "'train.lrr'", "'decode.beem'"):
        assert key in msg, key
    assert str(path) in msg  # the file is named
    assert "n_heads" in msg  # the known keys are offered


def test_unknown_keys_and_type_errors_together():
    with pytest.raises(ConfigError) as excinfo:
        C.from_dict({"model": {"d_model": "big", "nheads": 4}, "train": {"lr": "fast"}})
    msg = errors(excinfo)
    assert "model.d_model" in msg and "'model.nheads'" in msg and "train.lr" in msg


@pytest.mark.parametrize(
    "data, where",
    [
        ({"model": {"d_model": "abc"}}, "model.d_model"),
        ({"model": {"d_model": 3.5}}, "model.d_model"),  # no silent truncation
        ({"model": {"n_heads": True}}, "model.n_heads"),  # a bool is not an int
        ({"model": {"tie_output": "maybe"}}, "model.tie_output"),
        ({"model": {"dropout": "x"}}, "model.dropout"),
        ({"train": {"lr": [1, 2]}}, "train.lr"),
        ({"train": {"betas": 0.9}}, "train.betas"),  # a list field given a scalar
        ({"train": {"betas": [0.9, "x"]}}, "train.betas"),  # a bad list element
        ({"model": 3}, "model"),  # a section given a scalar
    ],
)
def test_wrong_types_rejected(data, where):
    with pytest.raises(ConfigError) as excinfo:
        C.from_dict(data)
    assert where in errors(excinfo)


def test_wrong_type_override_rejected():
    with pytest.raises(ConfigError, match="train.max_updates"):
        C.from_dict(None, ["--train.max_updates", "lots"])


@pytest.mark.parametrize("data", [{"name": {"a": 1}}, {"data": {"src_lang": ["de", "fr"]}}])
def test_str_field_rejects_containers(data):
    with pytest.raises(ConfigError):
        C.from_dict(data)


@pytest.mark.parametrize(
    "key, bad",
    [
        ("model.score", "cosine"),
        ("model.norm", "group"),
        ("model.norm_position", "middle"),
        ("model.projections", "tied"),
        ("model.positions", "rotary"),
        ("model.embed_scale", "log"),
        ("train.dtype", "fp16"),
        ("data.spm_type", "word"),
    ],
)
def test_bad_choice_rejected(key, bad):
    with pytest.raises(ConfigError) as excinfo:
        C.from_dict(None, [f"--{key}", bad])
    assert key in errors(excinfo) and repr(bad) in errors(excinfo)


def test_all_bad_choices_listed_together():
    with pytest.raises(ConfigError) as excinfo:
        C.from_dict({"model": {"score": "cosine", "norm": "group"}, "train": {"dtype": "fp16"}})
    msg = errors(excinfo)
    assert "model.score" in msg and "model.norm" in msg and "train.dtype" in msg


def test_bad_choice_and_unknown_key_listed_together():
    with pytest.raises(ConfigError) as excinfo:
        C.from_dict({"model": {"score": "cosine", "d_modle": 64}})
    msg = errors(excinfo)
    assert "'model.d_modle'" in msg and "model.score" in msg


def test_semantic_checks():
    with pytest.raises(ConfigError, match="does not divide"):
        C.from_dict({"model": {"d_model": 30, "n_heads": 4}})
    with pytest.raises(ConfigError, match="projections=none"):
        C.from_dict({"model": {"projections": "none", "head_dim": 16, "n_heads": 8}})
    ok = C.from_dict({"model": {"projections": "none", "head_dim": 64, "n_heads": 8}})
    assert ok.model.projections == "none"
    with pytest.raises(ConfigError, match="label_smoothing"):
        C.from_dict({"train": {"label_smoothing": 1.0}})


@pytest.mark.parametrize(
    "override, expected",
    [
        (["--data.test_splits", "test2016,test2017"], ["test2016", "test2017"]),
        (["--data.test_splits=[a, b, c]"], ["a", "b", "c"]),
        (["--data.test_splits", "only"], ["only"]),
    ],
)
def test_list_field_overrides(override, expected):
    assert C.from_dict(None, override).data.test_splits == expected


def test_list_fields_from_yaml_and_override(tmp_path):
    path = write(tmp_path, "train:\n  betas: [0.8, 0.9]\ndata:\n  test_splits:\n  - x\n  - y\n")
    cfg = C.load(path)
    assert cfg.train.betas == [0.8, 0.9] and cfg.data.test_splits == ["x", "y"]
    cfg = C.load(path, ["--train.betas", "[0.9, 0.999]"])
    assert cfg.train.betas == [0.9, 0.999] and all(isinstance(b, float) for b in cfg.train.betas)
    # defaults are not shared between instances
    a, b = Config(), Config()
    a.train.betas.append(1.0)
    assert b.train.betas == [0.9, 0.98]


def test_override_syntax_errors_listed():
    with pytest.raises(ConfigError) as excinfo:
        C.from_dict(None, ["train.lr", "3", "--decode.beam"])
    msg = errors(excinfo)
    assert "'train.lr'" in msg and "--decode.beam" in msg and "no value" in msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        C.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        C.load(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        C.load(write(tmp_path, "- a\n- b\n"))


def test_save_load_round_trip(tmp_path):
    cfg = C.from_dict(
        {
            "name": "rt",
            "model": {"d_model": 64, "head_dim": 16, "tie_output": False, "score": "qk_norm"},
        },
        ["--train.betas", "[0.9, 0.95]", "--data.test_splits", "a,b", "--train.lr=3e-4"],
    )
    path = tmp_path / "saved.yaml"
    C.save(cfg, path)
    again = C.load(path)
    assert again == cfg
    assert again != Config()
    assert C.to_dict(again) == C.to_dict(cfg)
    # the default head_dim (None) survives the trip too
    C.save(Config(), path)
    assert C.load(path) == Config() and C.load(path).model.head_dim is None


def test_repo_configs_load():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = C.load(path)
        assert isinstance(cfg, Config)
    tiny = C.load(ROOT / "configs" / "tiny.yaml")
    assert tiny.model.d_model == 32 and tiny.name == "tiny"


def test_every_preset_loads_by_name_and_configs_point_at_presets():
    from gapless import presets

    names = presets.names()
    assert {"tiny", "multi30k_de_en", "multi30k_de_en_60min", "quickstart_synthetic"} <= set(names)
    for name in names:
        assert C.load(name) == presets.load(name)
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        assert C.load(path) == presets.load(path.stem), path.name


def test_base_merges_underneath_and_overrides_win(tmp_path):
    path = write(tmp_path, "base: multi30k_de_en\nname: mine\ntrain:\n  lr: 1.0e-4\n")
    cfg = C.load(path, ["--model.dropout", "0.5"])
    preset = C.load("multi30k_de_en")
    assert (cfg.name, cfg.train.lr, cfg.model.dropout) == ("mine", 1e-4, 0.5)
    assert cfg.train.max_tokens == preset.train.max_tokens  # untouched keys come from the base
    assert cfg.model.norm_position == preset.model.norm_position == "pre"


def test_base_may_be_a_file_next_to_the_config(tmp_path):
    (tmp_path / "parent.yaml").write_text("model:\n  d_model: 64\n  n_heads: 2\n")
    path = write(tmp_path, "base: parent.yaml\nmodel:\n  n_heads: 4\n")
    cfg = C.load(path)
    assert (cfg.model.d_model, cfg.model.n_heads) == (64, 4)


def test_unknown_preset_and_base_loops_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="no preset 'nope'.*tiny"):
        C.load("nope")
    path = write(tmp_path, "base: nope\n")
    with pytest.raises(ConfigError, match="base: no preset 'nope'"):
        C.load(path)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        C.load(tmp_path / "a.yaml")


def test_choices_are_the_registries_keys():
    """One source of truth: a choice setting accepts exactly its registry's keys."""
    from gapless import layers, model, schedules, strategies

    registries = {
        "model.norm": layers.NORMS, "model.norm_position": layers.RESIDUALS,
        "model.score": layers.SCORES, "model.projections": layers.PROJECTIONS,
        "model.activation": layers.ACTIVATIONS, "model.embed_scale": model.EMBED_SCALES,
        "model.positions": model.POSITIONS, "strategy.name": strategies.STRATEGIES,
        "strategy.predicted": strategies.PREDICTED,
    }
    for setting, registry in registries.items():
        assert C.CHOICES[setting] == tuple(registry), setting
    assert C.CHOICES["strategy.schedule"] == ("auto", *schedules.SCHEDULES)


def test_a_new_registry_entry_becomes_a_valid_choice(monkeypatch):
    from gapless import layers

    with pytest.raises(ConfigError, match="model.norm: 'scale' is not one of layer, rms, batch"):
        C.from_dict({"model": {"norm": "scale"}})
    monkeypatch.setitem(C.CHOICES, "model.norm", (*layers.NORMS, "scale"))
    assert C.from_dict({"model": {"norm": "scale"}}).model.norm == "scale"


@pytest.mark.parametrize("old,new", [("k", "strategy.constant_p"), ("c", "strategy.linear_slope"),
                                     ("mu", "strategy.or_nmt_mu")])
def test_renamed_schedule_parameters_are_rejected_naming_the_new_ones(tmp_path, old, new):
    with pytest.raises(ConfigError, match=f"'strategy.{old}' was renamed: .*{new}"):
        C.load(None, [f"--strategy.{old}", "0.5"])
    with pytest.raises(ConfigError, match="was renamed"):
        C.load(write(tmp_path, f"strategy:\n  {old}: 0.5\n"))


@pytest.mark.parametrize("strategy,field,value", [
    ({"name": "scheduled_sampling", "schedule": "constant"}, "constant_p", 0.5),
    ({"name": "scheduled_sampling", "schedule": "linear"}, "linear_start", 0.9),
    ({"name": "scheduled_sampling", "schedule": "exponential"}, "exp_base", 0.999),
    ({"name": "scheduled_sampling"}, "sigmoid_k", 800.0),  # auto: inverse sigmoid
])
def test_a_saved_run_config_of_the_old_names_still_loads(tmp_path, strategy, field, value):
    import yaml

    from gapless.checkpoint import RunDir

    saved = C.to_dict(Config())
    old = {k: v for k, v in saved["strategy"].items()
           if k not in ("constant_p", "linear_start", "linear_slope", "exp_base", "sigmoid_k",
                        "or_nmt_mu")}
    saved["strategy"] = {**old, **strategy, "k": value, "c": 0.01, "mu": 50.0}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = RunDir(tmp_path).load_config()
    assert getattr(cfg.strategy, field) == value
    assert (cfg.strategy.linear_slope, cfg.strategy.or_nmt_mu) == (0.01, 50.0)
    with pytest.raises(ConfigError, match="renamed"):  # a hand-written config: an error
        C.load(tmp_path / "config.yaml")


@pytest.mark.parametrize("dotted", sorted(C.RANGES))
def test_every_numeric_setting_is_range_checked(dotted):
    low, high, low_ok, high_ok = C.RANGES[dotted]
    section, key = dotted.split(".")
    is_int = isinstance(getattr(getattr(Config(), section), key), int)
    step = 1 if is_int else 1e-3
    bad = [low - step if low_ok else low] if low is not None else []
    bad += [high + step if high_ok else high] if high is not None else []
    for value in bad:
        with pytest.raises(ConfigError, match=f"{dotted} = .* is out of range"):
            C.from_dict(None, {dotted: value, "decode.nbest": 1, "decode.beam": 5}
                        if not dotted.startswith("decode.") else {dotted: value})


def test_range_problems_are_listed_all_at_once():
    with pytest.raises(ConfigError) as exc:
        C.from_dict(None, {"train.lr": -1, "train.log_every": 0, "data.vocab_size": 5,
                           "model.max_positions": 4, "train.max_updates": -1})
    text = errors(exc)
    for key in ("train.lr", "train.log_every", "data.vocab_size", "train.max_updates",
                "model.max_positions (4) must be >= data.max_len + 1"):
        assert key in text, key


def test_nbest_larger_than_the_beam_is_an_error():
    with pytest.raises(ConfigError, match=r"decode.nbest \(6\) must be <= decode.beam \(5\)"):
        C.from_dict(None, {"decode.nbest": 6})


def test_max_tokens_must_hold_the_longest_kept_sentence():
    with pytest.raises(ConfigError, match=r"train.max_tokens \(100\) must be >= data.max_len"):
        C.from_dict(None, {"train.max_tokens": 100, "data.max_len": 256})
