"""STOW-RS and QIDO-RS against Orthanc's DICOMweb plugin and a loopback mock."""

from __future__ import annotations

import base64
import io

import pydicom
import pytest

import peers
from dicom_checks import assert_dciodvfy_clean
from fault_scp import MockStow, stow_reply, write_encapsulated_pdf
from Media2DICOMLib.cli import EXIT_NOT_SENT, EXIT_OK, main
from Media2DICOMLib.errors import NetworkError, SettingsError
from Media2DICOMLib.outbox import Outbox
from Media2DICOMLib.settings import Server, Settings, save_settings
from Media2DICOMLib.source_study import read_source_series

pytest.importorskip("dicomweb_client")
from Media2DICOMLib.dicomweb import make_session, search, store_instances  # noqa: E402


@pytest.fixture
def web_orthanc(tmp_path_factory):
    """Orthanc with the DICOMweb plugin on loopback."""
    if not peers.orthanc_available():
        pytest.skip("Orthanc is not installed (Debian package orthanc)")
    if not (peers.ORTHANC_PLUGIN_DIR / "libOrthancDicomWeb.so").exists():
        pytest.skip("the Orthanc DICOMweb plugin is not installed (orthanc-dicomweb)")
    server = peers.start_orthanc(tmp_path_factory.mktemp("orthanc"), dicomweb=True)
    server.server = Server(
        name="web",
        host="127.0.0.1",
        port=server.dicom_port,
        called_aet=server.aet,
        dicomweb_url=server.http_url + "/dicom-web",
    )
    yield server
    server.stop()


@pytest.fixture
def ct_files(shared_data):
    return sorted((shared_data / "ct-3slice").glob("*.dcm"))


@pytest.fixture
def document(tmp_path, ct_files):
    path = write_encapsulated_pdf(
        read_source_series(ct_files), tmp_path / "document.dcm", 300_000
    )
    assert_dciodvfy_clean(path)
    return path


def test_stow_stores_ct_in_orthanc(web_orthanc, ct_files):
    """STOW-RS stores each CT slice and reports success per object."""
    results = store_instances(web_orthanc.server, ct_files)
    assert [r.path for r in results] == ct_files
    for result, path in zip(results, ct_files):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        assert result.category == "success"
        assert result.status == 0
        assert result.sop_instance_uid == header.SOPInstanceUID
        assert result.transfer_syntax_used == header.file_meta.TransferSyntaxUID
        found = web_orthanc.find_instances(result.sop_instance_uid)
        assert len(found) == 1


def test_stow_document_round_trip(web_orthanc, document):
    """A document sent with STOW-RS comes back from Orthanc unchanged."""
    results = store_instances(web_orthanc.server, [document])
    assert results[0].category == "success"
    instance_id = web_orthanc.find_instances(results[0].sop_instance_uid)[0]["ID"]
    stored = pydicom.dcmread(
        io.BytesIO(web_orthanc.get_bytes(f"/instances/{instance_id}/file"))
    )
    original = pydicom.dcmread(document)
    for keyword in (
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "PatientID",
        "PatientName",
        "Modality",
        "MIMETypeOfEncapsulatedDocument",
        "EncapsulatedDocument",
    ):
        assert stored[keyword].value == original[keyword].value, keyword


def test_qido_finds_study_series_images(web_orthanc, ct_files):
    """QIDO-RS lists the stored study, its series and its instances."""
    store_instances(web_orthanc.server, ct_files)
    local = read_source_series(ct_files)

    studies = search(web_orthanc.server, "STUDY", patient_id="99000")
    assert [row.value("StudyInstanceUID") for row in studies] == [
        local.study_instance_uid
    ]
    assert studies[0].value("PatientName") == str(local.header.PatientName)
    assert search(web_orthanc.server, "STUDY", patient_id="12345") == []

    series = search(
        web_orthanc.server, "SERIES", study_instance_uid=local.study_instance_uid
    )
    assert [row.value("SeriesInstanceUID") for row in series] == [
        local.series_instance_uid
    ]
    assert series[0].value("Modality") == "CT"

    images = search(
        web_orthanc.server,
        "IMAGE",
        study_instance_uid=local.study_instance_uid,
        series_instance_uid=local.series_instance_uid,
    )
    assert sorted(row.value("SOPInstanceUID") for row in images) == sorted(
        i.sop_instance_uid for i in local.instances
    )


def test_qido_patient_level_rejected(web_orthanc):
    """QIDO-RS has no patient level, and the error names the alternative."""
    with pytest.raises(NetworkError, match="no patient level"):
        search(web_orthanc.server, "PATIENT", patient_id="99000")


def test_stow_basic_auth_header(document, monkeypatch):
    """Basic authentication sends the user and the password from the environment."""
    token = base64.b64encode(b"alice:s3cret").decode()
    mock = MockStow(f"Basic {token}")
    try:
        header = pydicom.dcmread(document, stop_before_pixels=True)
        mock.reply = stow_reply(str(header.SOPClassUID), str(header.SOPInstanceUID))
        server = Server(
            name="cloud",
            host="127.0.0.1",
            port=104,
            called_aet="CLOUD",
            dicomweb_url=mock.url,
            dicomweb_auth="basic",
            dicomweb_username="alice",
            dicomweb_secret_env="M2D_TEST_PASSWORD",
        )
        monkeypatch.setenv("M2D_TEST_PASSWORD", "s3cret")
        assert store_instances(server, [document])[0].category == "success"

        monkeypatch.setenv("M2D_TEST_PASSWORD", "wrong")
        result = store_instances(server, [document])[0]
        assert result.category == "failure"
        assert "HTTP 401" in result.message
        assert "password or token" in result.message
        assert str(document) in result.message
    finally:
        mock.stop()


