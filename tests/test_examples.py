"""The examples run as the README says, in a fresh directory: twice, the second from the store."""

from __future__ import annotations

import pathlib
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"


def run(script: str, cwd: pathlib.Path) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / script)], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_quick_start_runs_then_serves_everything_from_the_store(tmp_path):
    first = run("quickstart.py", tmp_path)
    assert "summarise: 0 cached, 6 computed, 0 failed" in first
    second = run("quickstart.py", tmp_path)
    assert "summarise: 6 cached, 0 computed, 0 failed" in second and "grade: 6 cached" in second
    assert (tmp_path / ".orca" / "assets" / "quickstart" / "grade").is_dir()


def test_the_join_example_runs(tmp_path):
    assert run("join_pipeline.py", tmp_path)
