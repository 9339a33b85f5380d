"""Encapsulated STL objects written against real source series."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageCms
from pydicom.dataset import Dataset

from Media2DICOMLib import cli
from Media2DICOMLib.color import srgb_to_dicom_lab, srgb_to_lab
from Media2DICOMLib.encapsulated_stl import (
    ENCAPSULATED_STL_STORAGE,
    ModelSpec,
    encapsulate_models,
)
from Media2DICOMLib.errors import STLError
from Media2DICOMLib.source_study import read_source_series
from Media2DICOMLib.stl import read_stl_triangles

from dicom_checks import assert_dciodvfy_clean, run_dcentvfy

TETRAHEDRON = np.array(
    [
        [[0, 0, 0], [10, 0, 0], [0, 10, 0]],
        [[0, 0, 0], [0, 10, 0], [0, 0, 10]],
        [[0, 0, 0], [0, 0, 10], [10, 0, 0]],
        [[10, 0, 0], [0, 0, 10], [0, 10, 0]],
    ],
    dtype=np.float32,
)


def write_binary_stl(path: Path, triangles: np.ndarray, header: bytes = b"test") -> Path:
    """Write a binary STL with zero normals, as a CAD exporter might."""
    with open(path, "wb") as handle:
        handle.write(header.ljust(80, b" ")[:80])
        handle.write(struct.pack("<I", len(triangles)))
        for triangle in triangles:
            handle.write(struct.pack("<3f", 0.0, 0.0, 0.0))
            handle.write(np.asarray(triangle, dtype="<f4").tobytes())
            handle.write(b"\x00\x00")
    return path


def encapsulated_bytes(dataset: Dataset) -> bytes:
    length = int(dataset.EncapsulatedDocumentLength)
    return bytes(dataset.EncapsulatedDocument)[:length]


def test_ct_small_model_cli(tmp_path, ct_small):
    """The command writes a valid object against pydicom's CT_small.dcm."""
    stl = write_binary_stl(tmp_path / "tetra.stl", TETRAHEDRON)
    output = tmp_path / "out"

    status = cli.main(["encapsulate", "--source", str(ct_small), "-o", str(output), str(stl)])

    assert status == 0
    written = sorted(output.glob("*.dcm"))
    assert len(written) == 1
    assert_dciodvfy_clean(written[0])

    source = pydicom.dcmread(ct_small, stop_before_pixels=True)
    dataset = pydicom.dcmread(written[0])
    assert dataset.SOPClassUID == ENCAPSULATED_STL_STORAGE
    assert dataset.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert dataset.Modality == "M3D"
    assert dataset.StudyInstanceUID == source.StudyInstanceUID
    assert dataset.SeriesInstanceUID != source.SeriesInstanceUID
    assert dataset.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert dataset.PatientID == source.PatientID
    assert dataset.PatientName == source.PatientName
    assert dataset.StudyDate == source.StudyDate
    assert dataset.StudyID == source.get("StudyID", "")
    assert dataset.SeriesNumber == 901
    assert dataset.InstanceNumber == 1
    assert dataset.Manufacturer == "Media2DICOM"
    assert dataset.MIMETypeOfEncapsulatedDocument == "model/stl"
    assert dataset.BurnedInAnnotation == "NO"
    assert dataset.DocumentTitle == "tetra"
    assert dataset.ConceptNameCodeSequence[0].CodeValue == "85040-4"
    units = dataset.MeasurementUnitsCodeSequence
    assert len(units) == 1
    assert (units[0].CodeValue, units[0].CodingSchemeDesignator) == ("mm", "UCUM")
    reference = dataset.SourceInstanceSequence[0]
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    assert dataset.ContentDescription.startswith("ColorRGB(")
    assert len(dataset.RecommendedDisplayCIELabValue) == 3
    assert "ModelGroupUID" in dataset

    document = encapsulated_bytes(dataset)
    assert len(document) == 84 + 50 * 4
    assert not document[:80].lstrip().lower().startswith(b"solid")
    np.testing.assert_array_equal(read_stl_triangles(document), TETRAHEDRON)


def test_ct_small_accession_override(tmp_path, ct_small):
    """An Accession Number given by the user replaces the source's."""
    stl = write_binary_stl(tmp_path / "tetra.stl", TETRAHEDRON)
    source = read_source_series(ct_small, accession_number="ACC-77")

    paths = encapsulate_models(source, [stl], tmp_path / "out")

    dataset = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert dataset.AccessionNumber == "ACC-77"
    assert_dciodvfy_clean(paths[0])


def test_colour_opacity_group_written(tmp_path, ct_small):
    """Colour, opacity and a given Model Group UID reach the object."""
    stl = write_binary_stl(tmp_path / "part.stl", TETRAHEDRON)
    source = read_source_series(ct_small)
    group = "2.25.123456789"

    paths = encapsulate_models(
        source,
        [ModelSpec(stl, name="Part A", color=(1.0, 0.0, 0.0), opacity=0.4)],
        tmp_path / "out",
        model_group_uid=group,
    )

    dataset = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert dataset.ModelGroupUID == group
    assert dataset.ContentDescription == "ColorRGB(255, 0, 0)"
    assert list(dataset.RecommendedDisplayCIELabValue) == list(
        srgb_to_dicom_lab((1.0, 0.0, 0.0))
    )
    assert dataset.RecommendedPresentationOpacity == pytest.approx(0.4)
    assert dataset.DocumentTitle == "Part A"
    assert_dciodvfy_clean(paths[0])


