"""Label map and Slicer .seg.nrrd meshing, and the ``media2dicom mesh`` command."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_checks import assert_dciodvfy_clean

nrrd = pytest.importorskip(
    "nrrd", reason="pynrrd is not installed (pip install pynrrd)"
)

from Media2DICOMLib.cli import main  # noqa: E402
from Media2DICOMLib.labelmap import (  # noqa: E402
    LabelMapError,
    mesh_labelmap_file,
    mesh_segment,
    read_labelmap,
)

# Label map file, label value, reference model meshed from it.
REFERENCE_SURFACES = [
    ("liver_seg.nrrd", 1, "liver.stl"),
    ("spine_seg.nrrd", 2, "spine.stl"),
    ("heart_seg.nrrd", 3, "heart.stl"),
    ("liver_spine_seg.nrrd", 1, "liver.stl"),
    ("liver_spine_seg.nrrd", 2, "spine.stl"),
]


def read_stl(path: Path) -> np.ndarray:
    """Read a binary STL into an (n, 3, 3) array of triangle corners."""
    data = path.read_bytes()
    count = int.from_bytes(data[80:84], "little")
    assert len(data) == 84 + 50 * count, f"{path} is not a binary STL"
    records = np.frombuffer(
        data[84:],
        dtype=np.dtype([("n", "<f4", (3,)), ("v", "<f4", (3, 3)), ("a", "<u2")]),
    )
    return records["v"].astype(float)


def directed_edge_counts(corners: np.ndarray) -> Counter:
    """Count each directed edge of a triangle soup, keyed by rounded endpoints."""
    points = [tuple(np.round(p, 4)) for p in corners.reshape(-1, 3)]
    counts = Counter()
    for index in range(0, len(points), 3):
        a, b, c = points[index : index + 3]
        counts.update([(a, b), (b, c), (c, a)])
    return counts


def signed_volume(corners: np.ndarray) -> float:
    return float(
        np.einsum(
            "ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])
        ).sum()
        / 6.0
    )


def write_segmentation(path: Path, voxels, segments, space="left-posterior-superior"):
    """Write a .seg.nrrd with the header fields Slicer's storage node writes."""
    spatial = ["domain", "domain", "domain"]
    header = {
        "space": space,
        "space origin": np.array([-10.0, 20.0, 5.0]),
        "kinds": spatial if voxels.ndim == 3 else ["list"] + spatial,
        "encoding": "gzip",
    }
    directions = np.diag([0.5, 0.75, 2.0])
    if voxels.ndim == 4:
        directions = np.vstack([np.full(3, np.nan), directions])
    header["space directions"] = directions
    for index, segment in enumerate(segments):
        for key, value in segment.items():
            header[f"Segment{index}_{key}"] = value
    nrrd.write(str(path), voxels, header)


def test_surfaces_match_reference_models(shared_data, tmp_path):
    """Each segment's surface has the reference model's bounds within half a voxel."""
    for labelmap_name, label, model_name in REFERENCE_SURFACES:
        labelmap = read_labelmap(shared_data / "segmentations" / labelmap_name)
        segment = next(s for s in labelmap.segments if s.label_value == label)
        vertices, triangles = mesh_segment(labelmap, segment)
        reference = read_stl(shared_data / "models" / model_name).reshape(-1, 3)
        half_voxel = labelmap.spacing / 2

        low_error = np.abs(vertices.min(axis=0) - reference.min(axis=0))
        high_error = np.abs(vertices.max(axis=0) - reference.max(axis=0))
        case = f"{labelmap_name} label {label}"
        assert np.all(low_error <= half_voxel), f"{case}: minimum off by {low_error}"
        assert np.all(high_error <= half_voxel), f"{case}: maximum off by {high_error}"
        assert len(triangles) > 0.9 * len(reference) / 3, case
        assert len(triangles) < 1.1 * len(reference) / 3, case


