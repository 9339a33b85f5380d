"""C-ECHO and C-STORE against Orthanc, storescp and faulty pynetdicom SCPs."""

from __future__ import annotations

import logging
import shutil

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from dicom_checks import assert_dciodvfy_clean
from fault_scp import SilentListener, scp_factory, write_encapsulated_pdf  # noqa: F401
from Media2DICOMLib.errors import NetworkError
from Media2DICOMLib.network import Server, Timeouts, echo, send_files, status_message
from Media2DICOMLib.source_study import read_source_series
from peers import free_port

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
SHORT = Timeouts(connect=5, acse=2, dimse=10, network=10)


@pytest.fixture
def pdf_object(tmp_path, shared_data):
    source = read_source_series(shared_data / "ct-3slice")
    path = write_encapsulated_pdf(source, tmp_path / "document.dcm", 200_000)
    assert_dciodvfy_clean(path)
    return path


def server_for(port: int, aet: str) -> Server:
    return Server(name="test", host="127.0.0.1", port=port, called_aet=aet)


def test_echo_orthanc_succeeds(orthanc):
    """C-ECHO to Orthanc succeeds and is timed."""
    result = echo(server_for(orthanc.dicom_port, orthanc.aet))
    assert result.ok
    assert result.reason == ""
    assert result.status == 0
    assert result.seconds > 0


def test_echo_refused_names_server():
    """C-ECHO to a closed port reports a refused connection and the server."""
    port = free_port()
    result = echo(server_for(port, "NOBODY"), timeouts=SHORT)
    assert not result.ok
    assert "refused" in result.reason
    assert f"NOBODY at 127.0.0.1:{port}" in result.reason


def test_echo_silent_server_times_out():
    """C-ECHO to a server that never responds reports a timeout."""
    listener = SilentListener()
    try:
        result = echo(server_for(listener.port, "SILENT"), timeouts=SHORT)
    finally:
        listener.stop()
    assert not result.ok
    assert "timed out" in result.reason
    assert f"SILENT at 127.0.0.1:{listener.port}" in result.reason


def test_echo_rejected_gives_reason(scp_factory):
    """C-ECHO to an SCP that accepts another calling AE title reports the rejection."""
    scp = scp_factory(require_calling_aet=["SOMEONEELSE"])
    result = echo(server_for(scp.port, scp.aet), calling_aet="MEDIA2DICOM")
    assert not result.ok
    assert "rejected" in result.reason
    assert "Calling AE title not recognised" in result.reason
    assert f"{scp.aet} at 127.0.0.1:{scp.port}" in result.reason


def test_echo_aborted_association(scp_factory):
    """C-ECHO to an SCP that aborts the association reports the abort."""
    scp = scp_factory(abort_on_request=True)
    result = echo(server_for(scp.port, scp.aet), timeouts=SHORT)
    assert not result.ok
    assert "abort" in result.reason or "closed the connection" in result.reason
    assert f"{scp.aet} at 127.0.0.1:{scp.port}" in result.reason


def test_send_orthanc_stores_ct(orthanc, shared_data):
    """C-STORE of the real CT slices to Orthanc succeeds for each slice."""
    files = sorted((shared_data / "ct-3slice").glob("*.dcm"))
    results = send_files(server_for(orthanc.dicom_port, orthanc.aet), files)
    assert [r.path for r in results] == files
    for result, path in zip(results, files):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        assert result.category == "success"
        assert result.status == 0
        assert result.sop_instance_uid == header.SOPInstanceUID
        assert result.sop_class_uid == header.SOPClassUID
        assert result.transfer_syntax_used == ImplicitVRLittleEndian
        assert orthanc.find_instances(result.sop_instance_uid)


def test_send_storescp_same_bytes(storescp, pdf_object):
    """An object sent from file in chunks arrives at storescp unchanged."""
    results = send_files(server_for(storescp.port, storescp.aet), [pdf_object])
    assert results[0].category == "success"
    received = list(storescp.folder.iterdir())
    assert len(received) == 1
    original = pydicom.dcmread(pdf_object)
    copy = pydicom.dcmread(received[0])
    for keyword in (
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "PatientID",
        "PatientName",
        "Modality",
        "MIMETypeOfEncapsulatedDocument",
    ):
        assert copy[keyword].value == original[keyword].value, keyword
    assert copy.EncapsulatedDocument == original.EncapsulatedDocument


