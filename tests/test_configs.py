"""The shipped configs are found by name and listed with what each trains: `maml-rl configs`,
and `maml-rl train --help` names them."""

from __future__ import annotations

from pathlib import Path

import pytest

from maml_rl.cli import main
from maml_rl.configs import describe, shipped_config_descriptions, shipped_configs


def test_describe_takes_the_opening_comment_up_to_its_colon_or_last_comma(tmp_path: Path) -> None:
    cases = {
        "# Meta-World ML1 reach-v3 (Yu et al. 2019): 50 training goals\nenv: x\n": (
            "Meta-World ML1 reach-v3 (Yu et al. 2019)"
        ),
        "# Ant velocity (Finn et al. 2017, Sec. 5.3), ProMP protocol on Gymnasium's\n": (
            "Ant velocity (Finn et al. 2017, Sec. 5.3)"
        ),
        "# Point mass\n": "Point mass",
        "env: navigation\n": "",
    }
    for text, expected in cases.items():
        (tmp_path / "c.yaml").write_text(text)
        assert describe(tmp_path / "c.yaml") == expected


def test_configs_command_lists_every_shipped_config_with_a_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = sorted(p.stem for p in shipped_configs().glob("*.yaml"))
    assert list(shipped_config_descriptions()) == names and "navigation" in names
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == names
    assert all(len(line.split()) > 1 for line in lines)  # each has its description
    assert any(line.startswith("navigation") and "2D navigation" in line for line in lines)


def test_train_help_names_the_shipped_configs_and_render_help_describes_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_status:
        main(["train", "--help"])
    assert exit_status.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "maml-rl configs" in text
    assert all(name in text.replace("- ", "-") for name in ("navigation", "ant-goal"))
    with pytest.raises(SystemExit):
        main(["render", "--help"])
    assert "held-out tasks after each of --steps gradient steps" in " ".join(
        capsys.readouterr().out.split()
    )
