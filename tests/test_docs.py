"""README.md and the docs site (docs/, mkdocs.yml) are tested, not proofread.

- The site builds with ``mkdocs build --strict`` (a broken link, a missing anchor or a bad
  API reference fails), and its configuration reference has every `Config` field.
- Every fenced block of README.md and docs/ runs, page by page, in a fresh folder (a page's
  blocks share it, in order), at tiny sizes:
  - ``bash``: each command (``&&`` chains split, ``\\`` continuations joined) by its kind:
    ``maml-rl ...`` runs through `maml_rl.cli.main` with tiny sizes appended (one iteration of
    2 tasks × 2 trajectories × 10 steps; 2 held-out tasks; baselines trained for 1 iteration);
    a ``train`` on a Ray cluster only loads its config and overrides (a two-node cluster runs
    in tests/test_ray_cluster.py).
    ``python examples/X.py`` must be an example that tests/test_examples*.py runs.
    ``python experiments/X.py`` (or ``python -m experiments.X``) / ``benchmarks/X.py`` and
    ``bash benchmarks/X.sh`` are hours long: the script must exist and accept every ``--flag``
    given (experiments/reproduce.py and multistep.py themselves run at tiny size in
    tests/test_reproduce.py and tests/test_multistep.py). ``pip install`` may name only
    extras of setup.cfg; ``python -m pytest -q`` must be CI's command (.ci/run), any other
    pytest line may use only markers of setup.cfg. ``ray``, ``tensorboard`` and ``mkdocs``
    are other programs' commands and are not run. Anything else fails the test.
  - ``python``: a block whose first line is ``# name.py`` is written to that file (a later
    command imports it); any other block is executed with `maml_rl.load_config`,
    `maml_rl.train` and `maml_rl.evaluate` shrunk to tiny sizes.
  - ``yaml`` opening with ``# name.yaml`` is written to that file; other blocks (``text``
    synopses, ``ini``, ``bibtex``) are not run.
  Paths into ``experiments/results/`` are copied into the folder first, so nothing runs in, or
  writes to, the committed results.
- User documents hold no history: dates, "this machine" and the like belong in CHANGELOG.md.
"""

from __future__ import annotations

import configparser
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
TINY_SETS = ["num_batches=1", "meta_batch_size=2", "fast_batch_size=2", "cg_iters=2",
             "env_kwargs={max_episode_steps: 10}"]  # fmt: skip
EXTERNAL = ("ray", "tensorboard", "mkdocs")


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def blocks(page: Path) -> list[tuple[str, str]]:
    """(language, text) of every fenced block of a page, in order."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(page.read_text())]


def commands(text: str) -> list[str]:
    """The commands of a bash block: continuations joined, comments dropped, && split."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            out += [part.strip() for part in line.split("&&")]
    return out


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def ci_commands() -> list[str]:
    return (ROOT / ".ci" / "run").read_text().splitlines()


# ------------------------------------------------------------------ the command kinds


def check_pip(argv: list[str]) -> None:
    extras = set(setup_cfg()["options.extras_require"])
    for arg in argv[2:]:
        named = re.search(r"\[([\w,]+)\]", arg)
        if named:
            assert set(named.group(1).split(",")) <= extras, f"unknown extra in {arg}"


def check_pytest(argv: list[str]) -> None:
    command = shlex.join(argv)
    if command == "python -m pytest -q":
        assert command in ci_commands(), "CI (.ci/run) does not run the documented test command"
        return
    markers = setup_cfg()["tool:pytest"]["markers"]
    for marker in re.findall(r"-m ([\w ]+)", command.replace('"', "")):
        for word in marker.split():
            assert word in ("not", "and", "or") or f"{word}:" in markers, command


def check_script(argv: list[str]) -> None:
    """A long experiment or benchmark: the script exists and accepts every flag given."""
    script = ROOT / argv[1]
    assert script.is_file(), f"{argv[1]} does not exist"
    if script.parts[-2] == "examples":
        tests = " ".join(p.read_text() for p in (ROOT / "tests").glob("test_example*.py"))
        assert script.name in tests, f"no test runs {argv[1]}"
        return
    source = script.read_text()
    if script.suffix == ".sh":  # its python commands take the flags: checked where they are
        return
    for flag in (a.split("=")[0] for a in argv[2:] if a.startswith("--")):
        assert f'"{flag}"' in source, f"{argv[1]} has no option {flag}"


def check_ray_config(argv: list[str]) -> None:
    """A run on a Ray cluster (tests/test_ray_cluster.py runs a two-node one): its config and
    overrides must load."""
    from maml_rl import config as config_module
    from maml_rl.configs import find_config

    overrides = dict(config_module.parse_override(a) for a in argv[3:] if "=" in a)
    cfg = config_module.load(find_config(argv[2]), overrides)
    assert cfg.sampler == "ray"


