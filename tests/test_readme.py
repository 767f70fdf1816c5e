"""README's two set-up commands exist, and CI runs README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quick_start)


def test_readme_has_exactly_two_setup_commands() -> None:
    train, test = readme_commands()
    assert "maml-rl train navigation" in train
    assert "pytest" in test


def test_ci_runs_the_readme_test_command() -> None:
    test_command = readme_commands()[1].split("&&")[-1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()
    assert 'python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0' in ci


def test_the_readme_train_command_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The quick start's `maml-rl train ...` as written (its config name and flags), shortened
    to one tiny iteration with --set, trains and leaves a checkpoint where it says."""
    import shlex

    from maml_rl.cli import main

    command = next(c for c in readme_commands()[0].split("&&") if "maml-rl train" in c)
    argv = shlex.split(command)[1:]  # drop "maml-rl"
    out = argv.index("--out")
    argv[out + 1] = str(tmp_path / argv[out + 1])
    tiny = ["num_batches=1", "meta_batch_size=2", "fast_batch_size=2", "hidden_sizes=[8]"]
    assert main([*argv, "--no-progress", "--set", *tiny]) == 0
    assert (Path(argv[out + 1]) / "checkpoint_latest.pt").is_file()


def test_a_built_wheel_ships_the_families_and_configs_under_project_names(tmp_path) -> None:  # type: ignore[no-untyped-def]
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
    assert not any(name.startswith("envs/") for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "navigation = maml_rl_envs.navigation:Navigation2D" in text
