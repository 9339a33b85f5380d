"""Multi-frame Secondary Capture objects: attributes, pixels, validators, Orthanc."""

from __future__ import annotations

import io
import logging
import shutil
import struct
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from Media2DICOMLib import cli
from Media2DICOMLib import secondary_capture
from Media2DICOMLib.errors import ImageInputError, ObjectTooLargeError
from Media2DICOMLib.images import load_image
from Media2DICOMLib.jpeg import (
    ExplicitVRLittleEndian,
    FrameEncoder,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    frame_process_marker,
)
from Media2DICOMLib.new_series import SeriesInfo
from Media2DICOMLib.progress import Cancelled
from Media2DICOMLib.secondary_capture import (
    MULTIFRAME_GRAYSCALE_BYTE_SC,
    MULTIFRAME_TRUE_COLOR_SC,
    decompress_to_explicit_little,
    write_secondary_capture,
    write_stills,
)
from Media2DICOMLib.source_study import read_source_series

from dicom_checks import assert_dciodvfy_clean, run_dcentvfy

ALL_SYNTAXES = [
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    ExplicitVRLittleEndian,
]
LOSSY_SYNTAXES = {JPEGBaseline8Bit, JPEGExtended12Bit}
# The SOFn marker each JPEG transfer syntax must carry.
FRAME_MARKERS = {
    JPEGBaseline8Bit: 0xC0,
    JPEGExtended12Bit: 0xC1,
    JPEGLossless: 0xC3,
    JPEGLosslessSV1: 0xC3,
}
DCMDJPEG = "/usr/bin/dcmdjpeg"
PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])
MIN_PSNR_DB = 40.0


