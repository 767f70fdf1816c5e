"""examples/custom_policy.py and examples/image_policy.py run at tiny size, from another
folder: custom policies (and an image family) given from Python train, are recorded with the
run and rebuilt by evaluate and by the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, out: Path, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--tiny", "--out", str(out)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_custom_policy_example(tmp_path: Path) -> None:
    out = run_example("custom_policy.py", tmp_path / "runs", tmp_path)
    assert "policy custom_policy:LayerNormMLP" in out and "policy built-in MLP" in out
    assert "layernorm:" in out and "built-in:" in out
    saved = yaml.safe_load((tmp_path / "runs" / "layernorm" / "config.yaml").read_text())
    assert saved["policy"] == "custom_policy:LayerNormMLP"
    assert saved["policy_kwargs"] == {"hidden": 64}
    # the command line rebuilds the recorded policy from any folder, and resumes the run
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for argv in (["evaluate", str(tmp_path / "runs" / "layernorm"), "--num-tasks", "2"],
                 ["train", "--resume", str(tmp_path / "runs" / "layernorm"),
                  "--set", "num_batches=3"]):  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "maml_rl.cli", *argv, "--no-progress"],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-2000:]


def test_image_policy_example(tmp_path: Path) -> None:
    out = run_example("image_policy.py", tmp_path / "run", tmp_path)
    assert "ImageNavigation" in out and "policy image_policy:SmallCNN" in out
    assert "post - pre:" in out
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["env"] == "image_policy:ImageNavigation"