def test_surfaces_closed_and_outward(shared_data, tmp_path):
    """Written surfaces are closed, consistently wound and enclose a positive volume."""
    surfaces = mesh_labelmap_file(
        shared_data / "segmentations" / "liver_spine_seg.nrrd", tmp_path
    )
    assert [s.name for s in surfaces] == ["Label 1", "Label 2"]
    for surface in surfaces:
        corners = read_stl(surface.path)
        assert len(corners) == surface.triangle_count
        counts = directed_edge_counts(corners)
        unmatched = [e for e, n in counts.items() if counts[(e[1], e[0])] != n]
        assert not unmatched, f"{surface.path}: {len(unmatched)} open edges"
        assert signed_volume(corners) > 0, f"{surface.path} is wound inward"


def test_surface_header_and_normals(shared_data, tmp_path):
    """The STL header names LPS, avoids a leading solid, and normals point out."""
    surfaces = mesh_labelmap_file(
        shared_data / "segmentations" / "spine_seg.nrrd", tmp_path
    )
    data = surfaces[0].path.read_bytes()
    assert not data[:5].lower().startswith(b"solid")
    assert b"SPACE=LPS" in data[:80]

    records = np.frombuffer(
        data[84:],
        dtype=np.dtype([("n", "<f4", (3,)), ("v", "<f4", (3, 3)), ("a", "<u2")]),
    )
    corners = records["v"].astype(float)
    expected = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(records["n"], expected, atol=1e-4)


def test_labelmap_bounds_follow_geometry(tmp_path):
    """A single voxel block lands at origin + index * spacing, half a voxel out."""
    voxels = np.zeros((6, 5, 4), dtype=np.uint8)
    voxels[2:4, 1:3, 1:3] = 7
    path = tmp_path / "block.nrrd"
    nrrd.write(
        str(path),
        voxels,
        {
            "space": "left-posterior-superior",
            "space origin": np.array([100.0, -50.0, 10.0]),
            "space directions": np.diag([2.0, 3.0, 4.0]),
            "kinds": ["domain"] * 3,
        },
    )
    labelmap = read_labelmap(path)
    segment = labelmap.segments[0]
    vertices, _ = mesh_segment(labelmap, segment, smoothing_iterations=0)

    assert segment.name == "Label 7"
    assert segment.color is None
    assert np.allclose(
        vertices.min(axis=0), [100 + 1.5 * 2, -50 + 0.5 * 3, 10 + 0.5 * 4]
    )
    assert np.allclose(
        vertices.max(axis=0), [100 + 3.5 * 2, -50 + 2.5 * 3, 10 + 2.5 * 4]
    )


def test_ras_space_converted_to_lps(tmp_path):
    """A label map in RAS space gives the same LPS surface as its LPS twin."""
    voxels = np.zeros((5, 5, 5), dtype=np.uint8)
    voxels[1:4, 2:4, 1:3] = 1
    lps = tmp_path / "lps.nrrd"
    ras = tmp_path / "ras.nrrd"
    write_segmentation(lps, voxels, [])
    nrrd.write(
        str(ras),
        voxels,
        {
            "space": "right-anterior-superior",
            "space origin": np.array([10.0, -20.0, 5.0]),
            "space directions": np.diag([-0.5, -0.75, 2.0]),
            "kinds": ["domain"] * 3,
        },
    )
    lps_map = read_labelmap(lps)
    ras_map = read_labelmap(ras)
    lps_vertices, lps_triangles = mesh_segment(lps_map, lps_map.segments[0])
    ras_vertices, ras_triangles = mesh_segment(ras_map, ras_map.segments[0])

    assert np.allclose(lps_vertices, ras_vertices)
    assert np.array_equal(lps_triangles, ras_triangles)


