"""Every setting of a run, as one frozen dataclass, with strict YAML loading and saving.

Keys are flat snake_case names matching pytorch-maml-rl's configs (its hyphenated spellings,
e.g. ``fast-lr``, are accepted and normalised). An unknown key, a wrong type or an
out-of-range value raises `ConfigError` with a one-line message naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from maml_rl import artifacts
from maml_rl.imports import ImportTargetError, target_of


class ConfigError(ValueError):
    """A user mistake in a configuration (file, key or value); the message is one line.

    >>> maml_rl.load_config("navigation", fast_lrr=0.1)  # doctest: +SKIP
    maml_rl.config.ConfigError: unknown config key 'fast_lrr'; did you mean 'fast_lr'?
    """


ALIASES = {"env_name": "env"}  # pytorch-maml-rl's `env-name`

PYTORCH_MAML_RL_ENVS = {
    "2DNavigation-v0": "navigation",
    "HalfCheetahVel-v2": "halfcheetah-vel",
    "HalfCheetahDir-v2": "halfcheetah-dir",
    "AntVel-v2": "ant-vel",
    "AntDir-v2": "ant-dir",
    "AntPos-v1": "ant-goal",
}
"""pytorch-maml-rl's environment ids (configs/maml/*.yaml) -> our task families."""

PYTORCH_MAML_RL_ENV_KWARGS = {"normalization_scale": "action_scale"}
"""Its env kwargs -> ours: NormalizedActionWrapper(scale) sends clip(a, -s, s) / s to the
robot, which is our MuJoCo families' action_scale."""


def _translate_pytorch_maml_rl(values: dict[str, Any], notes: list[str] | None) -> dict[str, Any]:
    """Map a pytorch-maml-rl environment id and its env kwargs to ours, noting each mapping."""
    env_key = next((k for k in values if normalize_key(k) == "env"), None)
    env = values.get(env_key) if env_key is not None else None
    if env_key is None or not isinstance(env, str) or env not in PYTORCH_MAML_RL_ENVS:
        return values
    out = dict(values)
    out[env_key] = PYTORCH_MAML_RL_ENVS[env]
    said = [f"pytorch-maml-rl environment {env} runs as task family '{out[env_key]}'"]
    kwargs_key = next((k for k in values if normalize_key(k) == "env_kwargs"), None)
    kwargs = values.get(kwargs_key) if kwargs_key is not None else None
    if kwargs_key is not None and isinstance(kwargs, dict):
        renamed = {PYTORCH_MAML_RL_ENV_KWARGS.get(k, k): v for k, v in kwargs.items()}
        said += [
            f"env kwarg {k} as {v}" for k, v in PYTORCH_MAML_RL_ENV_KWARGS.items() if k in kwargs
        ]
        out[kwargs_key] = renamed
    if notes is not None:
        notes.append("; ".join(said))
    return out


