"""Odd and broken source studies: old encodings, missing parts, mixed folders.

Each source either gives a SourceSeries whose patient and study reach a valid
Encapsulated STL object, or raises SourceStudyError that names the path. The
odd files are made here from pydicom's bundled CT_small.dcm, or are files that
both pydicom 2.4 and 3.0 bundle.

Set MEDIA2DICOM_HYPOTHESIS_EXAMPLES for a longer property-based run.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import time
import tracemalloc
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from Media2DICOMLib.encapsulated_stl import write_encapsulated_stl
from Media2DICOMLib.errors import SourceStudyError
from Media2DICOMLib.new_series import SeriesInfo
from Media2DICOMLib.source_study import read_source_series
from Media2DICOMLib.stl import open_stl

from dicom_checks import assert_dciodvfy_clean

PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])

# Far above the few milliseconds one example takes: only a hang reaches it.
MAX_SECONDS_PER_EXAMPLE = 30.0
# CT_small.dcm is 39 kB, so a reader that allocates more than this for it
# follows a forged length instead of the file size.
MAX_BYTES_PER_EXAMPLE = 32 << 20

TETRAHEDRON_STL = (
    b"hostile source test".ljust(80, b"\x00")
    + struct.pack("<I", 1)
    + struct.pack("<12fH", 0, 0, 1, 0, 0, 0, 10, 0, 0, 0, 10, 0, 0)
)


def examples(default: int) -> int:
    """Return ``default``, or the count in MEDIA2DICOM_HYPOTHESIS_EXAMPLES when set."""
    requested = os.environ.get("MEDIA2DICOM_HYPOTHESIS_EXAMPLES")
    return int(requested) if requested else default


def ct_small() -> Path:
    return Path(get_testdata_file("CT_small.dcm"))


def ct_dataset() -> Dataset:
    return pydicom.dcmread(ct_small())


def save(dataset: Dataset, path: Path, transfer_syntax=ExplicitVRLittleEndian):
    """Write ``dataset`` as a DICOM file in ``transfer_syntax`` with pydicom 2 or 3."""
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    if PYDICOM_MAJOR < 3:
        dataset.is_little_endian = True
        dataset.is_implicit_VR = transfer_syntax == ImplicitVRLittleEndian
    dataset.save_as(path)
    return path


def raw_dataset_bytes(dataset: Dataset) -> bytes:
    """Return ``dataset`` as Implicit VR Little Endian with no preamble or meta."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = True
    if PYDICOM_MAJOR < 3:
        dataset.is_little_endian = True
        dataset.is_implicit_VR = True
    write_dataset(buffer, dataset)
    return buffer.getvalue()


# Builders: each writes one source folder and returns the path to read.


def no_preamble_with_prefix(folder: Path) -> Path:
    (folder / "ct.dcm").write_bytes(ct_small().read_bytes()[128:])
    return folder


def no_preamble_no_prefix(folder: Path) -> Path:
    (folder / "ct.dcm").write_bytes(ct_small().read_bytes()[132:])
    return folder


def no_file_meta_implicit(folder: Path) -> Path:
    (folder / "ct.raw").write_bytes(raw_dataset_bytes(ct_dataset()))
    return folder


