"""C-FIND, C-MOVE and C-GET against Orthanc holding the real CT series."""

from __future__ import annotations

import copy
import io
import logging
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest

import peers
from dicom_checks import assert_dciodvfy_clean, run_dcentvfy
from fault_scp import write_encapsulated_pdf
from Media2DICOMLib.cli import EXIT_OK, main
from Media2DICOMLib.errors import NetworkError
from Media2DICOMLib.network import send_files
from Media2DICOMLib.new_series import SeriesInfo, new_uid
from Media2DICOMLib.query import (
    _RequestedInstance,
    build_identifier,
    find,
    find_instances,
    retrieve_source_series,
)
from Media2DICOMLib.settings import Server, Settings, save_settings
from Media2DICOMLib.source_study import SourceSeries, read_source_series

MOVE_AET = "M2DTEST"


@pytest.fixture
def ct_folder(shared_data) -> Path:
    return shared_data / "ct-3slice"


@pytest.fixture
def local_source(ct_folder) -> SourceSeries:
    return read_source_series(ct_folder)


@pytest.fixture
def pacs(tmp_path_factory, ct_folder):
    """Orthanc holding the CT, with this test's storage SCP as move destination."""
    if not peers.orthanc_available():
        pytest.skip("Orthanc is not installed (Debian package orthanc)")
    move_port = peers.free_port()
    orthanc = peers.start_orthanc(
        tmp_path_factory.mktemp("orthanc"),
        modalities={"M2D": [MOVE_AET, "127.0.0.1", move_port]},
        extra_config={"DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True},
    )
    for path in sorted(ct_folder.glob("*.dcm")):
        orthanc.upload(path)
    orthanc.move_port = move_port
    orthanc.server = Server(
        name="orthanc", host="127.0.0.1", port=orthanc.dicom_port, called_aet="ORTHANC"
    )
    yield orthanc
    orthanc.stop()


def test_find_study_by_patient_id(pacs, local_source):
    """A study-level C-FIND by Patient ID returns the CT study."""
    rows = find(pacs.server, "STUDY", MOVE_AET, patient_id="99000")
    header = local_source.header
    assert len(rows) == 1
    assert rows[0].level == "STUDY"
    assert rows[0].value("StudyInstanceUID") == header.StudyInstanceUID
    assert rows[0].value("PatientID") == "99000"
    assert rows[0].value("PatientName") == str(header.PatientName)
    assert rows[0].value("StudyDate") == header.StudyDate
    assert rows[0].value("AccessionNumber") == header.AccessionNumber
    assert rows[0].value("ModalitiesInStudy") == "CT"
    assert header.StudyInstanceUID in rows[0].describe()


@pytest.mark.parametrize(
    "filters, expected",
    [
        ({"patient_name": "JANCT*"}, 1),
        ({"patient_name": "NOBODY*"}, 0),
        ({"study_date": "20030101-20031231"}, 1),
        ({"study_date": "20030418-"}, 0),
        ({"study_date": "-20030417"}, 1),
        ({"modality": "CT"}, 1),
        ({"modality": "MR"}, 0),
        ({"accession_number": "03086212"}, 1),
        ({"accession_number": "1"}, 0),
    ],
)
def test_find_study_filters(pacs, filters, expected):
    """Study-level filters match or exclude the CT study."""
    rows = find(pacs.server, "STUDY", MOVE_AET, **filters)
    assert len(rows) == expected


def test_find_patient_level(pacs):
    """A patient-level C-FIND uses Patient Root and returns the patient."""
    rows = find(pacs.server, "PATIENT", MOVE_AET, patient_id="99000")
    assert len(rows) == 1
    assert rows[0].value("PatientID") == "99000"


def test_find_series_and_images(pacs, local_source):
    """Series and image levels list the CT series and its three instances."""
    study_uid = local_source.study_instance_uid
    series = find(pacs.server, "SERIES", MOVE_AET, study_instance_uid=study_uid)
    assert len(series) == 1
    assert series[0].value("SeriesInstanceUID") == local_source.series_instance_uid
    assert series[0].value("Modality") == "CT"
    assert series[0].value("NumberOfSeriesRelatedInstances") == "3"

    instances = find_instances(
        pacs.server, study_uid, local_source.series_instance_uid, MOVE_AET
    )
    assert [i.sop_instance_uid for i in instances] == [
        i.sop_instance_uid for i in local_source.instances
    ]
    assert [i.sop_class_uid for i in instances] == [
        i.sop_class_uid for i in local_source.instances
    ]


def test_query_logs_no_patient_data(pacs, local_source, caplog):
    """INFO logs of a C-FIND and a C-GET contain no patient name or ID."""
    with caplog.at_level(logging.INFO):
        find(pacs.server, "STUDY", MOVE_AET, patient_id="99000")
        retrieve_source_series(
            pacs.server,
            local_source.study_instance_uid,
            local_source.series_instance_uid,
            calling_aet=MOVE_AET,
        )
    assert "C-FIND STUDY level" in caplog.text
    assert "99000" not in caplog.text
    assert str(local_source.header.PatientName) not in caplog.text


def test_requested_instance_check(local_source):
    """The retrieval SCP keeps only the requested instance of the requested study."""
    server = Server(name="pacs", host="127.0.0.1", port=104, called_aet="PACS")
    requested = _RequestedInstance(
        server,
        local_source.study_instance_uid,
        local_source.series_instance_uid,
        local_source.instances[0],
    )
    header = copy.deepcopy(local_source.header)
    header.SOPInstanceUID = local_source.instances[0].sop_instance_uid
    assert requested.check(header) is None
    other_study = copy.deepcopy(header)
    other_study.StudyInstanceUID = new_uid()
    assert requested.check(other_study) == "it belongs to another study"
    other_instance = copy.deepcopy(header)
    other_instance.SOPInstanceUID = local_source.instances[1].sop_instance_uid
    assert requested.check(other_instance) == "it is not the requested instance"


def test_series_query_needs_study_uid():
    """A series-level query without a Study Instance UID is rejected."""
    with pytest.raises(NetworkError, match="needs the Study Instance UID"):
        build_identifier("SERIES")
    with pytest.raises(NetworkError, match="needs the Series Instance UID"):
        build_identifier("IMAGE", study_instance_uid="1.2.3")
    with pytest.raises(NetworkError, match="Unknown query level"):
        build_identifier("FRAME")


def test_identifier_utf8_for_non_ascii():
    """A non-ASCII filter makes the identifier declare ISO_IR 192."""
    identifier = build_identifier("STUDY", patient_name="Müller*")
    assert identifier.SpecificCharacterSet == "ISO_IR 192"
    assert (
        build_identifier("STUDY", patient_name="MULLER*").get("SpecificCharacterSet")
        is None
    )


@pytest.mark.parametrize(
    "character_set, name, pattern, answer_encoding",
    [
        ("ISO_IR 100", "Müller^Jürgen", "Müller*", "Latin1"),
        ("ISO_IR 100", "Müller^Jürgen", "Müller*", "Utf8"),
        ("ISO_IR 192", "Müller^Jürgen", "Mül*", "Latin1"),
        ("ISO_IR 192", "Ωμέγα^Άλφα", "Ωμέγα*", "Utf8"),
        ("ISO_IR 192", "Žáček^Jiří", "Žáč*", "Utf8"),
    ],
)
def test_find_non_ascii_names(
    pacs, local_source, tmp_path, character_set, name, pattern, answer_encoding
):
    """Patient names outside ASCII are found and decoded under both character sets.

    Orthanc 1.10 encodes C-FIND responses in its configured default encoding,
    so names it cannot represent there (Greek in Latin-1) need a UTF-8 setting.
    """
    request = urllib.request.Request(
        pacs.http_url + "/tools/default-encoding",
        data=answer_encoding.encode(),
        method="PUT",
    )
    urllib.request.urlopen(request, timeout=30).close()

    header = copy.deepcopy(local_source.header)
    header.SpecificCharacterSet = character_set
    header.PatientName = name
    header.PatientID = "NONASCII1"
    header.StudyInstanceUID = new_uid()
    header.SeriesInstanceUID = new_uid()
    source = SourceSeries(header, local_source.instances)
    path = write_encapsulated_pdf(source, tmp_path / "document.dcm", 1000)
    assert_dciodvfy_clean(path)
    written = pydicom.dcmread(path)
    assert written.SpecificCharacterSet == character_set
    assert str(written.PatientName) == name
    pacs.upload(path)

    rows = find(pacs.server, "STUDY", MOVE_AET, patient_name=pattern)
    assert len(rows) == 1
    assert rows[0].value("PatientName") == name
    assert rows[0].value("PatientID") == "NONASCII1"
    assert rows[0].value("StudyInstanceUID") == header.StudyInstanceUID


@pytest.mark.parametrize("method", ["get", "move"])
def test_retrieve_matches_local_source(pacs, local_source, method):
    """C-GET and C-MOVE give the source series that the local files give."""
    retrieved = retrieve_source_series(
        pacs.server,
        local_source.study_instance_uid,
        local_source.series_instance_uid,
        method=method,
        calling_aet=MOVE_AET,
        move_port=pacs.move_port,
        bind_address="127.0.0.1",
    )
    assert "PixelData" not in retrieved.header
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "SeriesInstanceUID",
        "Modality",
        "FrameOfReferenceUID",
    ):
        assert retrieved.header.get(keyword) == local_source.header.get(
            keyword
        ), keyword
    assert retrieved.modality == "CT"
    assert retrieved.frame_of_reference_uid == local_source.frame_of_reference_uid
    assert [i.sop_instance_uid for i in retrieved.instances] == [
        i.sop_instance_uid for i in local_source.instances
    ]
    assert all(i.path is None for i in retrieved.instances)
    assert retrieved.patient_study_dataset() == local_source.patient_study_dataset()