def set_option(argv: list[str], name: str, value: str) -> list[str]:
    if name in argv:
        argv = list(argv)
        argv[argv.index(name) + 1] = value
        return argv
    return [*argv, name, value]


def without_keys(argv: list[str], keys: set[str]) -> list[str]:
    """argv without the --set pairs of `keys` (each key may be given once), and without a
    --set left empty."""
    kept = [a for a in argv if a.startswith("-") or a.split("=")[0] not in keys or "=" not in a]
    nonempty = [i + 1 < len(kept) and not kept[i + 1].startswith("--") for i in range(len(kept))]
    return [a for a, filled in zip(kept, nonempty, strict=True) if a != "--set" or filled]


def tiny(argv: list[str]) -> list[str]:
    """A documented maml-rl command (without 'maml-rl') at tiny sizes."""
    command = argv[0] if argv[0] != "--debug" else argv[1]
    if command == "train":
        sets = [*TINY_SETS]
        if "--resume" in argv:
            sets = ["num_batches=2"]
        elif not any(a.startswith(("hidden_sizes=", "policy=")) for a in argv):
            sets.append("hidden_sizes=[8]")
        return [
            *without_keys(argv, {s.split("=")[0] for s in sets}),
            "--no-progress",
            "--set",
            *sets,
        ]
    if command == "evaluate":
        argv = set_option(argv, "--num-tasks", "2")
        if "--train-baselines" in argv:
            argv = set_option(argv, "--train-baselines", "1")
        return [*argv, "--no-progress"]
    return argv


def copy_committed_runs(argv: list[str], folder: Path) -> None:
    for arg in argv:
        if arg.startswith("experiments/results/") and (ROOT / arg).exists():
            if (ROOT / arg).is_file():  # a committed run's config.yaml
                (folder / arg).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ROOT / arg, folder / arg)
            elif not (folder / arg).exists():
                shutil.copytree(ROOT / arg, folder / arg)


EXTRA_MODULES = {"metaworld": "metaworld"}
"""Extras whose commands the docs show (by the word in the command) and the module each adds."""


def missing_extra(command: str) -> str | None:
    """The extra a `maml-rl` command of the docs needs and this environment lacks (Meta-World's
    families and configs), else None: such a command is reported as not run, not failed, where
    only `pip install -e ".[test]"` was installed."""
    if not command.startswith("maml-rl "):
        return None
    for extra, module in EXTRA_MODULES.items():
        if extra in command and importlib.util.find_spec(module) is None:
            return extra
    return None


def run_command(command: str, folder: Path) -> None:
    from maml_rl.cli import main

    argv = shlex.split(command)
    if argv[0] == "pip":
        return check_pip(argv)
    if argv[:3] == ["python", "-m", "pytest"]:
        return check_pytest(argv)
    if argv[:2] == ["python", "-m"] and argv[2].startswith("experiments."):
        module = argv[2].removeprefix("experiments.")
        return check_script(["python", f"experiments/{module}.py", *argv[3:]])
    if argv[0] in ("python", "bash") and argv[1].endswith((".py", ".sh")):
        return check_script(argv)
    if argv[0] in EXTERNAL:
        return None
    assert argv[0] == "maml-rl", f"the docs test does not know how to run: {command}"
    if argv[1] == "train" and "sampler=ray" in argv:
        return check_ray_config(argv)
    copy_committed_runs(argv, folder)
    assert main(tiny(argv[1:])) == 0, command


# ------------------------------------------------------------------ Python snippets


def tiny_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """maml_rl's API functions, shrunk to tiny sizes for the snippets."""
    import maml_rl

    load_config, train, evaluate = maml_rl.load_config, maml_rl.train, maml_rl.evaluate

    def tiny_load_config(name: Any, /, **overrides: Any) -> Any:
        kwargs = {**overrides.pop("env_kwargs", {}), "max_episode_steps": 10}
        sizes = dict(num_batches=min(overrides.pop("num_batches", 2), 2), meta_batch_size=2,
                     fast_batch_size=2, cg_iters=2, env_kwargs=kwargs)  # fmt: skip
        return load_config(name, **overrides, **sizes)

    def tiny_train(*args: Any, **kwargs: Any) -> Any:
        return train(*args, **{**kwargs, "progress": False})

    def tiny_evaluate(*args: Any, **kwargs: Any) -> Any:
        kwargs = {**kwargs, "num_tasks": 2, "progress": False}
        if kwargs.get("train_baselines"):
            kwargs["train_baselines"] = 1
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(maml_rl, "load_config", tiny_load_config)
    monkeypatch.setattr(maml_rl, "train", tiny_train)
    monkeypatch.setattr(maml_rl, "evaluate", tiny_evaluate)


