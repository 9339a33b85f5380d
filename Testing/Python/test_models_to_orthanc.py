"""The main job end to end: real CT, real models, sent to a real Orthanc."""

from __future__ import annotations

import io

import numpy as np
import pydicom

from Media2DICOMLib import cli
from Media2DICOMLib.network import send_files
from Media2DICOMLib.settings import Server
from Media2DICOMLib.stl import read_stl_triangles

from dicom_checks import assert_dciodvfy_clean

MODEL_NAMES = ("liver", "spine", "heart")


def orthanc_server(orthanc) -> Server:
    return Server(
        name="test-orthanc",
        host="127.0.0.1",
        port=orthanc.dicom_port,
        called_aet=orthanc.aet,
    )


def test_models_arrive_in_ct_study(tmp_path, shared_data, orthanc):
    """Three models land in the CT's study in Orthanc, bytes intact."""
    ct = shared_data / "ct-3slice"
    for path in sorted(ct.glob("*.dcm")):
        orthanc.upload(path)
    ct_header = pydicom.dcmread(ct / "01.dcm", stop_before_pixels=True)
    models = [shared_data / "models" / f"{name}.stl" for name in MODEL_NAMES]
    output = tmp_path / "out"

    status = cli.main(["encapsulate", "-s", str(ct), "-o", str(output), *map(str, models)])
    assert status == 0
    written = sorted(output.glob("*.dcm"))
    assert len(written) == 3
    for path in written:
        assert_dciodvfy_clean(path)

    results = send_files(orthanc_server(orthanc), written)

    assert [r.category for r in results] == ["success"] * 3
    assert all(r.status == 0 for r in results)
    studies = orthanc.get_json("/studies?expand")
    assert len(studies) == 1
    study = studies[0]
    assert study["MainDicomTags"]["StudyInstanceUID"] == ct_header.StudyInstanceUID
    modalities = sorted(
        orthanc.get_json(f"/series/{series_id}")["MainDicomTags"]["Modality"]
        for series_id in study["Series"]
    )
    assert modalities == ["CT", "M3D"]

    for result in results:
        matches = orthanc.find_instances(result.sop_instance_uid)
        assert len(matches) == 1
        stored = pydicom.dcmread(
            io.BytesIO(orthanc.get_bytes(f"/instances/{matches[0]['ID']}/file"))
        )
        assert stored.Modality == "M3D"
        assert stored.StudyInstanceUID == ct_header.StudyInstanceUID
        length = int(stored.EncapsulatedDocumentLength)
        triangles = read_stl_triangles(bytes(stored.EncapsulatedDocument)[:length])
        model = shared_data / "models" / f"{stored.DocumentTitle}.stl"
        expected = read_stl_triangles(model.read_bytes())
        np.testing.assert_array_equal(triangles, expected)


def test_ct_small_model_to_orthanc(tmp_path, ct_small, orthanc):
    """Without the real data, CT_small.dcm and a made model go the same way."""
    stl = tmp_path / "cube.stl"
    vertices = np.array(
        [[[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[1, 0, 0], [1, 1, 0], [0, 1, 0]]],
        dtype="<f4",
    )
    with open(stl, "wb") as handle:
        handle.write(b"made by the test".ljust(80, b" "))
        handle.write(np.uint32(len(vertices)).tobytes())
        for triangle in vertices:
            handle.write(np.zeros(3, "<f4").tobytes() + triangle.tobytes() + b"\0\0")
    output = tmp_path / "out"

    assert cli.main(["encapsulate", "-s", str(ct_small), "-o", str(output), str(stl)]) == 0
    written = sorted(output.glob("*.dcm"))
    assert_dciodvfy_clean(written[0])
    results = send_files(orthanc_server(orthanc), written)

    assert results[0].category == "success"
    matches = orthanc.find_instances(results[0].sop_instance_uid)
    stored = pydicom.dcmread(
        io.BytesIO(orthanc.get_bytes(f"/instances/{matches[0]['ID']}/file"))
    )
    source = pydicom.dcmread(ct_small, stop_before_pixels=True)
    assert stored.StudyInstanceUID == source.StudyInstanceUID
    length = int(stored.EncapsulatedDocumentLength)
    np.testing.assert_array_equal(
        read_stl_triangles(bytes(stored.EncapsulatedDocument)[:length]), vertices
    )