def test_stow_token_auth_and_statuses(document, monkeypatch):
    """A bearer token is sent, and failure and warning reasons are reported."""
    mock = MockStow("Bearer abc.def")
    try:
        header = pydicom.dcmread(document, stop_before_pixels=True)
        uid, cls = str(header.SOPInstanceUID), str(header.SOPClassUID)
        server = Server(
            name="cloud",
            host="127.0.0.1",
            port=104,
            called_aet="CLOUD",
            dicomweb_url=mock.url,
            dicomweb_auth="token",
            dicomweb_secret_env="M2D_TEST_TOKEN",
        )
        monkeypatch.setenv("M2D_TEST_TOKEN", "abc.def")

        mock.reply = stow_reply(cls, uid, failure=0xA700)
        failed = store_instances(server, [document])[0]
        assert failed.category == "failure"
        assert failed.status == 0xA700
        assert "0xA700" in failed.message
        assert "Out of Resources" in failed.message

        mock.reply = stow_reply(cls, uid, warning=0xB000)
        warned = store_instances(server, [document])[0]
        assert warned.category == "warning"
        assert warned.status == 0xB000
        assert warned.stored

        mock.reply = stow_reply(cls, "1.2.3")
        unlisted = store_instances(server, [document])[0]
        assert unlisted.category == "failure"
        assert "does not list the object" in unlisted.message
        assert set(mock.authorizations) == {"Bearer abc.def"}
    finally:
        mock.stop()


def test_missing_secret_variable_reported(monkeypatch):
    """An unset secret variable is reported by name before any request."""
    monkeypatch.delenv("M2D_TEST_UNSET", raising=False)
    server = Server(
        name="cloud",
        host="127.0.0.1",
        port=104,
        called_aet="CLOUD",
        dicomweb_url="http://127.0.0.1:9/dicom-web",
        dicomweb_auth="token",
        dicomweb_secret_env="M2D_TEST_UNSET",
    )
    with pytest.raises(SettingsError, match="M2D_TEST_UNSET"):
        make_session(server)


def test_cli_send_dicomweb_through_outbox(
    web_orthanc, document, tmp_path, monkeypatch, capsys
):
    """'send --dicomweb' stores through the outbox and leaves it empty."""
    settings_path = tmp_path / "settings.json"
    monkeypatch.setenv("MEDIA2DICOM_SETTINGS", str(settings_path))
    cache = tmp_path / "cache"
    settings = Settings(cache_directory=str(cache))
    settings.add_server(web_orthanc.server)
    down = Server(
        name="down",
        host="127.0.0.1",
        port=104,
        called_aet="DOWN",
        dicomweb_url=f"http://127.0.0.1:{peers.free_port()}/dicom-web",
    )
    settings.add_server(down)
    save_settings(settings, settings_path)

    assert main(["send", "--dicomweb", "--server", "web", str(document)]) == EXIT_OK
    assert "1 of 1 object(s) stored" in capsys.readouterr().out
    uid = str(pydicom.dcmread(document, stop_before_pixels=True).SOPInstanceUID)
    assert web_orthanc.find_instances(uid)
    assert Outbox(cache).entries() == []

    code = main(["send", "--dicomweb", "--server", "down", str(document)])
    assert code == EXIT_NOT_SENT
    queued = Outbox(cache).entries()
    assert [entry.sop_instance_uid for entry in queued] == [uid]
    assert "STOW-RS" in queued[0].last_reason
    assert queued[0].transport == "dicomweb"

    settings.replace_server(
        "down",
        Server(**{**vars(down), "dicomweb_url": web_orthanc.server.dicomweb_url}),
    )
    save_settings(settings, settings_path)
    capsys.readouterr()
    assert main(["outbox", "retry", "--server", "down"]) == EXIT_OK
    assert "Stored on " + web_orthanc.server.dicomweb_url in capsys.readouterr().out
    assert Outbox(cache).entries() == []

    assert main(
        ["query", "--dicomweb", "--server", "web", "--patient-id", "99000"]
    ) == (EXIT_OK)
    assert "1 match(es)" in capsys.readouterr().out


def test_no_dicomweb_url_reported(tmp_path, monkeypatch, ct_small, capsys):
    """--dicomweb with a server that has no DICOMweb URL fails before queueing."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    settings = Settings(cache_directory=str(tmp_path / "cache"))
    settings.servers.append(Server("dimse-only", "127.0.0.1", 104, "PACS"))
    path = tmp_path / "settings.json"
    save_settings(settings, path)

    send = main(["send", "--settings", str(path), "--server", "dimse-only",
                 "--dicomweb", str(ct_small)])
    send_error = capsys.readouterr().err
    query = main(["query", "--settings", str(path), "--server", "dimse-only",
                  "--dicomweb"])
    query_error = capsys.readouterr().err

    assert send == 1
    assert "no DICOMweb URL" in send_error
    assert "Traceback" not in send_error
    assert Outbox(settings.cache_path()).entries() == []
    assert query == 1
    assert "no DICOMweb URL" in query_error
    with pytest.raises(SettingsError, match="no DICOMweb URL"):
        search(settings.servers[0], "study")
