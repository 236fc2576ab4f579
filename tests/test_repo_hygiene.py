"""Promises about the repository itself: lint-clean, and README quickstart == CI command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quickstart_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S)
    assert block, "README's Quickstart section has no code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quickstart_is_two_commands_and_ci_runs_the_second():
    lines = _quickstart_lines()
    assert len(lines) == 2, f"Quickstart must be exactly two commands, found {len(lines)}: {lines}"
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert lines[1] in ci_script, ".ci/run must call the README's test command verbatim"
    assert "torch==2.13.0" in lines[0] and "torch==2.13.0" in lines[1]


def test_ruff_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--output-format=concise", str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
