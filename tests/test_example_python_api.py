"""examples/python_api.py runs at tiny size: trains, is stopped by its callback, resumes,
evaluates and reads the per-task returns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "python_api.py"


def test_python_api_example_runs_at_tiny_size(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--tiny", "--out", str(run_dir)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "callback, iteration 2:" in out and "callback, iteration 3:" not in out  # stopped
    assert "stopped after 2 iterations; resuming to 4" in out
    assert "maml beats random on" in out and f"{run_dir}: iteration 4 of 4" in out
    assert (run_dir / "eval" / "adaptation_tasks.csv").is_file()
