"""Tests of `maml_rl.config`: strict loading, validation, overrides and round trips."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from maml_rl.config import (
    FIELD_NAMES,
    Config,
    ConfigError,
    from_dict,
    load,
    parse_override,
    save,
)

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
SHIPPED = sorted(EXPERIMENTS.glob("*.yaml"))


def _raises(values: dict[str, Any]) -> str:
    """from_dict(values) must raise ConfigError with a one-line message; return it."""
    with pytest.raises(ConfigError) as info:
        from_dict(values)
    message = str(info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- defaults


def test_defaults_construct_and_follow_reference() -> None:
    cfg = Config()
    assert cfg.env == "navigation"
    assert cfg.env_kwargs == {}
    assert cfg.hidden_sizes == (64, 64)
    assert cfg.nonlinearity == "tanh"
    assert cfg.fast_lr == 0.1
    assert cfg.fast_batch_size == 20
    assert cfg.max_kl == 0.01
    assert cfg.cg_iters == 10
    assert cfg.cg_damping == 1e-5
    assert cfg.ls_max_steps == 15
    assert cfg.ls_backtrack_ratio == 0.8
    assert cfg.gamma == 0.99
    assert cfg.gae_lambda == 1.0
    assert cfg.first_order is False
    assert cfg.hvp_fd_eps is None
    # frozen: a config cannot be mutated after validation
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.fast_lr = 0.5  # type: ignore[misc]


def test_from_empty_dict_equals_defaults() -> None:
    assert from_dict({}) == Config()


def test_from_dict_applies_values_and_converts_types() -> None:
    cfg = from_dict({"fast_lr": 0.5, "hidden_sizes": [32, 16], "max_kl": 1, "first_order": True})
    assert cfg.fast_lr == 0.5
    assert cfg.hidden_sizes == (32, 16)
    assert isinstance(cfg.hidden_sizes, tuple)
    assert cfg.max_kl == 1.0
    assert isinstance(cfg.max_kl, float)  # an int for a float key becomes a float
    assert cfg.first_order is True


def test_from_dict_on_top_of_base() -> None:
    base = from_dict({"fast_lr": 0.5, "num_steps": 3})
    cfg = from_dict({"num_steps": 2}, base=base)
    assert cfg.fast_lr == 0.5
    assert cfg.num_steps == 2


# ----------------------------------------------------------------------------- unknown keys


def test_unknown_key_names_it_and_suggests_closest() -> None:
    message = _raises({"fast_lrr": 0.1})
    assert "'fast_lrr'" in message
    assert "did you mean 'fast_lr'" in message


def test_unknown_hyphenated_key_suggests_snake_case() -> None:
    message = _raises({"meta-batch-sise": 4})
    assert "'meta-batch-sise'" in message
    assert "'meta_batch_size'" in message


def test_unknown_key_without_close_match_has_no_suggestion() -> None:
    message = _raises({"zzzzzz": 1})
    assert "'zzzzzz'" in message
    assert "did you mean" not in message


# ----------------------------------------------------------------------------- pytorch-maml-rl


def test_pytorch_maml_rl_hyphenated_keys_are_accepted() -> None:
    cfg = from_dict(
        {
            "env-name": "navigation",
            "env-kwargs": {"low": -0.3, "high": 0.3},
            "fast-lr": 0.25,
            "meta-batch-size": 7,
            "fast-batch-size": 3,
            "num-steps": 2,
            "first-order": True,
        }
    )
    assert cfg.env == "navigation"
    assert cfg.env_kwargs == {"low": -0.3, "high": 0.3}
    assert cfg.fast_lr == 0.25
    assert cfg.meta_batch_size == 7
    assert cfg.fast_batch_size == 3
    assert cfg.num_steps == 2
    assert cfg.first_order is True


def test_env_name_alias_maps_to_env() -> None:
    assert from_dict({"env_name": "maml_rl_envs.navigation:Navigation2D"}).env == (
        "maml_rl_envs.navigation:Navigation2D"
    )


# ----------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num_steps", "3"),  # string for int
        ("meta_batch_size", 4.0),  # float for int
        ("fast_batch_size", True),  # bool for int
        ("seed", None),
        ("hidden_sizes", ["32", "32"]),  # list of str
        ("hidden_sizes", [32, 32.5]),
        ("hidden_sizes", 64),  # not a list
        ("first_order", "yes"),  # string for bool
        ("first_order", 1),  # int for bool
        ("fast_lr", True),  # bool for float
        ("fast_lr", "fast"),  # non-numeric string for float
        ("fast_lr", None),
        ("env", 3),  # int for str
        ("env_kwargs", [1, 2]),  # list for mapping
        ("hvp_fd_eps", "tiny"),
    ],
)
def test_wrong_type_raises_naming_key(key: str, value: Any) -> None:
    message = _raises({key: value})
    assert f"'{key}'" in message


def test_hyphenated_key_with_wrong_type_names_the_field() -> None:
    message = _raises({"fast-batch-size": "20"})
    assert "fast_batch_size" in message


@pytest.mark.parametrize("text", ["1e-3", "1.0e-3", "0.001", "1E-3"])
def test_float_key_accepts_yaml_exponent_strings(text: str) -> None:
    cfg = from_dict({"fast_lr": text, "cg_damping": text, "hvp_fd_eps": text})
    assert cfg.fast_lr == pytest.approx(1e-3, rel=1e-15)
    assert cfg.cg_damping == pytest.approx(1e-3, rel=1e-15)
    assert cfg.hvp_fd_eps == pytest.approx(1e-3, rel=1e-15)
    assert isinstance(cfg.fast_lr, float)


def test_optional_float_accepts_null() -> None:
    assert from_dict({"hvp_fd_eps": 1e-6}).hvp_fd_eps == 1e-6
    assert from_dict({"hvp_fd_eps": None}).hvp_fd_eps is None


# ----------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("hidden_sizes", [64, 0]),
        ("hidden_sizes", [-1]),
        ("num_steps", 0),
        ("fast_batch_size", 0),
        ("meta_batch_size", -2),
        ("num_batches", 0),
        ("cg_iters", 0),
        ("ls_max_steps", 0),
        ("max_kl", 0.0),
        ("max_kl", -0.01),
        ("fast_lr", 0.0),
        ("init_std", -1.0),
        ("cg_damping", -1e-5),
        ("gamma", 0.0),
        ("gamma", 1.0001),
        ("gamma", -0.5),
        ("gae_lambda", -0.01),
        ("gae_lambda", 1.01),
        ("ls_backtrack_ratio", 0.0),
        ("ls_backtrack_ratio", 1.0),
        ("ls_backtrack_ratio", 1.5),
        ("hvp_fd_eps", 0.0),
        ("hvp", "pearlmutter"),
        ("learn_step_size", "per_layer"),
        ("advantage_scale", "mad"),
        ("min_std", 0.0),
        ("min_std", 2.0),  # above init_std
        ("nonlinearity", "sigmoid"),
        ("dtype", "float16"),
        ("device", "tpu"),
        ("device", "cuda:abc"),  # torch.device raised a traceback at build
        ("device", "cudafoo"),
        ("device", "cpu:0"),
        ("fast_lr", 10**400),  # beyond float64: float() raised OverflowError
        ("init_std", -(10**400)),
        ("gamma", "nan"),
        ("max_kl", "nan"),
        ("max_envs", 19),  # fewer than one task's fast_batch_size (20) trajectories
        ("max_envs", 0),
    ],
)
def test_out_of_range_value_raises_naming_key(key: str, value: Any) -> None:
    message = _raises({key: value})
    assert f"'{key}'" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("gamma", 1.0),
        ("gae_lambda", 0.0),
        ("gae_lambda", 1.0),
        ("cg_damping", 0.0),
        ("ls_backtrack_ratio", 0.5),
        ("device", "cuda"),
        ("device", "cuda:1"),
        ("device", "cuda:10"),
        ("dtype", "float64"),
        ("hvp", "exact"),
        ("advantage_scale", "variance"),
        ("learn_step_size", "per_parameter"),
        ("learn_step_size", "per_step"),
        ("min_std", 1.0),  # = init_std
        ("nonlinearity", "relu"),
        ("hidden_sizes", []),
    ],
)
def test_boundary_values_are_accepted(key: str, value: Any) -> None:
    cfg = from_dict({key: value})
    expected = tuple(value) if isinstance(value, list) else value
    assert getattr(cfg, key) == expected


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError, match="'max_kl'"):
        Config(max_kl=0.0)
    with pytest.raises(ConfigError, match="'gamma'"):
        dataclasses.replace(Config(), gamma=2.0)


# ----------------------------------------------------------------------------- load


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "nope.yaml")
    assert "\n" not in str(info.value)
    assert "nope.yaml" in str(info.value)


def test_load_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "fast_lr: [0.1, 0.2\nnum_steps: 2\n",
        "a: b: c\n",
        "key: 'unterminated\n",
        "- a\nb: 1\n",
    ],
)
def test_load_malformed_yaml_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message
    assert "bad.yaml" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("? [a, b]\n: 1\n", "malformed YAML"),  # an unhashable key raised TypeError
        ("policy_kwargs: {[1]: 2}\n", "malformed YAML"),
        ("policy_kwargs: {a: &a [1, 2], b: *a}\n", "YAML aliases are not read"),
        ("fast_lr: 0.1\nfast-lr: 0.2\n", "'fast_lr' is given twice, as 'fast_lr' and 'fast-lr'"),
        ("num_batches: 1" + "0" * 5000 + "\n", "Exceeds the limit (4300 digits)"),
    ],
)
def test_load_refuses_what_yaml_would_read_wrongly_in_one_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    """Unhashable keys, aliases (a few bytes of nested aliases expand to gigabytes), one key
    under two spellings, and integers Python will not convert: one line (naming the file where
    YAML reads it)."""
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message and expected in message, message
    if "given twice, as" not in message:  # a key's value is checked as unknown keys are
        assert "bad.yaml" in message, message


def test_alias_bomb_is_refused_before_it_expands() -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    pairs = zip("abcdefgh", "bcdefghi", strict=True)  # each level 10 of the one before: 10**9
    levels += [f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]" for a, b in pairs]
    with pytest.raises(ConfigError, match="YAML aliases"):
        parse_override("policy_kwargs={" + ", ".join(levels) + "}")


def test_an_override_replaces_the_files_key_under_either_spelling(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("fast_lr: 0.5\n")
    assert load(path, overrides={"fast-lr": 0.25}).fast_lr == 0.25


@pytest.mark.parametrize("text", ["- fast_lr: 0.1\n- num_steps: 2\n", "3\n", "just a string\n"])
def test_load_non_mapping_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message
    assert "mapping" in message


def test_load_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert load(path) == Config()


def test_load_yaml_exponent_without_dot(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("fast_lr: 1e-3\nmax_kl: 5e-2\nhvp_fd_eps: 1e-6\n")
    cfg = load(path)
    assert cfg.fast_lr == pytest.approx(1e-3, rel=1e-15)
    assert cfg.max_kl == pytest.approx(5e-2, rel=1e-15)
    assert cfg.hvp_fd_eps == pytest.approx(1e-6, rel=1e-15)


def test_load_unknown_key_in_file(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("fast_lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"did you mean 'fast_lr'") as info:
        load(path)
    assert "\n" not in str(info.value)


def test_load_overrides_win_over_file(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("fast-lr: 0.5\nnum_steps: 3\n")
    cfg = load(path, overrides={"fast_lr": 0.25, "num-steps": 2})
    assert cfg.fast_lr == 0.25
    assert cfg.num_steps == 2


def test_load_overrides_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("num_steps: 3\n")
    with pytest.raises(ConfigError, match="'num_steps'"):
        load(path, overrides={"num_steps": 0})


# ----------------------------------------------------------------------------- overrides


def test_parse_override_exponent_float() -> None:
    key, value = parse_override("fast_lr=1e-3")
    assert key == "fast_lr"
    assert from_dict({key: value}).fast_lr == pytest.approx(1e-3, rel=1e-15)


def test_parse_override_generic_key_keeps_yaml_value() -> None:
    key, value = parse_override("a=1e-3")
    assert key == "a"
    # YAML 1.1 reads `1e-3` (no dot) as a string; from_dict converts it for float keys
    assert float(value) == pytest.approx(1e-3, rel=1e-15)


def test_parse_override_list() -> None:
    assert parse_override("hidden_sizes=[32, 32]") == ("hidden_sizes", [32, 32])
    assert from_dict(dict([parse_override("hidden_sizes=[32, 32]")])).hidden_sizes == (32, 32)


def test_parse_override_bool_and_int_and_string() -> None:
    assert parse_override("first_order=true") == ("first_order", True)
    assert parse_override("first_order=false") == ("first_order", False)
    assert parse_override("num_steps=3") == ("num_steps", 3)
    assert parse_override("env=maml_rl_envs.navigation:Navigation2D") == (
        "env",
        "maml_rl_envs.navigation:Navigation2D",
    )


def test_parse_override_value_may_contain_equals() -> None:
    assert parse_override("env=a=b") == ("env", "a=b")


def test_parse_override_strips_key() -> None:
    assert parse_override(" fast-lr =0.5") == ("fast-lr", 0.5)


@pytest.mark.parametrize("item", ["fast_lr", "", "fast_lr:0.1"])
def test_parse_override_without_equals_raises(item: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_override(item)
    assert "\n" not in str(info.value)
    assert "key=value" in str(info.value)


def test_parse_override_invalid_yaml_raises_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_override("hidden_sizes=[32, 32")
    assert "\n" not in str(info.value)
    assert "hidden_sizes" in str(info.value)


# ----------------------------------------------------------------------------- round trip


def test_save_load_round_trip_defaults(tmp_path: Path) -> None:
    path = tmp_path / "defaults.yaml"
    save(Config(), path)
    assert load(path) == Config()


def test_save_load_round_trip_non_defaults(tmp_path: Path) -> None:
    cfg = from_dict(
        {
            "algo": "oracle",
            "env": "maml_rl_envs.navigation:Navigation2D",
            "env_kwargs": {"low": -0.25, "high": 0.75, "max_episode_steps": 50},
            "hidden_sizes": [16, 8, 4],
            "nonlinearity": "relu",
            "init_std": 0.5,
            "min_std": 0.05,
            "fast_lr": 1e-3,
            "learn_step_size": "per_parameter",
            "num_steps": 3,
            "fast_batch_size": 5,
            "meta_batch_size": 6,
            "num_batches": 7,
            "first_order": True,
            "max_kl": 3e-3,
            "cg_iters": 4,
            "cg_damping": 0.0,
            "hvp": "exact",
            "hvp_subsample": 0.5,
            "sampler": "ray",
            "ray_address": "head:6379",
            "ray_num_actors": 8,
            "ray_actor_cpus": 4,
            "ray_timeout_s": 60.0,
            "max_envs": 10,
            "hvp_fd_eps": 1e-7,
            "ls_max_steps": 9,
            "ls_backtrack_ratio": 0.3,
            "gamma": 0.95,
            "gae_lambda": 0.9,
            "advantage_statistics": "steps",
            "advantage_scale": "variance",
            "loss_weighting": "steps",
            "kl_direction": "old_new",
            "torch_threads": 3,
            "meta_gradient": "lvc",
            "outer": "promp",
            "promp_steps": 3,
            "promp_clip": 0.2,
            "promp_lr": 3e-4,
            "promp_inner_kl": 1e-2,
            "normalize_advantages": False,
            "seed": 123,
            "check": False,
            "device": "cuda:0",
            "dtype": "float64",
            "policy": "my_policies:LayerNormMLP",
            "policy_kwargs": {"hidden": 32},
        }
    )
    # every field differs from its default, so the round trip covers all of them
    defaults = Config()
    assert all(getattr(cfg, name) != getattr(defaults, name) for name in FIELD_NAMES)
    path = tmp_path / "cfg.yaml"
    save(cfg, path)
    loaded = load(path)
    assert loaded == cfg
    assert loaded.to_dict() == cfg.to_dict()


def test_to_dict_is_plain_yaml_data() -> None:
    out = Config().to_dict()
    assert set(out) == set(FIELD_NAMES)
    assert out["hidden_sizes"] == [64, 64]
    assert isinstance(out["hidden_sizes"], list)


# ----------------------------------------------------------------------------- shipped configs


def test_there_are_shipped_configs() -> None:
    assert SHIPPED, f"no configs in {EXPERIMENTS}"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_loads(path: Path, tmp_path: Path) -> None:
    cfg = load(path)
    assert isinstance(cfg, Config)
    copy = tmp_path / path.name
    save(cfg, copy)
    assert load(copy) == cfg


PYTORCH_MAML_RL_CONFIGS = {  # env-name and env-kwargs of its configs/maml/*.yaml (21d4ba1)
    "2DNavigation-v0": ("navigation", {"low": -0.5, "high": 0.5}),
    "HalfCheetahVel-v2": (
        "halfcheetah-vel",
        {"low": 0.0, "high": 2.0, "normalization_scale": 10.0, "max_episode_steps": 100},
    ),
    "HalfCheetahDir-v2": (
        "halfcheetah-dir",
        {"normalization_scale": 10.0, "max_episode_steps": 100},
    ),
    "AntVel-v2": (
        "ant-vel",
        {"low": 0.0, "high": 3.0, "normalization_scale": 10.0, "max_episode_steps": 100},
    ),
    "AntDir-v2": ("ant-dir", {"normalization_scale": 10.0, "max_episode_steps": 100}),
    "AntPos-v1": (
        "ant-goal",
        {"low": -3.0, "high": 3.0, "normalization_scale": 10.0, "max_episode_steps": 100},
    ),
}


@pytest.mark.parametrize("env_id", sorted(PYTORCH_MAML_RL_CONFIGS))
def test_pytorch_maml_rl_config_runs_unchanged(tmp_path: Path, env_id: str) -> None:
    """Its YAML (hyphenated keys, its env ids and normalization_scale) loads as our family with
    action_scale, one note says so, and the family builds with those kwargs."""
    from maml_rl.tasks import make_family

    family_name, kwargs = PYTORCH_MAML_RL_CONFIGS[env_id]
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "env-name": env_id,
                "env-kwargs": kwargs,
                "gamma": 0.99,
                "gae-lambda": 1.0,
                "first-order": False,
                "hidden-sizes": [64, 64],
                "nonlinearity": "tanh",
                "fast-batch-size": 20,
                "num-steps": 1,
                "fast-lr": 0.1,
                "num-batches": 500,
                "meta-batch-size": 40,
                "max-kl": 1.0e-2,
                "cg-iters": 10,
                "cg-damping": 1.0e-5,
                "ls-max-steps": 15,
                "ls-backtrack-ratio": 0.8,
            }
        )
    )
    notes: list[str] = []
    cfg = load(path, notes=notes)
    assert cfg.env == family_name
    assert "normalization_scale" not in cfg.env_kwargs
    if "normalization_scale" in kwargs:
        assert cfg.env_kwargs["action_scale"] == 10.0
        assert notes == [
            f"pytorch-maml-rl environment {env_id} runs as task family '{family_name}'; "
            "env kwarg normalization_scale as action_scale"
        ]
    else:
        assert notes == [
            f"pytorch-maml-rl environment {env_id} runs as task family '{family_name}'"
        ]
    make_family(cfg.env, cfg.env_kwargs)  # the mapped kwargs are ones the family takes
    # our own names pass through without a note
    again: list[str] = []
    assert from_dict(cfg.to_dict(), notes=again) == cfg and again == []


def test_command_line_env_kwargs_merge_and_another_family_drops_the_files(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("env: navigation\nenv_kwargs: {low: -0.25, high: 0.25}\n")
    merged = load(path, {"env_kwargs": {"max_episode_steps": 7}})
    assert merged.env_kwargs == {"low": -0.25, "high": 0.25, "max_episode_steps": 7}
    notes: list[str] = []
    other = load(path, {"env": "mine:Family"}, notes=notes)
    assert other.env == "mine:Family" and other.env_kwargs == {}
    assert notes == [
        "env_kwargs of c.yaml (for navigation) not passed to mine:Family; "
        "give its own with --set env_kwargs=..."
    ]
    both = load(path, {"env": "mine:Family", "env_kwargs": {"size": 3}})
    assert both.env_kwargs == {"size": 3}
    with pytest.raises(ConfigError, match="env_kwargs' must be a mapping"):
        load(path, {"env_kwargs": "oops"})


def test_a_config_saved_before_a_convention_key_keeps_the_convention_it_trained_with() -> None:
    from maml_rl.config import from_saved

    old = Config().to_dict()
    for key in ("loss_weighting", "advantage_statistics", "kl_direction"):
        del old[key]
    cfg = from_saved(old)
    assert (cfg.loss_weighting, cfg.advantage_statistics, cfg.kl_direction) == (
        "steps",
        "steps",
        "old_new",
    )
    stored = {**Config().to_dict(), "loss_weighting": "steps"}
    assert from_saved(stored).loss_weighting == "steps"  # a saved value wins
