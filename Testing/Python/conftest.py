"""Shared fixtures: real data paths, DICOM peers on loopback, validators."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[2]
SHARED_DATA = REPOSITORY.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real test data beside the repository, or a skip when it is absent."""
    if not (SHARED_DATA / "ct-3slice").is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ct_small() -> Path:
    """pydicom's own CT_small.dcm, present wherever pydicom is installed."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm"))


@pytest.fixture
def orthanc(tmp_path_factory):
    """A fresh Orthanc on loopback for one test."""
    if not peers.orthanc_available():
        pytest.skip("Orthanc is not installed (Debian package orthanc)")
    server = peers.start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


@pytest.fixture
def storescp(tmp_path_factory):
    """A DCMTK storescp on loopback for one test."""
    if not peers.storescp_available():
        pytest.skip("DCMTK storescp is not installed (Debian package dcmtk)")
    server = peers.start_storescp(tmp_path_factory.mktemp("storescp"))
    yield server
    server.stop()