@dataclass(frozen=True)
class Config:
    """Settings of a meta-training run. Defaults follow pytorch-maml-rl / ProMP.

    Every field is documented below; `maml_rl.load_config` reads a YAML file or a shipped
    config by name, with overrides. Frozen: derive variants with `dataclasses.replace`.

    >>> cfg = Config(env="navigation", num_batches=50, fast_lr=0.1)
    >>> dataclasses.replace(cfg, seed=2).seed, cfg.hidden_sizes
    (2, (64, 64))
    """

    algo: str = "maml"
    """maml (meta-train), or a baseline trained by plain TRPO on tasks from the distribution:
    pretrained (no task information) or oracle (task parameters appended to observations)."""
    env: str = "navigation"
    """Task family: a registered name (`maml-rl envs`) or a `module:Class` import path (from
    Python, also the class itself, recorded as its `module:Class`)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the task family (task ranges, horizon, ...)."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the policy MLP."""
    nonlinearity: str = "tanh"
    """Hidden activation: tanh, relu, elu, gelu or silu."""
    init_std: float = 1.0
    """Initial standard deviation of the Gaussian policy (state-independent log-std)."""
    min_std: float = 1e-6
    """Floor on the built-in Gaussian policy's standard deviation (like `init_std`, unused by a
    custom `policy`): its log-std is clamped at log(min_std), with no gradient below it. A floor
    keeps the policy exploring and bounds a policy-gradient inner step, whose mean gradient
    grows as 1/σ."""
    policy: str | None = None
    """The policy network: null for the built-in MLP (`hidden_sizes`, `nonlinearity`,
    `init_std`), or `module:callable` for your own: called as
    `callable(observation_space, action_space, **policy_kwargs)`, it returns a
    `torch.nn.Module` whose `forward(observations)` returns `maml_rl.Normal(mean, log_std)`
    (Box actions) or `maml_rl.Categorical(logits)` (Discrete actions). From Python the callable
    itself may be given; the run records it as `module:name`, and `evaluate`, `render` and
    `--resume` rebuild it from any directory."""
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of `policy` (ignored by the built-in MLP)."""
    fast_lr: float = 0.1
    """Inner-loop (adaptation) step size alpha."""
    learn_step_size: str = "none"
    """Meta-learn alpha: none, scalar (one learnable alpha for every step), per_step (one
    learnable alpha per inner step, initialised at fast_lr) or per_parameter (Meta-SGD)."""
    num_steps: int = 1
    """Inner gradient steps; each samples fresh trajectories with the current adapted params."""
    fast_batch_size: int = 20
    """K: trajectories per task per inner step (and for the post-update batch)."""
    meta_batch_size: int = 40
    """N: tasks per meta-iteration."""
    num_batches: int = 500
    """Number of meta-iterations."""
    first_order: bool = False
    """Drop second-order terms of the meta-gradient (FOMAML)."""
    max_kl: float = 1e-2
    """TRPO trust region: mean KL between post-update policies before and after the step."""
    cg_iters: int = 10
    """Conjugate-gradient iterations."""
    cg_damping: float = 1e-5
    """Damping added to Hessian-vector products: (H + damping I) v."""
    hvp: str = "gauss_newton"
    """Hessian-vector products: gauss_newton (J^T F J, equal to exact at the current point and
    the cheapest, in closed form for Gaussian MLPs), finite_difference (the paper's) or exact
    (double backward through the adaptation)."""
    hvp_subsample: float = 1.0
    """Fraction of the meta-batch's tasks used for Hessian-vector products (rllab's subsampling)."""
    hvp_fd_eps: float | None = None
    """Base step of finite-difference HVPs; null = auto (cbrt of machine eps, see trpo.py)."""
    ls_max_steps: int = 15
    """Backtracking line-search candidates."""
    ls_backtrack_ratio: float = 0.8
    """Line-search shrink factor per candidate."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 1.0
    """GAE lambda (1.0: Monte-Carlo returns minus the baseline)."""
    normalize_advantages: bool = True
    """Normalise advantages per task (masked mean 0, std 1)."""
    advantage_scale: str = "std"
    """What that normalisation divides the centred advantages by: std (σ + 1e-8, unit
    variance) or variance (σ² + 1e-8, Meta-World+'s MAML-TRPO, metaworld-algorithms
    rl/algorithms/utils.py at e6a4738: an inner step then shrinks as 1/σ of the advantages,
    so its size depends on the reward scale). The TRPO step is the same under either: its
    length is set by the trust region."""
    advantage_statistics: str = "episodes"
    """Statistics of that normalisation: episodes (mean and variance as means of per-episode
    means, pytorch-maml-rl's convention) or steps (over a task's valid steps, every step alike:
    rllab's). The same when no episode ends early. The defaults of this key, `loss_weighting`
    and `kl_direction` are pytorch-maml-rl's three conventions together: with any per-step
    one, 2D navigation declines after 100-250 iterations (docs: How it works, Conventions)."""
    loss_weighting: str = "episodes"
    """How the inner loss, the surrogate and the KL average a task's steps: episodes (each
    episode over its own length, then over episodes, as pytorch-maml-rl: an episode that ends
    early weighs more per step) or steps (every valid step alike). The same when no episode
    ends early."""
    kl_direction: str = "new_old"
    """The trust-region KL: new_old is KL(π ‖ π_old) (pytorch-maml-rl), old_new is
    KL(π_old ‖ π) (rllab, the paper's code). Same curvature at the current point; the line
    search differs at third order."""
    sampler: str = "auto"
    """Environment backend: auto (warp on a CUDA device when MuJoCo Warp is installed and the
    family is a MuJoCo one, else the native batch env if the family has one, else the
    family's sampler_backend if it sets one, else sync), native, threads (MuJoCo families,
    threaded mj_step), warp (MuJoCo families: all N x K worlds as one MuJoCo Warp batch on the
    policy's device, torch tensors end to end; for GPUs, where it lifts the CPU's cap on
    sampling; float32: half-cheetah agrees with the C backends to float32 round-off, Ant
    in distribution (its friction pyramids are oriented differently, envs/warp_batch.py);
    not bit-deterministic on a GPU (atomics), deterministic on the CPU device; the first use
    compiles kernels, 50-90 s on two CPU cores, cached in ~/.cache/warp; needs pip install
    "maml-rl[warp]"), sync or async (Gymnasium vector envs; async: a process per
    env), procs (the Gymnasium envs sharded over a worker process per CPU: for slow Python
    envs such as Meta-World), or ray (tasks split over Ray actors, each sampling its share on
    the auto backend)."""
    max_envs: int | None = None
    """The most environments the sampler steps at once: null for all N x K of a phase; else
    the tasks run in consecutive chunks of at most max_envs / fast_batch_size tasks, with the
    seeds and action noise of one pass (on ray: per actor). Bounds the memory of environments
    that hold much (Meta-World's Sawyer environments take 20-28 MiB each: ML45's 450 about
    12 GiB); at least fast_batch_size."""
    ray_address: str | None = None
    """sampler ray: the cluster to join (HOST:PORT from `ray start --head`); null starts a
    local Ray instance."""
    ray_num_actors: int = 2
    """sampler ray: actors, each sampling a contiguous share of the meta-batch's tasks."""
    ray_actor_cpus: int = 1
    """sampler ray: CPUs reserved per actor (and threads of its MuJoCo batch)."""
    ray_timeout_s: float = 600.0
    """sampler ray: the longest one sampling phase may take before the run stops."""
    seed: int = 0
    """Master seed; split into independent streams (tasks, evaluation tasks, envs, torch)."""
    check: bool = True
    """Run the task-family check (checker.py) before the first iteration. false (or train
    --no-check) skips it, for a family the checker wrongly refuses; the run says what went
    unchecked."""
    device: str = "cpu"
    """Device of the policy and the optimisation (cpu or cuda); environments run on the CPU
    (except with sampler warp)."""
    dtype: str = "float32"
    """Floating point type of the policy and the optimisation: float32 or float64."""
    meta_gradient: str = "maml"
    """How the meta-gradient treats the pre-update sampling distribution (estimators.py): maml
    (the paper's: ignores it), lvc (ProMP's low-variance curvature inner loss), emaml
    (E-MAML's score term of the pre-update trajectories) or dice (the DiCE inner objective)."""
    outer: str = "trpo"
    """The outer step: trpo (one natural-gradient step with a KL trust region and line search,
    the paper's) or promp (ProMP's clipped objective, several Adam steps, promp.py)."""
    promp_steps: int = 5
    """outer promp: Adam steps per meta-iteration (ProMP: 5)."""
    promp_clip: float = 0.3
    """outer promp: the ratio clipping range ε (ProMP's MuJoCo scripts: 0.3)."""
    promp_lr: float = 1e-3
    """outer promp: Adam's learning rate (ProMP: 1e-3)."""
    promp_inner_kl: float = 5e-4
    """outer promp: the weight η of the KL penalty on the inner steps (ProMP: 5e-4, fixed)."""
    torch_threads: int | None = None
    """torch's intra-op threads for the optimisation (sampling always uses one; MuJoCo batches
    use every CPU). null: chosen every iteration from the load on the CPUs (threads.py): every
    core alone, fewer beside other CPU-bound work. Results do not depend on the count, so a
    run resumed under another load continues bit for bit."""

    def __post_init__(self) -> None:
        for key in PLUGIN_KEYS:  # a class or callable given from Python: its module:name
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, key, plugin_target(key, value))
        _validate(self)

    @property
    def inner_steps(self) -> int:
        """Inner gradient steps during training: num_steps for MAML, 0 for the baselines."""
        return self.num_steps if self.algo == "maml" else 0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        return out