def test_send_proposes_exact_contexts(scp_factory, shared_data, pdf_object):
    """Only the SOP class and transfer syntax pairs of the files are proposed."""
    scp = scp_factory()
    files = [shared_data / "ct-3slice" / "01.dcm", pdf_object]
    send_files(server_for(scp.port, scp.aet), files)
    assert sorted(set(scp.record.requested_contexts)) == sorted(
        {
            (CT_IMAGE_STORAGE, str(ImplicitVRLittleEndian)),
            (ENCAPSULATED_PDF_STORAGE, str(ExplicitVRLittleEndian)),
        }
    )


def test_send_jpeg_proposes_fallback(scp_factory):
    """A JPEG object is proposed as JPEG and, with the fallback, uncompressed."""
    scp = scp_factory()
    path = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")
    results = send_files(server_for(scp.port, scp.aet), [path])
    assert sorted(scp.record.requested_contexts) == sorted(
        [
            (SECONDARY_CAPTURE_STORAGE, str(JPEGBaseline8Bit)),
            (SECONDARY_CAPTURE_STORAGE, str(ExplicitVRLittleEndian)),
        ]
    )
    assert results[0].category == "success"
    assert results[0].transfer_syntax_used == JPEGBaseline8Bit
    assert scp.record.transfer_syntaxes == [str(JPEGBaseline8Bit)]


