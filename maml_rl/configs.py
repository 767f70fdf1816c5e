"""Where configs are found: YAML paths, and the names of the configs shipped with maml_rl.

Imports nothing heavy (no torch), so that the command line resolves a config at once."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from maml_rl.config import ConfigError


def shipped_configs() -> Path:
    """The folder of the shipped YAML configs: the `maml_rl_experiments` package (the
    repository's experiments/ folder, installed as package data), found without importing
    anything heavy; falls back to the checkout's experiments/ beside `maml_rl`.

    >>> sorted(p.stem for p in shipped_configs().glob("*.yaml"))[:2]  # doctest: +SKIP
    ['ant-dir', 'ant-goal']
    """
    spec = importlib.util.find_spec("maml_rl_experiments")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "experiments"


def find_config(name: str | Path) -> Path:
    """A YAML path, or the name of a config shipped in `experiments/` (e.g. `navigation`):
    ./experiments/NAME.yaml in the working directory first, then the shipped one.

    >>> find_config("navigation").name
    'navigation.yaml'
    """
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    for folder in (Path.cwd() / "experiments", shipped_configs()):
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in shipped_configs().glob("*.yaml"))
    raise ConfigError(f"no config named '{name}'; shipped configs: {', '.join(shipped) or 'none'}")


def describe(path: Path) -> str:
    """One line saying what a config trains: the start of its opening comment, up to the
    first colon, or to the last comma of its first line when the sentence runs on.

    >>> describe(find_config("navigation"))
    '2D navigation (Finn et al. 2017, Sec. 5.3), pytorch-maml-rl protocol'
    """
    first = next(iter(path.read_text().splitlines()), "")
    if not first.startswith("#"):
        return ""
    line = first.lstrip("#").strip()
    if ":" in line:
        return line.split(":", 1)[0].strip()
    return line.rsplit(", ", 1)[0].strip() if ", " in line else line


def shipped_config_descriptions() -> dict[str, str]:
    """The shipped configs' names (what `maml-rl train NAME` takes), each with `describe`."""
    paths = sorted(shipped_configs().glob("*.yaml"), key=lambda p: p.stem)
    return {p.stem: describe(p) for p in paths}