def test_colour_text_can_be_off(tmp_path, ct_small):
    stl = write_binary_stl(tmp_path / "part.stl", TETRAHEDRON)
    source = read_source_series(ct_small)

    paths = encapsulate_models(source, [stl], tmp_path / "out", color_text=False)

    dataset = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert "ContentDescription" not in dataset
    assert "RecommendedDisplayCIELabValue" in dataset


@pytest.mark.parametrize(
    "rgb",
    [(255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255), (221, 130, 101), (30, 60, 90)],
)
def test_cielab_matches_littlecms(rgb):
    """sRGB to CIELab agrees with LittleCMS (through Pillow) within 1.5 units."""
    srgb = ImageCms.createProfile("sRGB")
    lab_profile = ImageCms.createProfile("LAB", colorTemp=5000)
    transform = ImageCms.buildTransform(srgb, lab_profile, "RGB", "LAB")
    pixel = ImageCms.applyTransform(Image.new("RGB", (1, 1), rgb), transform)
    reference_l, reference_a, reference_b = pixel.getpixel((0, 0))

    lightness, a_star, b_star = srgb_to_lab([c / 255 for c in rgb])

    assert lightness == pytest.approx(reference_l * 100 / 255, abs=1.5)
    assert a_star == pytest.approx(reference_a - 128, abs=1.5)
    assert b_star == pytest.approx(reference_b - 128, abs=1.5)


def test_cielab_icc_scaling():
    """White encodes as L 65535 with a* and b* at the 0x8080 zero."""
    assert srgb_to_dicom_lab((1.0, 1.0, 1.0)) == (65535, 0x8080, 0x8080)
    assert srgb_to_dicom_lab((0.0, 0.0, 0.0)) == (0, 0x8080, 0x8080)


def test_broken_stl_writes_nothing(tmp_path, ct_small):
    """A truncated STL stops the export before any object is written."""
    good = write_binary_stl(tmp_path / "good.stl", TETRAHEDRON)
    broken = tmp_path / "broken.stl"
    broken.write_bytes(good.read_bytes()[:-20])
    source = read_source_series(ct_small)
    output = tmp_path / "out"

    with pytest.raises(STLError, match="broken.stl"):
        encapsulate_models(source, [good, broken], output)

    assert list(output.glob("*")) == []


def test_nan_vertex_leaves_no_file(tmp_path, ct_small):
    triangles = TETRAHEDRON.copy()
    triangles[2, 1, 0] = np.nan
    stl = write_binary_stl(tmp_path / "nan.stl", triangles)
    source = read_source_series(ct_small)
    output = tmp_path / "out"

    with pytest.raises(STLError, match="nan.stl"):
        encapsulate_models(source, [stl], output)

    assert list(output.glob("*")) == []


def test_cli_broken_stl_exit_code(tmp_path, ct_small, capsys):
    broken = tmp_path / "broken.stl"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))

    status = cli.main(["encapsulate", "-s", str(ct_small), "-o", str(tmp_path), str(broken)])

    assert status == cli.EXIT_ERROR
    message = capsys.readouterr().err
    assert "broken.stl" in message
    assert "Traceback" not in message


def test_non_ascii_names_encoded(tmp_path, ct_small):
    """A Latin-1 patient and a model name outside Latin-1 are written as UTF-8."""
    source_ds = pydicom.dcmread(ct_small)
    source_ds.SpecificCharacterSet = "ISO_IR 100"
    source_ds.PatientName = "Müller^Jürgen"
    source_path = tmp_path / "latin1.dcm"
    source_ds.save_as(source_path)
    stl = write_binary_stl(tmp_path / "liver.stl", TETRAHEDRON)
    source = read_source_series(source_path)

    paths = encapsulate_models(
        source, [ModelSpec(stl, name="肝臓 liver")], tmp_path / "out"
    )

    dataset = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert dataset.SpecificCharacterSet == "ISO_IR 192"
    assert str(dataset.PatientName) == "Müller^Jürgen"
    assert dataset.DocumentTitle == "肝臓 liver"
    assert_dciodvfy_clean(paths[0])


def test_latin1_source_kept_when_possible(tmp_path, ct_small):
    source_ds = pydicom.dcmread(ct_small)
    source_ds.SpecificCharacterSet = "ISO_IR 100"
    source_ds.PatientName = "Müller^Jürgen"
    source_path = tmp_path / "latin1.dcm"
    source_ds.save_as(source_path)
    stl = write_binary_stl(tmp_path / "leber.stl", TETRAHEDRON)

    paths = encapsulate_models(read_source_series(source_path), [stl], tmp_path / "o")

    dataset = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert dataset.SpecificCharacterSet == "ISO_IR 100"
    assert str(dataset.PatientName) == "Müller^Jürgen"