def test_send_jpeg_without_fallback_not_sent(scp_factory, tmp_path):
    """Without the fallback, a JPEG object the SCP takes only uncompressed stays."""
    scp = scp_factory(contexts=[(SECONDARY_CAPTURE_STORAGE, [ExplicitVRLittleEndian])])
    path = tmp_path / "jpeg.dcm"
    shutil.copyfile(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"), path)
    results = send_files(
        server_for(scp.port, scp.aet), [path], allow_uncompressed_fallback=False
    )
    assert results[0].category == "not sent"
    assert results[0].status is None
    assert "JPEG Baseline" in results[0].message
    assert "fallback" in results[0].message
    assert str(path) in results[0].message
    assert path.exists()
    assert scp.record.sop_instance_uids == []


def test_send_failure_status_meaning(scp_factory, pdf_object):
    """A failure status is reported with its code and meaning, file kept."""
    scp = scp_factory(status=0xA700)
    results = send_files(server_for(scp.port, scp.aet), [pdf_object])
    assert results[0].category == "failure"
    assert results[0].status == 0xA700
    assert "0xA700" in results[0].message
    assert "Out of Resources" in results[0].message
    assert f"{scp.aet} at 127.0.0.1:{scp.port}" in results[0].message
    assert str(pdf_object) in results[0].message
    assert not results[0].stored
    assert pdf_object.exists()


def test_send_warning_status_counts_stored(scp_factory, pdf_object):
    """A warning status is reported with its code and counts as stored."""
    scp = scp_factory(status=0xB000)
    results = send_files(server_for(scp.port, scp.aet), [pdf_object])
    assert results[0].category == "warning"
    assert results[0].status == 0xB000
    assert "0xB000" in results[0].message
    assert "Coercion of Data Elements" in results[0].message
    assert results[0].stored


def test_send_unaccepted_class_not_sent(scp_factory, pdf_object):
    """An object whose SOP class the SCP rejects is not sent, with the reason."""
    scp = scp_factory(contexts=[(CT_IMAGE_STORAGE, [ImplicitVRLittleEndian])])
    results = send_files(server_for(scp.port, scp.aet), [pdf_object])
    assert results[0].category == "not sent"
    assert "Encapsulated PDF Storage" in results[0].message
    assert f"{scp.aet} at 127.0.0.1:{scp.port}" in results[0].message


def test_send_refused_marks_all_not_sent(shared_data):
    """When the association fails, every file is reported as not sent."""
    port = free_port()
    files = sorted((shared_data / "ct-3slice").glob("*.dcm"))
    results = send_files(server_for(port, "NOBODY"), files, timeouts=SHORT)
    assert len(results) == 3
    for result in results:
        assert result.category == "not sent"
        assert "refused" in result.message
        assert str(result.path) in result.message


def test_send_progress_counts_objects(storescp, shared_data):
    """The progress callback counts sent objects up to the total."""
    calls = []
    files = sorted((shared_data / "ct-3slice").glob("*.dcm"))
    send_files(
        server_for(storescp.port, storescp.aet),
        files,
        progress=lambda done, total, message: calls.append((done, total)),
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_send_folder_skips_non_dicom(storescp, shared_data, tmp_path):
    """A folder is searched for DICOM files and other files are skipped."""
    shutil.copyfile(shared_data / "ct-3slice" / "01.dcm", tmp_path / "a.dcm")
    (tmp_path / "notes.txt").write_text("not DICOM")
    results = send_files(server_for(storescp.port, storescp.aet), [tmp_path])
    assert [r.path.name for r in results] == ["a.dcm"]


def test_send_missing_file_raises(storescp, tmp_path):
    """A missing input path raises NetworkError naming it."""
    missing = tmp_path / "absent.dcm"
    with pytest.raises(NetworkError, match="absent.dcm"):
        send_files(server_for(storescp.port, storescp.aet), [missing])


def test_send_logs_no_patient_data(storescp, shared_data, caplog):
    """INFO logs name UIDs and servers but no patient name or ID."""
    path = shared_data / "ct-3slice" / "01.dcm"
    header = pydicom.dcmread(path, stop_before_pixels=True)
    with caplog.at_level(logging.INFO):
        send_files(server_for(storescp.port, storescp.aet), [path])
    text = caplog.text
    assert str(header.SOPInstanceUID) in text
    assert "Association established" in text
    assert str(header.PatientID) not in text
    assert str(header.PatientName) not in text


def test_status_message_categories():
    """Status codes map to their category and meaning."""
    assert status_message(0x0000) == ("success", "Success")
    assert status_message(0xB007) == ("warning", "Data Set Does Not Match SOP Class")
    assert status_message(0xA900)[0] == "failure"
    assert status_message(0xC123) == ("failure", "Cannot Understand")
    assert status_message(0x0122) == ("failure", "Refused: SOP Class Not Supported")


def test_send_jpeg_fallback_uncompressed(scp_factory, shared_data, tmp_path):
    """A JPEG screenshot goes uncompressed when the SCP rejects JPEG syntaxes."""
    secondary_capture = pytest.importorskip("Media2DICOMLib.secondary_capture")
    from Media2DICOMLib.new_series import SeriesInfo

    source = read_source_series(shared_data / "ct-3slice")
    written = secondary_capture.write_secondary_capture(
        source,
        [shared_data / "screenshots" / "slicer-view.png"],
        tmp_path / "screenshot.dcm",
        SeriesInfo(series_number=960),
    )
    path = written.path
    assert_dciodvfy_clean(path)
    original = pydicom.dcmread(path, stop_before_pixels=True)
    assert original.file_meta.TransferSyntaxUID == JPEGBaseline8Bit

    sop_class = str(original.SOPClassUID)
    scp = scp_factory(contexts=[(sop_class, [ExplicitVRLittleEndian])])
    results = send_files(server_for(scp.port, scp.aet), [path])

    assert results[0].category == "success"
    assert results[0].transfer_syntax_used == ExplicitVRLittleEndian
    assert "Explicit VR Little Endian" in results[0].message
    assert scp.record.transfer_syntaxes == [str(ExplicitVRLittleEndian)]
    received = scp.record.datasets[0]
    assert received.SOPInstanceUID == original.SOPInstanceUID
    assert received.LossyImageCompression == "01"
    assert received.PhotometricInterpretation == "RGB"
    assert received.Rows == original.Rows
    assert received.Columns == original.Columns


def test_send_raw_dataset_file(scp_factory, pdf_object, tmp_path):
    """A file without preamble and File Meta Information is sent re-encoded."""
    original = pydicom.dcmread(pdf_object)
    raw = tmp_path / "raw.dcm"
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = True
    write_dataset(buffer, original)
    raw.write_bytes(buffer.getvalue())
    assert raw.read_bytes()[128:132] != b"DICM"
    assert_dciodvfy_clean(raw)

    scp = scp_factory()
    results = send_files(server_for(scp.port, scp.aet), [raw])
    assert results[0].category == "success"
    assert results[0].transfer_syntax_used == ImplicitVRLittleEndian
    assert scp.record.requested_contexts == [
        (ENCAPSULATED_PDF_STORAGE, str(ImplicitVRLittleEndian))
    ]
    received = scp.record.datasets[0]
    assert received.SOPInstanceUID == original.SOPInstanceUID
    assert received.StudyInstanceUID == original.StudyInstanceUID
    assert received.EncapsulatedDocument == original.EncapsulatedDocument


def test_send_from_file_not_decoded(storescp, pdf_object, monkeypatch):
    """A file with File Meta Information is streamed without decoding it."""
    import pynetdicom.association

    def fail_read(*args, **kwargs):
        raise AssertionError("the dataset was decoded instead of streamed")

    monkeypatch.setattr(pynetdicom.association, "dcmread", fail_read)
    results = send_files(server_for(storescp.port, storescp.aet), [pdf_object])
    assert results[0].category == "success"
    assert len(list(storescp.folder.iterdir())) == 1
