"""Checks every test applies to the DICOM objects the product writes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def run_dciodvfy(path: Path) -> str:
    """Run dciodvfy on ``path`` and return its output (it prints to stderr)."""
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy is missing: install the Debian package dicom3tools")
    result = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=120
    )
    return result.stdout + result.stderr


def assert_dciodvfy_clean(path: Path) -> None:
    """Fail when dciodvfy reports any error for ``path``."""
    output = run_dciodvfy(path)
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert not errors, f"dciodvfy errors in {path}:\n{output}"


def run_dcentvfy(paths) -> str:
    """Run dcentvfy over ``paths`` and return its output."""
    if shutil.which("dcentvfy") is None:
        pytest.fail("dcentvfy is missing: install the Debian package dicom3tools")
    result = subprocess.run(
        ["dcentvfy", *[str(p) for p in paths]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout + result.stderr