def test_missing_frame_of_reference_gets_new(tmp_path, ct_small):
    source_ds = pydicom.dcmread(ct_small)
    del source_ds.FrameOfReferenceUID
    source_path = tmp_path / "nofor.dcm"
    source_ds.save_as(source_path)
    stl = write_binary_stl(tmp_path / "m.stl", TETRAHEDRON)

    paths = encapsulate_models(read_source_series(source_path), [stl], tmp_path / "o")

    dataset = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert dataset.FrameOfReferenceUID
    assert_dciodvfy_clean(paths[0])


def test_three_real_models_one_series(tmp_path, shared_data):
    """liver, spine and heart become one M3D series with one group and distinct colours."""
    ct = shared_data / "ct-3slice"
    models = [shared_data / "models" / f"{name}.stl" for name in ("liver", "spine", "heart")]
    output = tmp_path / "out"

    status = cli.main(["encapsulate", "-s", str(ct), "-o", str(output), *map(str, models)])

    assert status == 0
    paths = sorted(output.glob("*.dcm"))
    assert len(paths) == 3
    datasets = [pydicom.dcmread(p) for p in paths]
    ct_header = pydicom.dcmread(ct / "01.dcm", stop_before_pixels=True)
    assert len({d.SeriesInstanceUID for d in datasets}) == 1
    assert len({d.ModelGroupUID for d in datasets}) == 1
    assert len({tuple(d.RecommendedDisplayCIELabValue) for d in datasets}) == 3
    assert sorted(d.InstanceNumber for d in datasets) == [1, 2, 3]
    for path, dataset in zip(paths, datasets):
        assert_dciodvfy_clean(path)
        assert dataset.StudyInstanceUID == ct_header.StudyInstanceUID
        assert dataset.FrameOfReferenceUID == ct_header.FrameOfReferenceUID
        assert len(dataset.SourceInstanceSequence) == 3
        model_path = shared_data / "models" / f"{dataset.DocumentTitle}.stl"
        original = read_stl_triangles(model_path.read_bytes())
        np.testing.assert_array_equal(
            read_stl_triangles(encapsulated_bytes(dataset)), original
        )


def test_dcentvfy_study_consistent(tmp_path, shared_data):
    """dcentvfy over the CT and the models finds no patient or study mismatch."""
    ct = shared_data / "ct-3slice"
    models = [shared_data / "models" / f"{n}.stl" for n in ("liver", "spine", "heart")]
    paths = encapsulate_models(read_source_series(ct), models, tmp_path / "out")

    output = run_dcentvfy([*sorted(ct.glob("*.dcm")), *paths])

    problems = [
        line
        for line in output.splitlines()
        if line.startswith("Error") and ("Patient" in line or "Study" in line)
    ]
    assert not problems, output


def test_large_stl_memory_bounded(tmp_path, ct_small):
    """A 100 MB STL is encapsulated with far less memory than its size."""
    triangle_count = 2_000_000
    stl = tmp_path / "large.stl"
    rng = np.random.default_rng(7)
    with open(stl, "wb") as handle:
        handle.write(b"large test mesh".ljust(80, b" "))
        handle.write(struct.pack("<I", triangle_count))
        records = np.zeros(200_000, dtype=[("n", "<f4", 3), ("v", "<f4", 9), ("a", "<u2")])
        for _ in range(triangle_count // len(records)):
            records["v"] = rng.random((len(records), 9), dtype=np.float32)
            handle.write(records.tobytes())
    script = (
        "import resource, sys\n"
        "from Media2DICOMLib import cli, encapsulated_stl\n"
        "cli.build_parser()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "status = cli.main(sys.argv[1:])\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print('GROWTH_KB', after - before)\n"
        "sys.exit(status)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "encapsulate", "-s", str(ct_small),
         "-o", str(tmp_path / "out"), str(stl)],
        capture_output=True, text=True, timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )

    assert result.returncode == 0, result.stderr
    growth_kb = int(result.stdout.split("GROWTH_KB")[1].split()[0])
    written = next((tmp_path / "out").glob("*.dcm"))
    assert written.stat().st_size > stl.stat().st_size
    # Peak memory beyond what the imports took: a few 4 MB chunks, not the file.
    assert growth_kb < 40 * 1024, f"peak RSS grew {growth_kb / 1024:.0f} MB for a 100 MB STL"
    assert_dciodvfy_clean(written)


def test_second_run_keeps_first_files(tmp_path, ct_small, capsys):
    """A second run into the same folder adds files and warns, overwriting none."""
    stl = write_binary_stl(tmp_path / "tetra.stl", TETRAHEDRON)
    output = tmp_path / "out"
    arguments = ["encapsulate", "-s", str(ct_small), "-o", str(output), str(stl)]

    assert cli.main(arguments) == 0
    first = {p: p.read_bytes() for p in output.glob("*.dcm")}
    capsys.readouterr()
    assert cli.main(arguments) == 0

    after = sorted(output.glob("*.dcm"))
    assert len(after) == 2
    for path, content in first.items():
        assert path.read_bytes() == content
    assert "already contains 1 DICOM file" in capsys.readouterr().err