def test_seg_nrrd_names_colors_labels(tmp_path):
    """A 3D .seg.nrrd gives one surface per segment with its name and colour."""
    voxels = np.zeros((8, 8, 6), dtype=np.uint8)
    voxels[1:4, 1:4, 1:4] = 1
    voxels[5:7, 4:7, 2:5] = 2
    path = tmp_path / "organs.seg.nrrd"
    write_segmentation(
        path,
        voxels,
        [
            {
                "ID": "Segment_1",
                "Name": "kidney left",
                "Color": "0.7 0.4 0.3",
                "LabelValue": "1",
                "Layer": "0",
            },
            {
                "ID": "Segment_2",
                "Name": "tumor",
                "Color": "0.5 0.9 0.5",
                "LabelValue": "2",
                "Layer": "0",
            },
        ],
    )
    surfaces = mesh_labelmap_file(path, tmp_path / "out", smoothing_iterations=0)
    manifest = json.loads((tmp_path / "out" / "segments.json").read_text())

    assert [s.name for s in surfaces] == ["kidney left", "tumor"]
    assert surfaces[0].color == pytest.approx((0.7, 0.4, 0.3))
    assert surfaces[1].color == pytest.approx((0.5, 0.9, 0.5))
    assert [s.label_value for s in surfaces] == [1, 2]
    assert surfaces[0].path.name == "kidney_left.stl"
    assert [e["name"] for e in manifest["segments"]] == ["kidney left", "tumor"]
    assert manifest["segments"][1]["color"] == pytest.approx([0.5, 0.9, 0.5])
    assert manifest["segments"][0]["file"] == "kidney_left.stl"

    low, high = surfaces[1].bounds
    assert low == pytest.approx((-10 + 4.5 * 0.5, 20 + 3.5 * 0.75, 5 + 1.5 * 2))
    assert high == pytest.approx((-10 + 6.5 * 0.5, 20 + 6.5 * 0.75, 5 + 4.5 * 2))


def test_seg_nrrd_overlapping_layers(tmp_path):
    """Overlapping segments in a 4D .seg.nrrd are read from their own layers."""
    voxels = np.zeros((2, 6, 6, 6), dtype=np.uint8)
    voxels[0, 1:5, 1:5, 1:5] = 1
    voxels[1, 2:4, 2:4, 2:4] = 1
    path = tmp_path / "layers.seg.nrrd"
    write_segmentation(
        path,
        voxels,
        [
            {
                "ID": "outer",
                "Name": "outer",
                "Color": "1 0 0",
                "LabelValue": "1",
                "Layer": "0",
            },
            {
                "ID": "inner",
                "Name": "inner",
                "Color": "0 0 1",
                "LabelValue": "1",
                "Layer": "1",
            },
        ],
    )
    labelmap = read_labelmap(path)
    outer, inner = labelmap.segments
    outer_vertices, _ = mesh_segment(labelmap, outer, smoothing_iterations=0)
    inner_vertices, _ = mesh_segment(labelmap, inner, smoothing_iterations=0)

    assert labelmap.voxels.shape == (2, 6, 6, 6)
    assert (outer.layer, inner.layer) == (0, 1)
    assert np.allclose(outer_vertices.min(axis=0), [-10 + 0.25, 20 + 0.375, 5 + 1.0])
    assert np.allclose(inner_vertices.min(axis=0), [-10 + 0.75, 20 + 1.125, 5 + 3.0])


def test_segment_choice_by_name_and_label(tmp_path, shared_data):
    """Segments are picked by label value, and an unknown name lists them."""
    source = shared_data / "segmentations" / "liver_spine_seg.nrrd"
    surfaces = mesh_labelmap_file(source, tmp_path, segment_names=["2"])
    assert [s.label_value for s in surfaces] == [2]

    with pytest.raises(LabelMapError, match="'Label 1' \\(label 1\\)"):
        mesh_labelmap_file(source, tmp_path, segment_names=["kidney"])


def test_float_labelmap_rejected(tmp_path):
    """A NRRD of floating-point voxels is rejected as not a label map."""
    path = tmp_path / "ct.nrrd"
    nrrd.write(
        str(path),
        np.zeros((3, 3, 3), dtype=np.float32),
        {"space": "left-posterior-superior", "space directions": np.eye(3)},
    )
    with pytest.raises(LabelMapError, match="not integers"):
        read_labelmap(path)


def test_unoriented_labelmap_rejected(tmp_path):
    """A NRRD without a patient space is rejected with the reason."""
    path = tmp_path / "plain.nrrd"
    nrrd.write(str(path), np.ones((3, 3, 3), dtype=np.uint8), {"spacings": [1, 1, 1]})
    with pytest.raises(LabelMapError, match="space 'none'"):
        read_labelmap(path)


def test_missing_file_rejected(tmp_path):
    with pytest.raises(LabelMapError, match="does not exist"):
        read_labelmap(tmp_path / "absent.seg.nrrd")


