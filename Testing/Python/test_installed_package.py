"""The package as pip installs it, run from outside the repository.

The other tests import the library from the checkout, so they cannot see a
module that the wheel leaves out. These run the installed copy in a separate
process whose working folder is not the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]


def run_outside(tmp_path, *arguments):
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *arguments],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
        timeout=120,
    )


@pytest.fixture
def installed_package(tmp_path) -> Path:
    """The folder of the installed Media2DICOMLib, or a skip when only the checkout has it."""
    result = run_outside(
        tmp_path, "-c", "import Media2DICOMLib, os; print(os.path.dirname(Media2DICOMLib.__file__))"
    )
    if result.returncode != 0:
        pytest.skip("Media2DICOMLib is not installed in this environment")
    folder = Path(result.stdout.strip())
    if REPOSITORY in folder.parents or folder == REPOSITORY / "Media2DICOMLib":
        pytest.skip("Media2DICOMLib is installed in editable mode from this checkout")
    return folder


def test_installed_package_has_every_module(installed_package):
    expected = sorted(
        path.relative_to(REPOSITORY / "Media2DICOMLib")
        for path in (REPOSITORY / "Media2DICOMLib").rglob("*.py")
    )

    missing = [str(p) for p in expected if not (installed_package / p).is_file()]

    assert not missing, f"modules missing from the installed package: {missing}"


def test_installed_command_lists_subcommands(installed_package, tmp_path):
    result = run_outside(tmp_path, "-m", "Media2DICOMLib.cli", "--help")

    assert result.returncode == 0, result.stderr
    for command in ("encapsulate", "capture", "send", "echo", "servers", "outbox",
                    "query", "retrieve", "mesh"):
        assert command in result.stdout
