"""Writing commands with a PACS source and --send, against a real Orthanc."""

from __future__ import annotations

import pydicom
import pytest

from Media2DICOMLib import cli
from Media2DICOMLib.outbox import Outbox
from Media2DICOMLib.settings import Server, Settings, save_settings

from dicom_checks import assert_dciodvfy_clean
import peers
from peers import free_port


def write_settings(tmp_path, servers):
    settings = Settings(servers=servers, cache_directory=str(tmp_path / "cache"))
    path = tmp_path / "settings.json"
    save_settings(settings, path)
    return path, settings


@pytest.fixture
def pacs(tmp_path_factory):
    """Orthanc that lists this application's default AE title, as a PACS would."""
    if not peers.orthanc_available():
        pytest.skip("Orthanc is not installed (Debian package orthanc)")
    server = peers.start_orthanc(
        tmp_path_factory.mktemp("pacs"),
        modalities={"M2D": [Settings().ae_title, "127.0.0.1", peers.free_port()]},
    )
    yield server
    server.stop()


def test_encapsulate_from_pacs_and_send(tmp_path, shared_data, pacs):
    """The CT's metadata comes from Orthanc and the model goes back to it."""
    orthanc = pacs
    ct = shared_data / "ct-3slice"
    for path in sorted(ct.glob("*.dcm")):
        orthanc.upload(path)
    ct_header = pydicom.dcmread(ct / "01.dcm", stop_before_pixels=True)
    server = Server("pacs", "127.0.0.1", orthanc.dicom_port, orthanc.aet)
    settings_path, settings = write_settings(tmp_path, [server])
    output = tmp_path / "out"

    status = cli.main(
        [
            "encapsulate",
            "--settings", str(settings_path),
            "--source-server", "pacs",
            "--study-uid", str(ct_header.StudyInstanceUID),
            "--series-uid", str(ct_header.SeriesInstanceUID),
            "--send", "pacs",
            "-o", str(output),
            str(shared_data / "models" / "liver.stl"),
        ]
    )

    assert status == 0
    written = sorted(output.glob("*.dcm"))
    assert len(written) == 1
    assert_dciodvfy_clean(written[0])
    dataset = pydicom.dcmread(written[0], stop_before_pixels=True)
    assert dataset.StudyInstanceUID == ct_header.StudyInstanceUID
    assert dataset.FrameOfReferenceUID == ct_header.FrameOfReferenceUID
    assert len(dataset.SourceInstanceSequence) == 3
    assert orthanc.find_instances(str(dataset.SOPInstanceUID))
    assert Outbox(settings.cache_path()).entries() == []


def test_capture_send_failure_keeps_object(tmp_path, ct_small, capsys):
    """A server that is down leaves the capture in the outbox, exit code 3."""
    server = Server("down", "127.0.0.1", free_port(), "NOBODY")
    settings_path, settings = write_settings(tmp_path, [server])
    image = tmp_path / "shot.png"
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)

    status = cli.main(
        [
            "capture",
            "--settings", str(settings_path),
            "-s", str(ct_small),
            "--send", "down",
            "-o", str(tmp_path / "out"),
            str(image),
        ]
    )

    assert status == cli.EXIT_NOT_SENT
    entries = Outbox(settings.cache_path()).entries()
    assert len(entries) == 1
    output = capsys.readouterr().out
    assert "0 of 1 object(s) stored" in output
    assert "NOBODY" in output


def test_missing_source_message(tmp_path, capsys):
    stl = tmp_path / "m.stl"
    stl.write_bytes(b"\0" * 84)

    status = cli.main(["encapsulate", "-o", str(tmp_path), str(stl)])

    assert status == cli.EXIT_USAGE
    assert "Missing source" in capsys.readouterr().err


def test_source_server_needs_uids(tmp_path, capsys):
    settings_path, _ = write_settings(
        tmp_path, [Server("pacs", "127.0.0.1", 104, "PACS")]
    )
    stl = tmp_path / "m.stl"
    stl.write_bytes(b"\0" * 84)

    status = cli.main(
        ["encapsulate", "--settings", str(settings_path), "--source-server", "pacs",
         "-o", str(tmp_path), str(stl)]
    )

    assert status == cli.EXIT_USAGE
    assert "--study-uid and --series-uid" in capsys.readouterr().err


def test_unknown_send_server_writes_nothing(tmp_path, ct_small, capsys):
    """A --send server that is not saved stops the command before any output."""
    settings_path, _ = write_settings(tmp_path, [])
    stl = tmp_path / "m.stl"
    stl.write_bytes(b"\0" * 80 + (1).to_bytes(4, "little") + b"\0" * 50)
    output = tmp_path / "out"

    status = cli.main(
        ["encapsulate", "--settings", str(settings_path), "-s", str(ct_small),
         "--send", "nowhere", "-o", str(output), str(stl)]
    )

    assert status == cli.EXIT_ERROR
    assert "nowhere" in capsys.readouterr().err
    assert not output.exists()
