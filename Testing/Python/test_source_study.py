"""Reading the source series from files and folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from Media2DICOMLib.errors import SourceStudyError
from Media2DICOMLib.source_study import read_source_series


def bundled_file(name: str) -> Path:
    """Return one of the files bundled with pydicom 2.4 and 3.0 alike."""
    return Path(get_testdata_file(name))


def test_single_file_source(ct_small):
    source = read_source_series(ct_small)

    header = pydicom.dcmread(ct_small, stop_before_pixels=True)
    assert source.series_instance_uid == header.SeriesInstanceUID
    assert source.study_instance_uid == header.StudyInstanceUID
    assert source.modality == "CT"
    assert source.frame_of_reference_uid == header.FrameOfReferenceUID
    assert len(source.instances) == 1
    assert source.instances[0].sop_instance_uid == header.SOPInstanceUID
    assert "PixelData" not in source.header


def test_real_ct_folder(shared_data):
    source = read_source_series(shared_data / "ct-3slice")

    assert source.modality == "CT"
    assert len(source.instances) == 3
    assert [i.path.name for i in source.instances] == ["01.dcm", "02.dcm", "03.dcm"]
    assert source.frame_of_reference_uid
    assert source.body_part_examined is None


def test_folder_recursive_with_junk(tmp_path, ct_small):
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    shutil.copy(ct_small, nested / "ct.dcm")
    (tmp_path / "notes.txt").write_text("not DICOM")
    (tmp_path / "a" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))

    source = read_source_series(tmp_path)

    assert source.modality == "CT"
    assert len(source.instances) == 1


def test_several_series_listed(tmp_path, ct_small):
    shutil.copy(ct_small, tmp_path / "ct.dcm")
    shutil.copy(bundled_file("MR_small.dcm"), tmp_path / "mr.dcm")

    with pytest.raises(SourceStudyError) as raised:
        read_source_series(tmp_path)

    message = str(raised.value)
    ct_uid = pydicom.dcmread(ct_small, stop_before_pixels=True).SeriesInstanceUID
    assert "2 series" in message
    assert ct_uid in message
    assert " CT " in message
    assert " MR " in message
    assert "1 instance(s)" in message


def test_series_chosen_by_uid(tmp_path, ct_small):
    shutil.copy(ct_small, tmp_path / "ct.dcm")
    shutil.copy(bundled_file("MR_small.dcm"), tmp_path / "mr.dcm")
    mr_uid = pydicom.dcmread(bundled_file("MR_small.dcm")).SeriesInstanceUID

    source = read_source_series(tmp_path, series_instance_uid=mr_uid)

    assert source.modality == "MR"


def test_unknown_series_uid(ct_small):
    with pytest.raises(SourceStudyError, match="1.2.3.4.5 is not among"):
        read_source_series(ct_small, series_instance_uid="1.2.3.4.5")


@pytest.mark.parametrize(
    "name",
    [
        "ExplVR_BigEnd.dcm",
        "ExplVR_BigEndNoMeta.dcm",
        "ExplVR_LitEndNoMeta.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "JPEG2000.dcm",
        "MR_small_RLE.dcm",
    ],
)
def test_any_encoding_read(name):
    """Headers are read from any transfer syntax, with or without meta."""
    source = read_source_series(bundled_file(name))

    assert source.series_instance_uid
    assert source.study_instance_uid
    assert "PixelData" not in source.header


def test_not_dicom_file(tmp_path):
    junk = tmp_path / "scan.jpg"
    junk.write_bytes(b"\xff\xd8\xff\xe0" + bytes(500))

    with pytest.raises(SourceStudyError, match="scan.jpg"):
        read_source_series(junk)


def test_empty_folder(tmp_path):
    with pytest.raises(SourceStudyError, match="No files found"):
        read_source_series(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(SourceStudyError, match="does not exist"):
        read_source_series(tmp_path / "nowhere")


def test_type2_attributes_present(tmp_path, ct_small):
    dataset = pydicom.dcmread(ct_small)
    for keyword in ("AccessionNumber", "ReferringPhysicianName", "StudyID"):
        if keyword in dataset:
            delattr(dataset, keyword)
    path = tmp_path / "bare.dcm"
    dataset.save_as(path)

    attributes = read_source_series(path).patient_study_dataset()

    assert attributes.AccessionNumber == ""
    assert attributes.ReferringPhysicianName == ""
    assert attributes.StudyID == ""
    assert attributes.StudyDate == dataset.StudyDate


def test_utf8_name_decoded(tmp_path, ct_small):
    dataset = pydicom.dcmread(ct_small)
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.PatientName = "Ødegård^Åse=山田^太郎"
    path = tmp_path / "utf8.dcm"
    dataset.save_as(path)

    source = read_source_series(path)

    assert str(source.patient_study_dataset().PatientName) == "Ødegård^Åse=山田^太郎"