FILE_NAME = re.compile(r"# ([\w-]+\.(?:py|yaml))\n")


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_block_of_the_page_runs(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    written: list[str] = []
    tiny_api(monkeypatch)
    not_run: list[str] = []
    missing: set[str] = set()  # outputs of the commands not run
    for language, text in blocks(page):
        named = FILE_NAME.match(text)
        if language in ("python", "yaml") and named:
            (tmp_path / named.group(1)).write_text(text)
            written.append(named.group(1).removesuffix(".py"))
        elif language == "python":
            exec(compile(text, f"{page.name} snippet", "exec"), {"__name__": "docs_snippet"})
        elif language == "bash":
            for command in commands(text):
                argv = shlex.split(command)
                extra = missing_extra(command)
                after = [a for a in argv for m in missing if a == m or a.startswith(m + "/")]
                if extra or after:
                    why = f"needs the {extra} extra" if extra else f"uses {after[0]}"
                    not_run.append(f"{command} ({why})")
                    if "--out" in argv:  # what it would have written is missing too
                        missing.add(argv[argv.index("--out") + 1])
                else:
                    run_command(command, tmp_path)
    for name in written:
        sys.modules.pop(name, None)
    if not_run:  # the rest of the page ran; say what did not (CI installs every extra)
        pytest.skip(f"{len(not_run)} command(s) not run: {'; '.join(not_run)}")


# ------------------------------------------------------------------ README's front page


def quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [t for lang, t in BLOCK.findall(section) if lang == "bash"]


def test_readme_is_short_and_has_the_two_quick_start_commands() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
    train, test = quick_start()[:2]  # then evaluate and plot
    assert "maml-rl train navigation" in train
    assert commands(test)[-1] == "python -m pytest -q"


def test_ci_runs_the_readme_test_command_and_builds_the_docs() -> None:
    ci = ci_commands()
    assert commands(quick_start()[1])[-1] in ci
    assert 'python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0' in ci
    assert any("pip install" in line and "docs" in line for line in ci)
    # a newcomer's test run is CI's: the same extras
    extras = re.compile(r'pip install (?:-q )?-e "\.\[([\w,]+)\]"')
    readme = extras.findall(quick_start()[1])
    assert readme and readme == [e for line in ci for e in extras.findall(line)]


def test_the_command_line_page_names_every_command_option_and_shipped_config() -> None:
    """docs/cli.md's synopsis has every subcommand and each of its long options, and its
    table every shipped config (a config `maml-rl configs` lists, or its -suffix form)."""
    import argparse

    from maml_rl.cli import parser
    from maml_rl.configs import shipped_config_descriptions

    page = (ROOT / "docs" / "cli.md").read_text()
    synopsis = page.split("```text", 1)[1].split("```", 1)[0]
    commands = next(
        a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    for name, sub in commands.items():
        lines = [line for line in synopsis.splitlines() if f"maml-rl {name} " in line + " "]
        assert lines, f"docs/cli.md's synopsis has no `maml-rl {name}`"
        for action in sub._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert option in synopsis, f"docs/cli.md's synopsis lacks {name} {option}"
    for config in shipped_config_descriptions():
        suffix = "-" + config.split("-", 2)[-1] if config.startswith("metaworld-ml1-") else None
        assert f"`{config}`" in page or (suffix and f"`{suffix}`" in page), (
            f"docs/cli.md's config table lacks `{config}`"
        )


# ------------------------------------------------------------------ the site


def load_hooks() -> Any:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_reference_has_every_config_field() -> None:
    import dataclasses

    from maml_rl.config import Config

    table = load_hooks().config_table()
    docs = load_hooks().field_docstrings()
    for field in dataclasses.fields(Config):
        assert f"| `{field.name}` |" in table
        assert docs.get(field.name), f"Config.{field.name} has no docstring"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip('mkdocs is not installed (pip install -e ".[docs]"; CI installs it)')
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    reference = (tmp_path / "site" / "reference" / "index.html").read_text()
    assert "load_config" in reference and "IterationInfo" in reference


HISTORY = re.compile(
    r"this machine|that afternoon|that morning|earlier session|first release|in the session"
    r"|(?<![-\w])20\d\d-\d\d-\d\d(?![\w-]*/)",
    re.IGNORECASE,
)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_no_history_in_user_documents(page: Path) -> None:
    """What changed when is CHANGELOG.md's; a page says what is (a folder named by a date,
    e.g. a raw-output folder, is a path and may stay)."""
    found = HISTORY.findall(page.read_text())
    assert not found, f"{page_id(page)}: {found}"


def test_readme_links_reach_files_of_the_repository() -> None:
    """README.md is read on the repository's page, outside the site: its relative links must
    name files that exist (mkdocs --strict checks the site's own)."""
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).is_file(), f"README.md links to {target}, which is missing"
