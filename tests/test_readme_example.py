"""README's "Add your own task family" example is complete: it passes the checker and trains
for two meta-iterations through the CLI as a module on the path, as README says."""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from maml_rl.checker import check_family
from maml_rl.cli import main

ROOT = Path(__file__).resolve().parent.parent


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Add your own task family", 1)[1].split("\n## ", 1)[0]


def example_module() -> tuple[str, str]:
    """(module name, source) of the section's Python block, named by its first-line comment."""
    source = re.search(r"```python\n(.+?)```", readme_section(), re.DOTALL).group(1)
    name = re.match(r"# (\w+)\.py\n", source).group(1)
    return name, source


@pytest.fixture
def example_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Write the example into a fresh directory and make it the current directory (only);
    sys.path is restored afterwards."""
    name, source = example_module()
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def example(example_in_cwd: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The example, importable (on sys.path)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return example_in_cwd


def test_readme_commands_name_the_example_class(example: str) -> None:
    section = readme_section()
    module = importlib.import_module(example)
    (target,) = set(re.findall(rf"env={example}:(\w+)", section))
    assert callable(getattr(module, target))
    assert f"= {example}:{target}" in section  # the entry-point line
    assert 25 <= len(example_module()[1].splitlines()) <= 50


def test_readme_example_passes_the_checker(example: str) -> None:
    section = readme_section()
    (target,) = set(re.findall(rf"env={example}:(\w+)", section))
    check_family(getattr(importlib.import_module(example), target)(), seed=0)


def test_readme_example_trains_through_the_cli(example_in_cwd: str, tmp_path: Path) -> None:
    """As `maml-rl train ... --set env=mytasks:Class` run from the example's directory: the
    console script does not have the current directory on sys.path."""
    example = example_in_cwd
    (target,) = set(re.findall(rf"env={example}:(\w+)", readme_section()))
    out = tmp_path / "runs" / "mine"
    status = main(
        [
            "train",
            "navigation",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            f"env={example}:{target}",
            "--set",
            "meta_batch_size=2",
            "--set",
            "fast_batch_size=2",
            "--set",
            "num_batches=2",
            "--set",
            "hidden_sizes=[8]",
        ]
    )
    assert status == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert all("returns/pre_update" in row and "returns/post_update" in row for row in rows)
