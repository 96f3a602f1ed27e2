"""Python 3.10 (ROS 2 Humble's, Ubuntu 22.04's) keeps working: every module of the project
parses under the 3.10 grammar, and ruff checks it for 3.10 (``target-version``).

What this cannot check on a newer interpreter (only a 3.10 one can): standard-library names
added after 3.10 (``tomllib``, ``typing.Self``, ``datetime.UTC`` ...), behaviour that changed
between versions, whether every dependency has a 3.10 wheel, and grammar that
``feature_version`` does not police (the parser's check is best-effort).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP = {".venv", ".venv-jazzy", "build", "install", "log", ".git", "demo_out", "runs", "out"}


def python_files() -> list[Path]:
    return sorted(p for p in REPO.rglob("*.py") if not SKIP.intersection(p.relative_to(REPO).parts))


def test_the_project_has_python_files():
    names = {p.relative_to(REPO).as_posix() for p in python_files()}
    assert {"setup.py", "eacnet_core/infer/segmenter.py", "eacnet_ros/node/segment_node.py",
            "launch/segment.launch.py"} <= names


@pytest.mark.parametrize("path", python_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_module_parses_under_the_python_3_10_grammar(path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))


def test_ruff_targets_python_3_10():
    ruff = (REPO / "pyproject.toml").read_text(encoding="utf-8").split("[tool.ruff]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^target-version\s*=\s*"py310"\s*$', ruff, re.M), ruff  # tomllib is 3.11+