def bundled_copy(name: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        shutil.copy(get_testdata_file(name), folder / name)
        return folder

    return build


def implicit_private_sequences(folder: Path) -> Path:
    dataset = ct_dataset()
    block = dataset.private_block(0x0029, "HOSTILE VENDOR 1", create=True)
    inner = Dataset()
    inner.add_new(0x00291010, "LO", "inner item")
    item = Dataset()
    item.add_new(0x00291010, "LO", "outer item")
    item.add_new(0x00291011, "SQ", DicomSequence([inner]))
    block.add_new(0x12, "SQ", DicomSequence([item, Dataset()]))
    save(dataset, folder / "ct.dcm", ImplicitVRLittleEndian)
    return folder


def with_name(charset: str, name: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        dataset = ct_dataset()
        dataset.SpecificCharacterSet = charset
        dataset.PatientName = name
        dataset.StudyDescription = name.split("^")[0]
        save(dataset, folder / "ct.dcm")
        return folder

    return build


def invalid_character_set(folder: Path) -> Path:
    dataset = ct_dataset()
    dataset.SpecificCharacterSet = "ISO_IR 999"
    dataset.PatientName = "Mxller^Anna"
    path = save(dataset, folder / "ct.dcm")
    # The Latin-1 byte goes in after writing, because pydicom cannot encode
    # text in an unknown character set.
    path.write_bytes(path.read_bytes().replace(b"Mxller", b"M\xfcller"))
    return folder


def invalid_optional_value(folder: Path) -> Path:
    dataset = ct_dataset()
    dataset.PatientWeight = "70"
    path = save(dataset, folder / "ct.dcm")
    # A decimal comma, as some old consoles write it, is not a valid DS.
    path.write_bytes(path.read_bytes().replace(b"DS\x02\x0070", b"DS\x04\x0070,5"))
    return folder


def no_frame_of_reference(folder: Path) -> Path:
    dataset = ct_dataset()
    del dataset.FrameOfReferenceUID
    save(dataset, folder / "ct.dcm")
    return folder


def mixed_series(folder: Path) -> Path:
    shutil.copy(ct_small(), folder / "first.dcm")
    dataset = ct_dataset()
    dataset.SeriesInstanceUID = OTHER_SERIES_UID
    dataset.SOPInstanceUID = generate_uid()
    dataset.SeriesDescription = "second series"
    save(dataset, folder / "second.dcm")
    return folder


def junk_beside_dicom(folder: Path) -> Path:
    shutil.copy(ct_small(), folder / "ct.dcm")
    (folder / "thumbnail.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "DICOMDIR.txt").write_text("not a DICOM file\n")
    (folder / "prefix-only.dcm").write_bytes(bytes(128) + b"DICM")
    (folder / "cut.dcm").write_bytes(ct_small().read_bytes()[:300])
    (folder / "sub").mkdir()
    (folder / "sub" / "notes.xml").write_text("<notes/>")
    return folder


def only_junk(folder: Path) -> Path:
    (folder / "thumbnail.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    (folder / "readme.txt").write_text("no images here\n")
    return folder


def empty_folder(folder: Path) -> Path:
    return folder


OTHER_SERIES_UID = "1.2.826.0.1.3680043.8.498.777.1"


@dataclass
class SourceCase:
    """One source and what read_source_series must do with it.

    ``errors`` lists texts of the expected SourceStudyError. When it is empty
    the source must read. ``write`` is False when the source's own attributes
    would make any written object fail dciodvfy.
    """

    build: Callable[[Path], Path]
    errors: tuple = ()
    patient_name: Optional[str] = None
    write: bool = True
    frame_of_reference_kept: bool = True
    series_instance_uid: Optional[str] = None
    log_texts: tuple = ()


SOURCE_CASES = {
    "no preamble, DICM prefix": SourceCase(
        no_preamble_with_prefix, patient_name="CompressedSamples^CT1"
    ),
    "no preamble, no prefix": SourceCase(
        no_preamble_no_prefix, patient_name="CompressedSamples^CT1"
    ),
    "no file meta, implicit VR": SourceCase(
        no_file_meta_implicit, patient_name="CompressedSamples^CT1"
    ),
    # pydicom's files without meta reuse one UID for the study and the Frame
    # of Reference, which dciodvfy reports, so nothing is written from them.
    "no file meta, explicit VR little endian": SourceCase(
        bundled_copy("ExplVR_LitEndNoMeta.dcm"), write=False
    ),
    "no file meta, explicit VR big endian": SourceCase(
        bundled_copy("ExplVR_BigEndNoMeta.dcm"), write=False
    ),
    "implicit VR with private sequences": SourceCase(
        implicit_private_sequences, patient_name="CompressedSamples^CT1"
    ),
    "implicit VR bundled": SourceCase(
        bundled_copy("MR_small_implicit.dcm"), patient_name="CompressedSamples^MR1"
    ),
    "big endian": SourceCase(
        bundled_copy("MR_small_bigendian.dcm"), patient_name="CompressedSamples^MR1"
    ),
    "UTF-8 names": SourceCase(
        with_name("ISO_IR 192", "\u00d8vrebø^\u00c5se=\u5c71\u7530^\u592a\u90ce"),
        patient_name="\u00d8vrebø^\u00c5se=\u5c71\u7530^\u592a\u90ce",
    ),
    "Latin-1 names": SourceCase(
        with_name("ISO_IR 100", "M\u00fcller^J\u00fcrgen"),
        patient_name="M\u00fcller^J\u00fcrgen",
    ),
    "invalid Specific Character Set": SourceCase(
        invalid_character_set,
        patient_name="M\u00fcller^Anna",
        log_texts=("unknown Specific Character Set ISO_IR 999",),
    ),
    "invalid optional value": SourceCase(
        invalid_optional_value,
        patient_name="CompressedSamples^CT1",
        log_texts=("invalid PatientWeight value", "leave it out"),
    ),
    "missing Frame of Reference": SourceCase(
        no_frame_of_reference,
        patient_name="CompressedSamples^CT1",
        frame_of_reference_kept=False,
    ),
    "several series mixed": SourceCase(
        mixed_series,
        errors=("hold 2 series", OTHER_SERIES_UID, "second series"),
    ),
    "several series, one chosen": SourceCase(
        mixed_series,
        patient_name="CompressedSamples^CT1",
        series_instance_uid=OTHER_SERIES_UID,
    ),
    "non-DICOM files in folder": SourceCase(
        junk_beside_dicom,
        patient_name="CompressedSamples^CT1",
        log_texts=("Skipped 6 file(s)",),
    ),
    "only non-DICOM files": SourceCase(
        only_junk, errors=("None of the 2 source file(s) is a DICOM instance",)
    ),
    "empty folder": SourceCase(empty_folder, errors=("No files found",)),
}


@pytest.fixture(scope="module")
def tetrahedron(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stl") / "tetrahedron.stl"
    path.write_bytes(TETRAHEDRON_STL)
    return path


@pytest.mark.parametrize("name", sorted(SOURCE_CASES))
def test_source_table_case(tmp_path, tetrahedron, caplog, name):
    """Each odd source reads into a valid object or raises a clear error."""
    case = SOURCE_CASES[name]
    folder = tmp_path / "source"
    folder.mkdir()
    source_path = case.build(folder)
    caplog.set_level(logging.INFO, logger="Media2DICOMLib")

    if case.errors:
        with pytest.raises(SourceStudyError) as raised:
            read_source_series(source_path, case.series_instance_uid)
        message = str(raised.value)
        assert str(source_path) in message or "series" in message
        for text in case.errors:
            assert text in message
        return

    with warnings.catch_warnings():
        # pydicom warns about the odd encodings the cases contain on purpose.
        warnings.simplefilter("ignore")
        source = read_source_series(source_path, case.series_instance_uid)
        patient_study = source.patient_study_dataset()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for text in case.log_texts:
        assert text in logged
    assert source.instances
    assert source.study_instance_uid
    assert source.series_instance_uid
    if case.series_instance_uid:
        assert source.series_instance_uid == case.series_instance_uid
    if case.patient_name is not None:
        assert str(patient_study.PatientName) == case.patient_name
    for keyword in ("PatientName", "PatientID", "StudyDate", "AccessionNumber"):
        assert keyword in patient_study
    if not case.write:
        return

    output = tmp_path / "model.dcm"
    series = SeriesInfo(series_number=902, series_description="Hostile source")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_encapsulated_stl(source, open_stl(tetrahedron), output, series)
    assert_dciodvfy_clean(output)

    written = pydicom.dcmread(output)
    assert written.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert written.StudyInstanceUID == source.study_instance_uid
    assert written.PatientID == patient_study.PatientID
    assert written.SeriesInstanceUID != source.series_instance_uid
    assert written.Modality == "M3D"
    if case.patient_name is not None:
        assert str(written.PatientName) == case.patient_name
    if case.frame_of_reference_kept:
        assert written.FrameOfReferenceUID == source.frame_of_reference_uid
    else:
        assert source.frame_of_reference_uid is None
        assert written.FrameOfReferenceUID
    references = written.SourceInstanceSequence
    assert len(references) == len(source.instances)
    assert references[0].ReferencedSOPInstanceUID == (
        source.instances[0].sop_instance_uid
    )


def test_missing_source_path_named(tmp_path):
    """A path that does not exist raises and names the path."""
    missing = tmp_path / "nowhere"

    with pytest.raises(SourceStudyError) as raised:
        read_source_series(missing)
    assert str(missing) in str(raised.value)
    assert "does not exist" in str(raised.value)


def test_unreadable_file_skipped(tmp_path):
    """A file that cannot be opened is skipped like any non-DICOM file."""
    shutil.copy(ct_small(), tmp_path / "ct.dcm")
    (tmp_path / "loop.dcm").symlink_to(tmp_path / "loop.dcm")

    source = read_source_series(tmp_path)

    assert len(source.instances) == 1


# Property-based: damaged files give a SourceSeries or SourceStudyError

CT_BYTES = ct_small().read_bytes()
# The header of CT_small.dcm ends where its Pixel Data starts.
HEADER_BYTES = CT_BYTES.index(b"\xe0\x7f\x10\x00")


def read_within_bounds(folder: Path):
    """Read ``folder`` as a source; return it, or None on SourceStudyError.

    Any other exception fails the test.
    So do more than MAX_SECONDS_PER_EXAMPLE seconds or MAX_BYTES_PER_EXAMPLE
    bytes allocated.
    """
    started = time.monotonic()
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                source = read_source_series(folder)
                source.patient_study_dataset()
                _ = (source.modality, source.frame_of_reference_uid)
                _ = (source.body_part_examined, source.position_reference_indicator)
            except SourceStudyError as error:
                assert str(error)
                source = None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - started

    assert elapsed < MAX_SECONDS_PER_EXAMPLE, f"reading took {elapsed:.1f} s"
    assert peak < MAX_BYTES_PER_EXAMPLE, f"peak allocation {peak} bytes"
    return source


@settings(
    max_examples=examples(300),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    cut=st.integers(0, len(CT_BYTES)),
    flips=st.lists(st.integers(0, 8 * HEADER_BYTES - 1), max_size=8),
)
def test_damaged_file_series_or_error(tmp_path, cut, flips):
    """A truncated or bit-flipped CT file reads or raises SourceStudyError."""
    data = bytearray(CT_BYTES)
    for bit in flips:
        data[bit // 8] ^= 1 << (bit % 8)
    folder = tmp_path / "damaged"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / "ct.dcm").write_bytes(bytes(data[:cut]))

    read_within_bounds(folder)


@settings(
    max_examples=examples(150),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    junk=st.binary(max_size=600),
    prefix=st.sampled_from([b"", bytes(128) + b"DICM", b"DICM", CT_BYTES[:400]]),
)
def test_junk_beside_series_ignored(tmp_path, junk, prefix):
    """Random bytes beside a valid file never hide or break the valid series."""
    folder = tmp_path / "mixed"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    shutil.copy(ct_small(), folder / "ct.dcm")
    (folder / "junk.dcm").write_bytes(prefix + junk)

    source = read_within_bounds(folder)

    assert source is not None
    assert source.series_instance_uid == ct_dataset().SeriesInstanceUID
    assert len(source.instances) == 1
