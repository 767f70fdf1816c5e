"""`pip install .` builds a wheel that ships the task families and the configs under the
project's own package names. (README's commands and snippets: tests/test_docs.py.)"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_built_wheel_ships_the_families_and_configs_under_project_names(tmp_path: Path) -> None:
    """`pip install .` must not install a top-level `envs` package (any envs/ folder in the
    working directory would shadow it) and must carry the YAML configs."""
    import importlib.util
    import subprocess
    import sys
    import zipfile

    # build with this environment's setuptools when it has one (fast, offline), else isolated
    local = []
    if importlib.util.find_spec("setuptools"):
        from importlib.metadata import version

        if int(version("setuptools").split(".")[0]) >= 64:  # pyproject.toml's requirement
            local = ["--no-build-isolation"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", *local, "-q",
         "-w", str(tmp_path)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("maml_rl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "maml_rl_envs/navigation.py" in names and "maml_rl_envs/ant.py" in names
    assert {f"maml_rl_experiments/{c}.yaml" for c in ("navigation", "ant-vel")} <= set(names)
    assert not any(name.startswith(("envs/", "typings/")) for name in names)  # typings/: mypy_path
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "navigation = maml_rl_envs.navigation:Navigation2D" in text