def test_move_unknown_destination_explained(pacs, local_source):
    """C-MOVE to an AE title the server does not know says how to fix it."""
    with pytest.raises(NetworkError) as error:
        retrieve_source_series(
            pacs.server,
            local_source.study_instance_uid,
            local_source.series_instance_uid,
            method="move",
            calling_aet="STRANGER",
            move_port=peers.free_port(),
            bind_address="127.0.0.1",
        )
    text = str(error.value)
    assert "C-MOVE" in text
    assert f"ORTHANC at 127.0.0.1:{pacs.dicom_port}" in text
    assert "STRANGER" in text


def test_retrieve_unknown_series_fails(pacs, local_source):
    """Retrieving a series the server does not have names the UIDs."""
    with pytest.raises(NetworkError, match="has no instances"):
        retrieve_source_series(
            pacs.server,
            local_source.study_instance_uid,
            "1.2.3.4.5",
            calling_aet=MOVE_AET,
        )


def test_cli_query_and_retrieve(pacs, local_source, tmp_path, monkeypatch, capsys):
    """'query' lists the study and 'retrieve' summarizes the source series."""
    settings_path = tmp_path / "settings.json"
    monkeypatch.setenv("MEDIA2DICOM_SETTINGS", str(settings_path))
    settings = Settings(
        ae_title=MOVE_AET, port=pacs.move_port, cache_directory=str(tmp_path / "c")
    )
    settings.add_server(pacs.server)
    save_settings(settings, settings_path)

    assert main(["query", "--server", "orthanc", "--patient-id", "99000"]) == EXIT_OK
    output = capsys.readouterr().out
    assert local_source.study_instance_uid in output
    assert "1 match(es)" in output

    header_folder = tmp_path / "header"
    code = main(
        [
            "retrieve",
            "--server",
            "orthanc",
            "--study-uid",
            local_source.study_instance_uid,
            "--series-uid",
            local_source.series_instance_uid,
            "--method",
            "move",
            "--bind-address",
            "127.0.0.1",
            "--save-header",
            str(header_folder),
        ]
    )
    assert code == EXIT_OK
    output = capsys.readouterr().out
    assert "3 instance(s)" in output
    assert local_source.frame_of_reference_uid in output
    saved = list(header_folder.glob("*.dcm"))
    assert len(saved) == 1
    header = pydicom.dcmread(saved[0])
    assert "PixelData" not in header
    assert header.SOPInstanceUID == local_source.instances[0].sop_instance_uid