PLUGIN_KEYS = ("env", "policy")
"""Keys that name a plug-in by `module:name`, and from Python also take the object itself."""


def plugin_target(key: str, value: Any) -> str:
    """The `module:name` a class or callable given from Python for `key` is recorded as;
    ConfigError if it cannot be imported back (a lambda, a nested function)."""
    if not callable(value):
        raise ConfigError(f"config key '{key}' must be a string or a callable, got {value!r}")
    try:
        return target_of(value, "task family" if key == "env" else key)
    except ImportTargetError as error:
        raise ConfigError(f"config key '{key}': {error}") from error


def _check(ok: bool, key: str, message: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' {message}, got {value!r}")


def _validate(cfg: Config) -> None:
    positive_ints = (
        "num_steps",
        "fast_batch_size",
        "meta_batch_size",
        "num_batches",
        "cg_iters",
        "ray_num_actors",
        "ray_actor_cpus",
    )
    for key in positive_ints:
        _check(getattr(cfg, key) >= 1, key, "must be >= 1", getattr(cfg, key))
    _check(cfg.ls_max_steps >= 1, "ls_max_steps", "must be >= 1", cfg.ls_max_steps)
    _check(cfg.promp_steps >= 1, "promp_steps", "must be >= 1", cfg.promp_steps)
    _check(0 < cfg.promp_clip < 1, "promp_clip", "must be in (0, 1)", cfg.promp_clip)
    _check(cfg.promp_lr > 0, "promp_lr", "must be > 0", cfg.promp_lr)
    _check(cfg.promp_inner_kl >= 0, "promp_inner_kl", "must be >= 0", cfg.promp_inner_kl)
    _check(0 <= cfg.seed < 2**63, "seed", "must be in [0, 2**63)", cfg.seed)
    _check(
        cfg.max_envs is None or cfg.max_envs >= cfg.fast_batch_size,
        "max_envs",
        f"must be null or >= fast_batch_size ({cfg.fast_batch_size}), the trajectories of one "
        "task, which step together",
        cfg.max_envs,
    )
    threads = cfg.torch_threads
    _check(threads is None or threads >= 1, "torch_threads", "must be >= 1 or null", threads)
    _check(all(h >= 1 for h in cfg.hidden_sizes), "hidden_sizes", "must be >= 1", cfg.hidden_sizes)
    for key in ("max_kl", "fast_lr", "init_std"):
        _check(getattr(cfg, key) > 0, key, "must be > 0", getattr(cfg, key))
    _check(cfg.min_std > 0, "min_std", "must be > 0", cfg.min_std)
    _check(
        cfg.min_std <= cfg.init_std, "min_std", f"must be <= init_std ({cfg.init_std})", cfg.min_std
    )
    _check(0 < cfg.hvp_subsample <= 1, "hvp_subsample", "must be in (0, 1]", cfg.hvp_subsample)
    _check(cfg.cg_damping >= 0, "cg_damping", "must be >= 0", cfg.cg_damping)
    _check(cfg.ray_timeout_s > 0, "ray_timeout_s", "must be > 0", cfg.ray_timeout_s)
    _check(0 < cfg.gamma <= 1, "gamma", "must be in (0, 1]", cfg.gamma)
    _check(0 <= cfg.gae_lambda <= 1, "gae_lambda", "must be in [0, 1]", cfg.gae_lambda)
    _check(
        0 < cfg.ls_backtrack_ratio < 1,
        "ls_backtrack_ratio",
        "must be in (0, 1)",
        cfg.ls_backtrack_ratio,
    )
    _check(
        cfg.hvp_fd_eps is None or cfg.hvp_fd_eps > 0, "hvp_fd_eps", "must be > 0", cfg.hvp_fd_eps
    )
    choices = {
        "hvp": ("finite_difference", "exact", "gauss_newton"),
        "learn_step_size": ("none", "scalar", "per_step", "per_parameter"),
        "nonlinearity": ("tanh", "relu", "elu", "gelu", "silu"),
        "dtype": ("float32", "float64"),
        "algo": ("maml", "pretrained", "oracle"),
        "sampler": ("auto", "native", "threads", "warp", "sync", "async", "procs", "ray"),
        "advantage_statistics": ("steps", "episodes"),
        "advantage_scale": ("std", "variance"),
        "loss_weighting": ("steps", "episodes"),
        "kl_direction": ("old_new", "new_old"),
        "meta_gradient": ("maml", "lvc", "emaml", "dice"),
        "outer": ("trpo", "promp"),
    }
    for key, allowed in choices.items():
        _check(
            getattr(cfg, key) in allowed, key, f"must be one of {list(allowed)}", getattr(cfg, key)
        )
    _check(
        cfg.policy is None or all(cfg.policy.partition(":")[::2]),
        "policy",
        "must be null or 'module:callable'",
        cfg.policy,
    )
    _check(
        re.fullmatch(r"cpu|cuda(:[0-9]+)?", cfg.device) is not None,
        "device",
        "must be cpu or cuda[:index]",
        cfg.device,
    )


FIELD_TYPES: dict[str, Any] = typing.get_type_hints(Config)
FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Config))


