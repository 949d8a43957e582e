"""`mritumor --help` and shell completion must not import the heavy libraries.

Only which modules load is asserted here; how long that takes belongs in benchmarks/.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HEAVY = {"tensorflow", "keras", "matplotlib", "sklearn", "pydantic_settings", "jinja2"}
#: The web stack of `mritumor serve` loads only when it serves.
HEAVY |= {"fastapi", "starlette", "uvicorn"}


def imported_modules(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` lines (the last column)."""
    modules = set()
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        name = line.rsplit("|", 1)[-1].strip()
        if name and name != "imported package":
            modules.add(name)
    return modules


def run_mritumor(
    args: list[str], cwd: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120", **(extra_env or {})}
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mritumor", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def heavy_imports(modules: set[str]) -> set[str]:
    return {name for name in modules if name.split(".")[0] in HEAVY}


def test_help_imports_no_heavy_library(tmp_path: Path) -> None:
    result = run_mritumor(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "backbones" in result.stdout
    modules = imported_modules(result.stderr)
    assert {"typer", "mritumor.cli.main"} <= modules  # the parse found real lines
    assert heavy_imports(modules) == set()


def complete(words: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """What bash completion offers for the last of ``words`` (a child process, as a shell runs it)."""
    environment = {
        "_MRITUMOR_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - 1),
    }
    result = run_mritumor([], tmp_path, environment)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_completion_imports_no_heavy_library(tmp_path: Path) -> None:
    result = complete("mritumor backbones list v2", tmp_path)
    candidates = result.stdout.split()
    assert "v2b0" in candidates
    assert "v2b1" in candidates
    assert "b3" not in candidates
    assert set(candidates) == {"v2b0", "v2b1", "v2b2", "v2b3", "v2s", "v2m", "v2l"}
    modules = imported_modules(result.stderr)
    assert "mritumor.models.registry" in modules  # the completion callback really ran
    assert heavy_imports(modules) == set()


def test_the_volume_options_complete_their_values(tmp_path: Path) -> None:
    result = complete("mritumor infer --axis c", tmp_path)
    assert result.stdout.split() == ["coronal"]
    assert heavy_imports(imported_modules(result.stderr)) == set()