def test_empty_labelmap_rejected(tmp_path):
    """A label map without any labelled voxel writes nothing and raises."""
    path = tmp_path / "empty.seg.nrrd"
    write_segmentation(
        path,
        np.zeros((4, 4, 4), dtype=np.uint8),
        [{"ID": "s", "Name": "empty", "LabelValue": "1", "Layer": "0"}],
    )
    with pytest.raises(LabelMapError, match="contains any voxel"):
        mesh_labelmap_file(path, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.stl"))


def test_mesh_command_writes_surfaces(shared_data, tmp_path, capsys):
    """``media2dicom mesh`` writes one STL per label and lists them."""
    output = tmp_path / "surfaces"
    code = main(
        [
            "mesh",
            str(shared_data / "segmentations" / "liver_spine_seg.nrrd"),
            "-o",
            str(output),
        ]
    )
    printed = capsys.readouterr().out

    assert code == 0
    assert sorted(p.name for p in output.glob("*.stl")) == [
        "Label_1.stl",
        "Label_2.stl",
    ]
    assert "Label 1  label 1" in printed
    assert "152668 triangles" in printed
    assert (output / "segments.json").is_file()


def test_mesh_command_bad_label_map(tmp_path, capsys):
    """A missing label map ends with exit code 1 and a message, no traceback."""
    code = main(["mesh", str(tmp_path / "absent.nrrd"), "-o", str(tmp_path)])
    error = capsys.readouterr().err
    assert code == 1
    assert "absent.nrrd does not exist" in error
    assert "Traceback" not in error


def test_mesh_command_encapsulates(shared_data, tmp_path):
    """With --source the surfaces become Encapsulated STL objects in the CT's study."""
    segmentation = tmp_path / "organs.seg.nrrd"
    source_map = read_labelmap(shared_data / "segmentations" / "liver_spine_seg.nrrd")
    header = nrrd.read_header(
        str(shared_data / "segmentations" / "liver_spine_seg.nrrd")
    )
    header.update(
        {
            "Segment0_ID": "liver",
            "Segment0_Name": "liver",
            "Segment0_Color": "0.866667 0.509804 0.396078",
            "Segment0_LabelValue": "1",
            "Segment0_Layer": "0",
            "Segment1_ID": "spine",
            "Segment1_Name": "spine",
            "Segment1_Color": "0.945098 0.839216 0.568627",
            "Segment1_LabelValue": "2",
            "Segment1_Layer": "0",
        }
    )
    nrrd.write(str(segmentation), source_map.voxels[0], header)
    ct = shared_data / "ct-3slice"
    output = tmp_path / "out"

    code = main(["mesh", str(segmentation), "-o", str(output), "-s", str(ct)])
    assert code == 0

    ct_header = pydicom.dcmread(ct / "01.dcm", stop_before_pixels=True)
    objects = sorted((output / "dicom").glob("*.dcm"))
    assert len(objects) == 2
    datasets = [pydicom.dcmread(p) for p in objects]
    for path, dataset in zip(objects, datasets):
        assert_dciodvfy_clean(path)
        assert dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.3"
        assert dataset.Modality == "M3D"
        assert dataset.StudyInstanceUID == ct_header.StudyInstanceUID
        assert dataset.PatientID == ct_header.PatientID
        assert dataset.FrameOfReferenceUID == ct_header.FrameOfReferenceUID
        assert dataset.MIMETypeOfEncapsulatedDocument == "model/stl"
        assert "RecommendedDisplayCIELabValue" in dataset
    assert [d.DocumentTitle for d in datasets] == ["liver", "spine"]
    assert datasets[0].ModelGroupUID == datasets[1].ModelGroupUID
    assert datasets[0].SeriesInstanceUID == datasets[1].SeriesInstanceUID
    assert datasets[0].ContentDescription == "ColorRGB(221, 130, 101)"
    assert datasets[1].ContentDescription == "ColorRGB(241, 214, 145)"

    stl_bytes = (output / "liver.stl").read_bytes()
    document = bytes(datasets[0].EncapsulatedDocument)
    assert document[: len(stl_bytes)] == stl_bytes