def binary_stl_triangles(data: bytes) -> np.ndarray:
    """Decode binary STL bytes into an (n, 3, 3) array of vertices."""
    count = int(np.frombuffer(data, dtype="<u4", count=1, offset=80)[0])
    record = np.dtype(
        [("normal", "<f4", (3,)), ("vertices", "<f4", (3, 3)), ("attribute", "<u2")]
    )
    assert len(data) == 84 + record.itemsize * count
    return np.frombuffer(data, dtype=record, count=count, offset=84)["vertices"]


@pytest.mark.parametrize("method", ["move", "get"])
def test_model_from_pacs_source(pacs, shared_data, tmp_path, method):
    """A model encapsulated against a PACS-only source returns to its study."""
    encapsulated_stl = pytest.importorskip("Media2DICOMLib.encapsulated_stl")
    stl = pytest.importorskip("Media2DICOMLib.stl")

    rows = find(pacs.server, "STUDY", MOVE_AET, patient_id="99000")
    assert len(rows) == 1
    study_uid = rows[0].value("StudyInstanceUID")
    series = find(pacs.server, "SERIES", MOVE_AET, study_instance_uid=study_uid)
    ct_series = [row for row in series if row.value("Modality") == "CT"]
    assert len(ct_series) == 1
    source = retrieve_source_series(
        pacs.server,
        study_uid,
        ct_series[0].value("SeriesInstanceUID"),
        method=method,
        calling_aet=MOVE_AET,
        move_port=pacs.move_port,
        bind_address="127.0.0.1",
    )

    stl_path = shared_data / "models" / "liver.stl"
    output = tmp_path / "liver.dcm"
    encapsulated_stl.write_encapsulated_stl(
        source,
        stl.open_stl(stl_path),
        output,
        SeriesInfo(series_number=910, series_description="Models"),
        document_title="liver",
    )
    assert_dciodvfy_clean(output)
    written = pydicom.dcmread(output)
    assert written.StudyInstanceUID == study_uid
    assert written.Modality == "M3D"
    assert written.FrameOfReferenceUID == source.frame_of_reference_uid
    assert [
        item.ReferencedSOPInstanceUID for item in written.SourceInstanceSequence
    ] == [i.sop_instance_uid for i in source.instances]

    results = send_files(pacs.server, [output], calling_aet=MOVE_AET)
    assert results[0].category == "success"
    assert results[0].transfer_syntax_used == pydicom.uid.ExplicitVRLittleEndian

    found = pacs.find_instances(str(written.SOPInstanceUID))
    assert len(found) == 1
    instance_id = found[0]["ID"]
    tags = pacs.get_json(f"/instances/{instance_id}/simplified-tags")
    assert tags["StudyInstanceUID"] == study_uid
    assert tags["Modality"] == "M3D"
    assert tags["PatientID"] == "99000"
    stored = pydicom.dcmread(
        io.BytesIO(pacs.get_bytes(f"/instances/{instance_id}/file"))
    )
    document = stored.EncapsulatedDocument[: int(stored.EncapsulatedDocumentLength)]
    expected = stl.open_stl(stl_path).triangles()
    np.testing.assert_array_equal(binary_stl_triangles(document), expected)
    assert len(expected) == 152_668

    ct_files = sorted((shared_data / "ct-3slice").glob("*.dcm"))
    report = run_dcentvfy([*ct_files, output])
    assert "Error" not in report, report