def psnr(decoded: np.ndarray, original: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of 8-bit pixels."""
    error = np.mean((decoded.astype(np.float64) - original.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else 10 * np.log10(255.0**2 / error)


def rgb_pixels(dataset) -> np.ndarray:
    """Decode Pixel Data to RGB (or grey) with pydicom 2 or 3.

    pydicom 3 converts YBR_FULL_422 to RGB while decoding, pydicom 2 does not.
    """
    pixels = dataset.pixel_array
    photometric = str(dataset.PhotometricInterpretation)
    if PYDICOM_MAJOR < 3 and photometric.startswith("YBR"):
        from pydicom.pixel_data_handlers.util import convert_color_space

        pixels = convert_color_space(pixels, photometric, "RGB", per_frame=True)
    return pixels


def dcmdjpeg_pixels(path: Path, work: Path) -> np.ndarray:
    """Decode ``path`` with DCMTK's dcmdjpeg and return the pixels pydicom reads."""
    if not shutil.which(DCMDJPEG):
        pytest.fail("dcmdjpeg is missing: install the Debian package dcmtk")
    target = work / (path.stem + ".dcmdjpeg.dcm")
    result = subprocess.run(
        [DCMDJPEG, str(path), str(target)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    decoded = pydicom.dcmread(target)
    assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    return decoded.pixel_array


def encapsulated_items(dataset) -> list:
    """Split encapsulated Pixel Data into its items, the Basic Offset Table first."""
    data = bytes(dataset.PixelData)
    items, position = [], 0
    while position < len(data):
        group, element, length = struct.unpack_from("<HHI", data, position)
        position += 8
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        assert (group, element) == (0xFFFE, 0xE000)
        items.append(data[position : position + length])
        position += length
    return items


def values_of(dataset, keyword: str) -> list:
    """Return the values of a multi-valued attribute as a list, empty when absent."""
    value = dataset.get(keyword)
    if value is None:
        return []
    if isinstance(value, (str, bytes, int, float)):
        return [value]
    return list(value)


def orthanc_study_of(orthanc, instance_id: str) -> str:
    series_id = orthanc.get_json(f"/instances/{instance_id}")["ParentSeries"]
    return orthanc.get_json(f"/series/{series_id}")["ParentStudy"]


def assert_orthanc_preview(orthanc, path: Path, columns: int, rows: int) -> str:
    """Store ``path`` in Orthanc and check that frame 0 renders at full size."""
    stored = orthanc.upload(path)
    assert stored["Status"] in ("Success", "AlreadyStored")
    preview = orthanc.get_bytes(f"/instances/{stored['ID']}/frames/0/preview")
    with Image.open(io.BytesIO(preview)) as image:
        assert image.size == (columns, rows)
    return stored["ID"]


def synthetic_screenshot(rows=96, columns=128, seed=0) -> np.ndarray:
    """An RGBA rendering: smooth gradients, a shape and a transparent corner."""
    y, x = np.mgrid[0:rows, 0:columns]
    rgba = np.empty((rows, columns, 4), dtype=np.uint8)
    rgba[..., 0] = (x * 255 // max(columns - 1, 1)).astype(np.uint8)
    rgba[..., 1] = (y * 255 // max(rows - 1, 1)).astype(np.uint8)
    rgba[..., 2] = ((x + y + seed * 7) % 256).astype(np.uint8)
    rgba[..., 3] = 255
    inside = (x - columns / 2) ** 2 + (y - rows / 2) ** 2 < (rows / 4) ** 2
    rgba[inside, :3] = (230, 200, 180)
    rgba[:8, :8, 3] = 0
    return rgba


def check_common_attributes(dataset, source, series: SeriesInfo) -> None:
    """Assert the attributes every Secondary Capture from a source must carry."""
    assert dataset.StudyInstanceUID == source.study_instance_uid
    assert dataset.PatientID == source.header.PatientID
    assert dataset.SeriesInstanceUID == series.series_instance_uid
    assert dataset.SeriesInstanceUID != source.series_instance_uid
    assert dataset.SeriesNumber == series.series_number
    assert dataset.Modality == source.modality
    assert "FrameOfReferenceUID" not in dataset
    assert dataset.BurnedInAnnotation == "NO"
    assert dataset.BitsAllocated == 8
    assert dataset.BitsStored == 8
    assert dataset.HighBit == 7
    assert dataset.PixelRepresentation == 0
    assert dataset.ImageType == ["DERIVED", "SECONDARY"]
    assert dataset.Manufacturer == "Media2DICOM"
    assert dataset.DateOfSecondaryCapture


@pytest.mark.parametrize("transfer_syntax", ALL_SYNTAXES)
def test_screenshots_in_ct_study(tmp_path, shared_data, orthanc, transfer_syntax):
    """Both real screenshots become CT Secondary Captures in the CT's study."""
    source_files = sorted((shared_data / "ct-3slice").glob("*.dcm"))
    source = read_source_series(shared_data / "ct-3slice")
    series = SeriesInfo(series_number=905, series_description="Planning views")
    inputs = [
        shared_data / "screenshots" / "slicer-view.png",
        shared_data / "screenshots" / "workstation-view.jpg",
    ]

    written = write_stills(
        source, inputs, tmp_path / "out", series, transfer_syntax=transfer_syntax
    )

    assert len(written) == 2
    ct_ids = [orthanc.upload(path)["ID"] for path in source_files]
    ct_study = orthanc_study_of(orthanc, ct_ids[0])
    for number, (item, image_path) in enumerate(zip(written, inputs), start=1):
        expected = load_image(image_path)
        rows, columns = expected.shape[:2]
        assert item.path.is_file()
        assert item.number_of_frames == 1
        assert item.transfer_syntax_uid == transfer_syntax
        assert_dciodvfy_clean(item.path)

        dataset = pydicom.dcmread(item.path)
        check_common_attributes(dataset, source, series)
        assert dataset.file_meta.TransferSyntaxUID == transfer_syntax
        assert dataset.SOPClassUID == MULTIFRAME_TRUE_COLOR_SC
        assert dataset.SOPInstanceUID == item.sop_instance_uid
        assert dataset.Modality == "CT"
        assert dataset.PatientID == "99000"
        assert dataset.SeriesDescription == "Planning views"
        assert dataset.InstanceNumber == number
        assert dataset.ConversionType == "WSD"
        assert dataset.Rows == rows
        assert dataset.Columns == columns
        assert dataset.SamplesPerPixel == 3
        assert dataset.PlanarConfiguration == 0
        assert dataset.NumberOfFrames == 1
        assert "FrameIncrementPointer" not in dataset
        assert "FrameTime" not in dataset
        # The CT has no Body Part Examined, so Laterality is present and empty.
        assert "BodyPartExamined" not in dataset
        assert dataset.Laterality == ""
        referenced = [i.ReferencedSOPInstanceUID for i in dataset.SourceImageSequence]
        assert referenced == [i.sop_instance_uid for i in source.instances]

        lossy = transfer_syntax in LOSSY_SYNTAXES
        photometric = "YBR_FULL_422" if lossy else "RGB"
        assert dataset.PhotometricInterpretation == photometric
        methods = values_of(dataset, "LossyImageCompressionMethod")
        if image_path.suffix == ".jpg":
            assert methods[0] == "ISO_10918_1"
        if lossy:
            assert dataset.LossyImageCompression == "01"
            assert methods[-1] == "ISO_10918_1"
            ratios = values_of(dataset, "LossyImageCompressionRatio")
            assert len(ratios) == len(methods)
            assert float(ratios[-1]) > 1.0
        elif image_path.suffix == ".png":
            assert "LossyImageCompression" not in dataset
        else:
            assert dataset.LossyImageCompression == "01"
            assert len(methods) == 1

        if transfer_syntax in FRAME_MARKERS:
            fragments = encapsulated_items(dataset)
            assert len(fragments) == 2
            assert fragments[0] == b"\x00\x00\x00\x00"
            assert frame_process_marker(fragments[1]) == FRAME_MARKERS[transfer_syntax]

        decoders = {
            "pydicom": rgb_pixels(dataset),
            "dcmdjpeg": dcmdjpeg_pixels(item.path, tmp_path),
        }
        for name, pixels in decoders.items():
            assert pixels.shape == expected.shape, name
            if lossy:
                assert psnr(pixels, expected) > MIN_PSNR_DB, name
            else:
                assert np.array_equal(pixels, expected), name

        instance_id = assert_orthanc_preview(orthanc, item.path, columns, rows)
        assert orthanc_study_of(orthanc, instance_id) == ct_study
        tags = orthanc.get_json(f"/instances/{instance_id}/simplified-tags")
        assert tags["Modality"] == "CT"
        assert tags["SOPClassUID"] == MULTIFRAME_TRUE_COLOR_SC

    consistency = run_dcentvfy([*source_files, *[w.path for w in written]])
    assert "Error" not in consistency, consistency


@pytest.mark.parametrize("transfer_syntax", ALL_SYNTAXES)
def test_ct_small_source_stills(tmp_path, ct_small, orthanc, transfer_syntax):
    """A synthetic RGBA screenshot against CT_small.dcm works without shared data."""
    source = read_source_series(ct_small)
    series = SeriesInfo(series_description="Screenshots")
    screenshot = synthetic_screenshot()
    expected = load_image(screenshot)

    written = write_stills(
        source,
        [screenshot, Image.fromarray(screenshot)],
        tmp_path,
        series,
        transfer_syntax=transfer_syntax,
    )

    assert [w.path.parent for w in written] == [tmp_path, tmp_path]
    for number, item in enumerate(written, start=1):
        assert_dciodvfy_clean(item.path)
        dataset = pydicom.dcmread(item.path)
        check_common_attributes(dataset, source, series)
        assert dataset.InstanceNumber == number
        assert dataset.Modality == "CT"
        assert dataset.SeriesDescription == "Screenshots"
        assert tuple(expected[0, 0]) == (0, 0, 0)
        pixels = rgb_pixels(dataset)
        if transfer_syntax in LOSSY_SYNTAXES:
            assert psnr(pixels, expected) > MIN_PSNR_DB
        else:
            assert np.array_equal(pixels, expected)
        assert np.array_equal(
            dcmdjpeg_pixels(item.path, tmp_path).shape, expected.shape
        )
        assert_orthanc_preview(orthanc, item.path, 128, 96)


def test_cine_folder_frames_in_order(tmp_path, ct_small, orthanc):
    """Numbered PNG frames become one cine with Frame Time and ordered frames."""
    frames_dir = tmp_path / "capture"
    frames_dir.mkdir()
    for number in range(1, 13):
        frame = synthetic_screenshot(seed=number)
        frame[40:50, 40:50, :3] = number * 20
        Image.fromarray(frame).save(frames_dir / f"frame_{number}.png")
    source = read_source_series(ct_small)
    series = SeriesInfo(series_description="Cine")
    from Media2DICOMLib.images import load_frames

    item = write_secondary_capture(
        source,
        load_frames(frames_dir),
        tmp_path / "cine.dcm",
        series,
        transfer_syntax=JPEGLosslessSV1,
        frame_time_ms=1000.0 / 8,
    )

    assert item.number_of_frames == 12
    assert_dciodvfy_clean(item.path)
    dataset = pydicom.dcmread(item.path)
    check_common_attributes(dataset, source, series)
    assert dataset.NumberOfFrames == 12
    assert dataset.FrameIncrementPointer == 0x00181063
    assert float(dataset.FrameTime) == 125.0
    assert dataset.CineRate == 8
    assert dataset.RecommendedDisplayFrameRate == 8
    assert float(dataset.EffectiveDuration) == 1.5
    assert dataset.StartTrim == 1
    assert dataset.StopTrim == 12
    assert dataset.ConversionType == "WSD"

    items = encapsulated_items(dataset)
    assert len(items) == 13
    offsets = list(np.frombuffer(items[0], "<u4"))
    expected_offsets = np.cumsum([0] + [8 + len(f) for f in items[1:-1]])
    assert offsets == list(expected_offsets)
    for fragment in items[1:]:
        assert len(fragment) % 2 == 0
        assert frame_process_marker(fragment) == 0xC3

    pixels = dataset.pixel_array
    assert pixels.shape == (12, 96, 128, 3)
    markers = [int(pixels[index, 45, 45, 0]) for index in range(12)]
    assert markers == [number * 20 for number in range(1, 13)]
    assert_orthanc_preview(orthanc, item.path, 128, 96)


@pytest.mark.parametrize("transfer_syntax", ALL_SYNTAXES)
def test_grey_cine_uses_grayscale_sc(tmp_path, ct_small, transfer_syntax):
    """Grey-only frames become Multi-frame Grayscale Byte SC, MONOCHROME2."""
    source = read_source_series(ct_small)
    series = SeriesInfo()
    y, x = np.mgrid[0:60, 0:80]
    frames = [((x * 3 + y + k * 9) % 256).astype(np.uint8) for k in range(4)]

    item = write_secondary_capture(
        source,
        frames,
        tmp_path / "grey.dcm",
        series,
        transfer_syntax=transfer_syntax,
        frame_time_ms=50,
    )

    assert_dciodvfy_clean(item.path)
    dataset = pydicom.dcmread(item.path)
    check_common_attributes(dataset, source, series)
    assert dataset.SOPClassUID == MULTIFRAME_GRAYSCALE_BYTE_SC
    assert dataset.PhotometricInterpretation == "MONOCHROME2"
    assert dataset.SamplesPerPixel == 1
    assert "PlanarConfiguration" not in dataset
    assert dataset.RescaleIntercept == 0
    assert dataset.RescaleSlope == 1
    assert dataset.RescaleType == "US"
    pixels = dataset.pixel_array
    assert pixels.shape == (4, 60, 80)
    if transfer_syntax in LOSSY_SYNTAXES:
        assert psnr(pixels, np.stack(frames)) > MIN_PSNR_DB
    else:
        assert np.array_equal(pixels, np.stack(frames))
    decoded = dcmdjpeg_pixels(item.path, tmp_path)
    assert decoded.shape == (4, 60, 80)


def test_grey_frames_join_colour_cine(tmp_path, ct_small):
    """A grey frame after a colour first frame is written as RGB."""
    source = read_source_series(ct_small)
    colour = np.zeros((8, 8, 3), np.uint8)
    grey = np.full((8, 8), 90, np.uint8)

    item = write_secondary_capture(
        source,
        [colour, grey],
        tmp_path / "mixed.dcm",
        SeriesInfo(),
        transfer_syntax=ExplicitVRLittleEndian,
        frame_time_ms=100,
    )

    dataset = pydicom.dcmread(item.path)
    assert dataset.SOPClassUID == MULTIFRAME_TRUE_COLOR_SC
    assert np.array_equal(dataset.pixel_array[1], np.dstack([grey] * 3))


def test_colour_frame_after_grey_rejected(tmp_path, ct_small):
    """A colour frame after a grey first frame is rejected with both names."""
    source = read_source_series(ct_small)

    with pytest.raises(ImageInputError, match="frame 2 is colour"):
        write_secondary_capture(
            source,
            [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.uint8)],
            tmp_path / "mixed.dcm",
            SeriesInfo(),
            frame_time_ms=100,
        )
    assert list(tmp_path.iterdir()) == []


def test_frame_size_mismatch_rejected(tmp_path, ct_small):
    """Frames of different sizes are rejected and leave no file behind."""
    source = read_source_series(ct_small)
    frames = [np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)]

    with pytest.raises(ImageInputError, match="same size"):
        write_secondary_capture(
            source, frames, tmp_path / "cine.dcm", SeriesInfo(), frame_time_ms=100
        )
    assert list(tmp_path.iterdir()) == []


def test_several_frames_need_frame_time(tmp_path, ct_small):
    """More than one frame without a frame time is rejected."""
    source = read_source_series(ct_small)
    frames = [np.zeros((8, 8, 3), np.uint8)] * 2

    with pytest.raises(ImageInputError, match="frame time"):
        write_secondary_capture(source, frames, tmp_path / "cine.dcm", SeriesInfo())


def test_generator_frames_need_frame_time(tmp_path, ct_small):
    """A generator of several frames without a frame time is rejected at once."""
    source = read_source_series(ct_small)
    frames = (np.zeros((8, 8, 3), np.uint8) for _ in range(3))

    with pytest.raises(ImageInputError, match="Several frames were given"):
        write_secondary_capture(source, frames, tmp_path / "cine.dcm", SeriesInfo())
    assert list(tmp_path.iterdir()) == []


def test_generator_input_cine(tmp_path, ct_small):
    """A generator feeds a cine whose length is not known in advance."""
    source = read_source_series(ct_small)
    frames = [synthetic_screenshot(seed=k)[..., :3].copy() for k in range(5)]
    calls = []

    item = write_secondary_capture(
        source,
        iter(frames),
        tmp_path / "cine.dcm",
        SeriesInfo(),
        transfer_syntax=JPEGLossless,
        frame_time_ms=40,
        progress=lambda done, total, message: calls.append((done, total)),
    )

    assert item.number_of_frames == 5
    assert calls[-1] == (5, 0)
    assert_dciodvfy_clean(item.path)
    dataset = pydicom.dcmread(item.path)
    assert float(dataset.FrameTime) == 40.0
    assert dataset.CineRate == 25
    assert np.array_equal(dataset.pixel_array, np.stack(frames))


def test_size_limit_rejects_before_writing(tmp_path, ct_small):
    """An object over the limit raises before any output file exists."""
    source = read_source_series(ct_small)
    frames = [np.zeros((100, 100, 3), np.uint8)] * 4

    with pytest.raises(ObjectTooLargeError) as raised:
        write_secondary_capture(
            source,
            frames,
            tmp_path / "big.dcm",
            SeriesInfo(),
            transfer_syntax=ExplicitVRLittleEndian,
            frame_time_ms=100,
            size_limit_bytes=100_000,
        )

    message = str(raised.value)
    assert "4 frame(s) of 100x100" in message
    assert "0.1 MiB" in message
    assert "Lower the JPEG quality" in message
    assert list(tmp_path.iterdir()) == []


def test_size_limit_on_generator_input(tmp_path, ct_small):
    """Frames of unknown count are stopped once the encoded size passes the limit."""
    source = read_source_series(ct_small)
    frames = (np.zeros((100, 100, 3), np.uint8) for _ in range(50))

    with pytest.raises(ObjectTooLargeError, match="over the limit"):
        write_secondary_capture(
            source,
            frames,
            tmp_path / "big.dcm",
            SeriesInfo(),
            transfer_syntax=ExplicitVRLittleEndian,
            frame_time_ms=100,
            size_limit_bytes=200_000,
        )
    assert list(tmp_path.iterdir()) == []


def test_size_warning_logged_and_returned(tmp_path, ct_small, caplog):
    """An object over the warning size is written with a logged, returned warning."""
    source = read_source_series(ct_small)

    with caplog.at_level(logging.WARNING, logger="Media2DICOMLib.secondary_capture"):
        item = write_secondary_capture(
            source,
            np.zeros((100, 100, 3), np.uint8),
            tmp_path / "warned.dcm",
            SeriesInfo(),
            transfer_syntax=ExplicitVRLittleEndian,
            size_warning_bytes=10_000,
        )

    assert item.path.is_file()
    assert len(item.warnings) == 1
    assert "warned.dcm" in item.warnings[0]
    assert any(r.getMessage() == item.warnings[0] for r in caplog.records)
    assert item.size_bytes == item.path.stat().st_size


def test_default_size_limits():
    """The default warning and hard limits are 256 MiB and 4000 MiB."""
    assert secondary_capture.DEFAULT_SIZE_WARNING_BYTES == 256 * 1024 * 1024
    assert secondary_capture.DEFAULT_SIZE_LIMIT_BYTES == 4000 * 1024 * 1024


def test_cancel_leaves_nothing(tmp_path, ct_small):
    """A progress callback that cancels stops the export without leftovers."""
    source = read_source_series(ct_small)
    frames = [np.zeros((16, 16, 3), np.uint8)] * 10

    def cancel_at_three(done, total, message):
        if done == 3:
            raise Cancelled()

    with pytest.raises(Cancelled):
        write_secondary_capture(
            source,
            frames,
            tmp_path / "cine.dcm",
            SeriesInfo(),
            frame_time_ms=100,
            progress=cancel_at_three,
        )
    assert list(tmp_path.iterdir()) == []


def test_extended_offset_table(tmp_path, ct_small, monkeypatch):
    """Past the 32-bit offset limit the Extended Offset Table replaces the basic one."""
    monkeypatch.setattr(secondary_capture, "BASIC_OFFSET_TABLE_MAX", 1000)
    source = read_source_series(ct_small)
    frames = [synthetic_screenshot(seed=k)[..., :3].copy() for k in range(6)]

    item = write_secondary_capture(
        source,
        frames,
        tmp_path / "eot.dcm",
        SeriesInfo(),
        transfer_syntax=JPEGLosslessSV1,
        frame_time_ms=100,
    )

    assert_dciodvfy_clean(item.path)
    dataset = pydicom.dcmread(item.path)
    items = encapsulated_items(dataset)
    assert items[0] == b""
    offsets = list(np.frombuffer(dataset.ExtendedOffsetTable, "<u8"))
    lengths = list(np.frombuffer(dataset.ExtendedOffsetTableLengths, "<u8"))
    assert lengths == [len(f) for f in items[1:]]
    assert offsets == list(np.cumsum([0] + [8 + n for n in lengths[:-1]]))
    assert np.array_equal(dataset.pixel_array, np.stack(frames))


def test_memory_independent_of_frame_count(tmp_path, ct_small):
    """Peak traced memory for 60 frames stays close to that for 10 frames."""
    source = read_source_series(ct_small)
    frame = synthetic_screenshot(rows=480, columns=640)[..., :3].copy()

    def peak_bytes(count: int) -> int:
        tracemalloc.start()
        try:
            write_secondary_capture(
                source,
                (frame.copy() for _ in range(count)),
                tmp_path / f"cine{count}.dcm",
                SeriesInfo(),
                frame_time_ms=40,
                workers=2,
            )
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small = peak_bytes(10)
    large = peak_bytes(60)

    frame_bytes = frame.nbytes
    assert large < small + 2 * frame_bytes, (small, large)
    assert large < 20 * frame_bytes, (small, large)
    assert pydicom.dcmread(tmp_path / "cine60.dcm").NumberOfFrames == 60


def test_transfer_syntax_names_accepted(tmp_path, ct_small):
    """Command-line names such as jpeg-lossless select their UID."""
    source = read_source_series(ct_small)

    item = write_secondary_capture(
        source,
        np.zeros((8, 8, 3), np.uint8),
        tmp_path / "sc.dcm",
        SeriesInfo(),
        transfer_syntax="jpeg-lossless",
    )

    assert item.transfer_syntax_uid == "1.2.840.10008.1.2.4.57"
    dataset = pydicom.dcmread(item.path)
    assert dataset.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.57"


def test_body_part_copied_without_laterality(tmp_path, ct_small):
    """Body Part Examined comes from the source, and Laterality is then left out."""
    copy = pydicom.dcmread(ct_small)
    copy.BodyPartExamined = "CHEST"
    if "Laterality" in copy:
        del copy.Laterality
    copy_path = tmp_path / "source.dcm"
    copy.save_as(copy_path)
    source = read_source_series(copy_path)

    item = write_secondary_capture(
        source, np.zeros((8, 8, 3), np.uint8), tmp_path / "sc.dcm", SeriesInfo()
    )

    assert_dciodvfy_clean(item.path)
    dataset = pydicom.dcmread(item.path)
    assert dataset.BodyPartExamined == "CHEST"
    assert "Laterality" not in dataset


def test_options_written(tmp_path, ct_small):
    """Burned In Annotation, Recognizable Visual Features and Conversion Type are kept."""
    source = read_source_series(ct_small)

    item = write_secondary_capture(
        source,
        np.zeros((8, 8, 3), np.uint8),
        tmp_path / "sc.dcm",
        SeriesInfo(),
        burned_in_annotation="YES",
        recognizable_visual_features="NO",
        conversion_type="DV",
        reference_source_instances=False,
    )

    assert_dciodvfy_clean(item.path)
    dataset = pydicom.dcmread(item.path)
    assert dataset.BurnedInAnnotation == "YES"
    assert dataset.RecognizableVisualFeatures == "NO"
    assert dataset.ConversionType == "DV"
    assert "SourceImageSequence" not in dataset


@pytest.mark.parametrize(
    "options, match",
    [
        ({"conversion_type": "XX"}, "Conversion Type"),
        ({"burned_in_annotation": "maybe"}, "Burned In Annotation"),
        ({"frame_time_ms": 0}, "frame time"),
        ({"quality": 0}, "quality"),
        ({"transfer_syntax": "1.2.840.10008.1.2.4.80"}, "transfer syntax"),
    ],
)
def test_invalid_options_rejected(tmp_path, ct_small, options, match):
    """Invalid writer options are rejected with the value named."""
    source = read_source_series(ct_small)

    with pytest.raises(Exception, match=match) as raised:
        write_secondary_capture(
            source,
            np.zeros((8, 8, 3), np.uint8),
            tmp_path / "sc.dcm",
            SeriesInfo(),
            **options,
        )
    assert isinstance(raised.value, secondary_capture.Media2DICOMError)
    assert list(tmp_path.iterdir()) == []


def test_written_object_is_path_like(tmp_path, ct_small):
    """The returned object opens like the path it names."""
    source = read_source_series(ct_small)

    item = write_secondary_capture(
        source, np.zeros((8, 8, 3), np.uint8), tmp_path / "sc.dcm", SeriesInfo()
    )

    assert Path(item) == tmp_path / "sc.dcm"
    assert pydicom.dcmread(item).SOPInstanceUID == item.sop_instance_uid


@pytest.mark.parametrize(
    "transfer_syntax",
    [JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1],
)
def test_decompress_to_explicit_little(tmp_path, ct_small, orthanc, transfer_syntax):
    """A JPEG cine is rewritten uncompressed, RGB, with its lossy history kept."""
    source = read_source_series(ct_small)
    frames = [synthetic_screenshot(seed=k)[..., :3].copy() for k in range(3)]
    compressed = write_secondary_capture(
        source,
        frames,
        tmp_path / "jpeg.dcm",
        SeriesInfo(),
        transfer_syntax=transfer_syntax,
        frame_time_ms=100,
    )

    result = decompress_to_explicit_little(compressed, tmp_path / "native.dcm")

    assert result == tmp_path / "native.dcm"
    assert_dciodvfy_clean(result)
    original = pydicom.dcmread(compressed)
    native = pydicom.dcmread(result)
    assert native.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert native.SOPInstanceUID == original.SOPInstanceUID
    assert native.PhotometricInterpretation == "RGB"
    assert native.PlanarConfiguration == 0
    assert native.NumberOfFrames == 3
    assert float(native.FrameTime) == 100.0
    assert len(native.PixelData) == 3 * 96 * 128 * 3
    if transfer_syntax in LOSSY_SYNTAXES:
        assert native.LossyImageCompression == "01"
        assert native.LossyImageCompressionMethod == "ISO_10918_1"
        assert native.LossyImageCompressionRatio == original.LossyImageCompressionRatio
        # Pillow and pylibjpeg upsample 4:2:2 chroma differently, so the two
        # decodes differ slightly at colour edges.
        assert psnr(native.pixel_array, rgb_pixels(original)) > 50.0
        assert psnr(native.pixel_array, np.stack(frames)) > MIN_PSNR_DB
    else:
        assert "LossyImageCompression" not in native
        assert np.array_equal(native.pixel_array, np.stack(frames))
    assert not list(tmp_path.glob("*.partial"))
    assert_orthanc_preview(orthanc, result, 128, 96)


def test_decompress_rejects_native_input(tmp_path, ct_small):
    """An uncompressed file is rejected with its transfer syntax named."""
    source = read_source_series(ct_small)
    native = write_secondary_capture(
        source,
        np.zeros((8, 8, 3), np.uint8),
        tmp_path / "native.dcm",
        SeriesInfo(),
        transfer_syntax=ExplicitVRLittleEndian,
    )

    with pytest.raises(secondary_capture.Media2DICOMError, match="1.2.840.10008.1.2.1"):
        decompress_to_explicit_little(native, tmp_path / "again.dcm")
    assert not (tmp_path / "again.dcm").exists()


def test_frame_encoder_lossless_is_sof3():
    """The lossless encoders write SOF3 frames that decode to the input exactly."""
    pixels = synthetic_screenshot()[..., :3].copy()
    for transfer_syntax in (JPEGLossless, JPEGLosslessSV1):
        encoder = FrameEncoder(transfer_syntax)

        data = encoder.encode(pixels)

        assert frame_process_marker(data) == 0xC3
        assert len(data) % 2 == 0
        assert encoder.photometric_interpretation == "RGB"
        assert not encoder.is_lossy


def test_cli_capture_stills_and_cine(tmp_path, ct_small, capsys):
    """The capture command writes stills, and a cine from a folder of frames."""
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for number in range(1, 4):
        Image.fromarray(synthetic_screenshot(seed=number)).save(
            frames_dir / f"f_{number}.png"
        )

    stills = cli.main(
        [
            "capture",
            "--source",
            str(ct_small),
            str(frames_dir),
            "-o",
            str(tmp_path / "s"),
        ]
    )
    cine = cli.main(
        [
            "capture",
            "--source",
            str(ct_small),
            "--cine",
            "--frame-rate",
            "5",
            "--transfer-syntax",
            "jpeg-lossless-sv1",
            "--series-description",
            "Rotation",
            str(frames_dir),
            "-o",
            str(tmp_path / "c"),
        ]
    )

    assert stills == 0
    assert cine == 0
    still_files = sorted((tmp_path / "s").glob("*.dcm"))
    cine_files = sorted((tmp_path / "c").glob("*.dcm"))
    assert len(still_files) == 3
    assert len(cine_files) == 1
    for path in [*still_files, *cine_files]:
        assert_dciodvfy_clean(path)
    dataset = pydicom.dcmread(cine_files[0])
    assert dataset.NumberOfFrames == 3
    assert float(dataset.FrameTime) == 200.0
    assert dataset.SeriesDescription == "Rotation"
    assert dataset.SeriesNumber == 902
    still = pydicom.dcmread(still_files[0])
    assert still.SeriesDescription == "Screenshots"
    assert still.BurnedInAnnotation == "YES"
    assert "3 frame(s)" in capsys.readouterr().out


def test_cli_burned_in_annotation_no(tmp_path, ct_small):
    """'--burned-in-annotation no' declares frames free of identifying text."""
    image = tmp_path / "view.png"
    Image.fromarray(synthetic_screenshot(seed=4)).save(image)

    status = cli.main(
        ["capture", "-s", str(ct_small), "--burned-in-annotation", "no",
         "-o", str(tmp_path / "out"), str(image)]
    )

    assert status == 0
    written = next((tmp_path / "out").glob("*.dcm"))
    assert_dciodvfy_clean(written)
    assert pydicom.dcmread(written).BurnedInAnnotation == "NO"


def test_cli_cine_needs_frame_rate(tmp_path, ct_small, capsys):
    """--cine without --frame-rate is a usage error (exit code 2) with a message."""
    image = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(image)

    code = cli.main(["capture", "--source", str(ct_small), "--cine", str(image)])

    assert code == cli.EXIT_USAGE
    assert "--frame-rate" in capsys.readouterr().err


def test_pillow_fallback_cine(tmp_path, ct_small, monkeypatch):
    """Without imagecodecs, baseline frames come from Pillow and stay valid."""
    from Media2DICOMLib import jpeg

    monkeypatch.setattr(jpeg, "_lossy_imagecodecs", lambda: None)
    # Opaque RGB frames, so the decoded pixels compare with the input directly.
    frames = [synthetic_screenshot(seed=seed)[8:, 8:, :3] for seed in range(4)]
    source = read_source_series(ct_small)

    written = write_secondary_capture(
        source, frames, tmp_path / "cine.dcm", SeriesInfo(), frame_time_ms=100.0
    )

    assert_dciodvfy_clean(written.path)
    dataset = pydicom.dcmread(written.path)
    assert int(dataset.NumberOfFrames) == 4
    for item in encapsulated_items(dataset)[1:]:
        assert frame_process_marker(item) == 0xC0
    decoded = rgb_pixels(dataset)
    for index, frame in enumerate(frames):
        assert psnr(decoded[index], frame) > 30