def normalize_key(key: str) -> str:
    key = str(key).strip().replace("-", "_")
    return ALIASES.get(key, key)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against the field's annotation; convert lists to tuples, ints to floats."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        (inner,) = [a for a in options if a is not type(None)]
        return _coerce(key, value, inner)
    if annotation is bool:
        _check(isinstance(value, bool), key, "must be true or false", value)
        return value
    if annotation is int:
        _check(
            isinstance(value, int) and not isinstance(value, bool), key, "must be an integer", value
        )
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                _check(False, key, "must be a number", value)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        _check(ok, key, "must be a number", value)
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float64's range
            raise ConfigError(
                f"config key '{key}' must be finite, got an integer beyond float64's range"
            ) from None
        _check(math.isfinite(number), key, "must be finite", value)
        return number
    if annotation is str:
        _check(isinstance(value, str), key, "must be a string", value)
        return value
    if origin is tuple:
        ok = isinstance(value, list | tuple) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
        _check(ok, key, "must be a list of integers", value)
        return tuple(value)
    if origin is dict:
        _check(isinstance(value, dict), key, "must be a mapping", value)
        return dict(value)
    raise TypeError(f"no coercion for {annotation}")  # pragma: no cover - programming error


def from_dict(
    values: dict[str, Any], base: Config | None = None, notes: list[str] | None = None
) -> Config:
    """Build a Config from a mapping, on top of `base` (defaults if None). Strict.

    A pytorch-maml-rl environment id (`PYTORCH_MAML_RL_ENVS`) and its env kwargs are mapped to
    ours; `notes`, if given, receives one line saying what was mapped.
    """
    values = _translate_pytorch_maml_rl(values, notes)
    updates: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for raw_key, value in values.items():
        key = normalize_key(raw_key)
        if key not in FIELD_TYPES:
            close = difflib.get_close_matches(key, FIELD_NAMES, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{raw_key}'{hint}")
        if key in spelled:
            raise ConfigError(
                f"config key '{key}' is given twice, as '{spelled[key]}' and '{raw_key}'; "
                "give it once"
            )
        spelled[key] = str(raw_key)
        if key in PLUGIN_KEYS and callable(value):
            value = plugin_target(key, value)
        updates[key] = _coerce(key, value, FIELD_TYPES[key])
    return dataclasses.replace(base or Config(), **updates)


SAVED_BEFORE_KEY = {
    "loss_weighting": "steps",
    "advantage_statistics": "steps",
    "kl_direction": "old_new",
    "meta_gradient": "maml",
    "outer": "trpo",
}
"""What a key meant for configs saved before it existed (checkpoints of older runs): the
convention those runs trained with, whatever today's default is."""


def from_saved(values: dict[str, Any]) -> Config:
    """The config stored in a checkpoint: keys added since it was saved take the value that
    matches how it was trained (`SAVED_BEFORE_KEY`), not today's defaults."""
    keys = {normalize_key(k) for k in values}
    missing = {k: v for k, v in SAVED_BEFORE_KEY.items() if k not in keys}
    return from_dict({**missing, **values})


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (YAML keeps the last
    one silently) and aliases (`*name`): a few bytes of nested aliases expand to gigabytes,
    and a config has no use for them."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            line = event.start_mark.line + 1
            raise ConfigError(
                f"YAML aliases are not read in a config (*{event.anchor} on line {line}); "
                "write the value out"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):  # SafeLoader says so in one line
                continue
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"key {key!r} is given twice (the second on line {line})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(text: str, where: str) -> Any:
    """The YAML value of `text` (strict: a key given twice is an error); `where` names it in
    the one-line ConfigError for malformed or too deeply nested text."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"malformed YAML in {where}{at}") from error
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply to be a config") from None
    except ValueError as error:  # an integer of more digits than Python converts (4300)
        raise ConfigError(f"{where}: {str(error).split(';')[0]}") from None


def load(
    path: str | Path, overrides: dict[str, Any] | None = None, notes: list[str] | None = None
) -> Config:
    """Load a YAML config file and apply `overrides` (already parsed values); `notes` receives
    what `from_dict` mapped from pytorch-maml-rl's conventions."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a config file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text ({error.reason})") from None
    data = _read_yaml(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of key: value")
    return from_dict(_combine(data, dict(overrides or {}), path, notes), notes=notes)


def _combine(
    data: dict[str, Any], overrides: dict[str, Any], path: Path, notes: list[str] | None
) -> dict[str, Any]:
    """A file's values with `overrides` on top. env_kwargs given on the command line merge into
    the file's (one key changes, the others stay); a file's env_kwargs belong to its own task
    family, so an override of `env` to another family drops them (noted)."""
    file_env = {normalize_key(k): v for k, v in data.items()}.get("env")
    given = {normalize_key(k): k for k in overrides}
    file_kwargs_key = next((k for k in data if normalize_key(k) == "env_kwargs"), None)
    replaced = [k for k in data if normalize_key(k) in given and k != file_kwargs_key]
    out = {**{k: v for k, v in data.items() if k not in replaced}, **overrides}
    if file_kwargs_key is None:
        return out
    other_family = "env" in given and overrides[given["env"]] != file_env
    if other_family and "env_kwargs" in given:
        if file_kwargs_key != given["env_kwargs"]:
            out.pop(file_kwargs_key, None)
    elif other_family:
        del out[file_kwargs_key]
        if notes is not None and data[file_kwargs_key]:
            notes.append(
                f"env_kwargs of {path.name} (for {file_env}) not passed to "
                f"{overrides[given['env']]}; give its own with --set env_kwargs=..."
            )
    elif (
        "env_kwargs" in given
        and isinstance(data[file_kwargs_key], dict)
        and isinstance(overrides[given["env_kwargs"]], dict)
    ):
        merged = {**data[file_kwargs_key], **overrides[given["env_kwargs"]]}
        out.pop(file_kwargs_key, None)
        out[given["env_kwargs"]] = merged
    return out


def parse_override(item: str) -> tuple[str, Any]:
    """Parse one `--set key=value` item; the value is read as YAML (`1e-3`, `[32, 32]`, `true`)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r} (give the config before --set)")
    key, text = item.split("=", 1)
    value = _read_yaml(text, f"--set {key}") if text else ""
    return key.strip(), value


def save(cfg: Config, path: str | Path) -> None:
    artifacts.write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
