"""Generated inputs for the benchmarks: STL files, DICOM objects and frames.

Everything is generated from a fixed seed into a scratch folder, so every run
measures the same bytes and nothing large is kept in the repository.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path
from typing import List

import numpy as np

STL_HEADER_BYTES = 80
STL_TRIANGLE_BYTES = 50
STL_TRIANGLE_DTYPE = np.dtype(
    [("normal", "<f4", (3,)), ("vertices", "<f4", (3, 3)), ("attribute", "<u2")]
)
# Binary header that does not start with "solid", so no reader takes it for ASCII.
BINARY_HEADER = b"Media2DICOM benchmark mesh. SPACE=LPS".ljust(STL_HEADER_BYTES, b" ")
ASCII_FACET = (
    "facet normal %.6e %.6e %.6e\n"
    "  outer loop\n"
    "    vertex %.6e %.6e %.6e\n"
    "    vertex %.6e %.6e %.6e\n"
    "    vertex %.6e %.6e %.6e\n"
    "  endloop\n"
    "endfacet\n"
)
CHUNK_TRIANGLES = 1 << 18

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED_DATA = REPOSITORY.parent / "shared" / "data"
DCMTK_STL2DCM = "/usr/bin/stl2dcm"


def random_triangles(count: int, rng: np.random.Generator) -> np.ndarray:
    """Return ``count`` triangles with finite vertices (mm) and unit normals."""
    triangles = np.zeros(count, dtype=STL_TRIANGLE_DTYPE)
    corners = rng.uniform(-150.0, 150.0, size=(count, 1, 3))
    offsets = rng.uniform(-2.0, 2.0, size=(count, 3, 3))
    vertices = (corners + offsets).astype(np.float32)
    normals = np.cross(vertices[:, 1] - vertices[:, 0], vertices[:, 2] - vertices[:, 0])
    lengths = np.linalg.norm(normals, axis=1, keepdims=True)
    lengths[lengths == 0] = 1.0
    triangles["vertices"] = vertices
    triangles["normal"] = normals / lengths
    return triangles


def binary_stl_triangle_count(size_bytes: int) -> int:
    """Return the triangle count of the largest binary STL of at most that size."""
    return max(1, (size_bytes - STL_HEADER_BYTES - 4) // STL_TRIANGLE_BYTES)


def write_binary_stl(path: Path, triangle_count: int, seed: int = 1) -> Path:
    """Write a binary STL of ``triangle_count`` random triangles."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as handle:
        handle.write(BINARY_HEADER)
        handle.write(struct.pack("<I", triangle_count))
        remaining = triangle_count
        while remaining:
            count = min(remaining, CHUNK_TRIANGLES)
            handle.write(random_triangles(count, rng).tobytes())
            remaining -= count
    return path


def write_ascii_stl(path: Path, size_bytes: int, seed: int = 2) -> int:
    """Write an ASCII STL of about ``size_bytes`` bytes; return its triangle count."""
    rng = np.random.default_rng(seed)
    written = 0
    triangle_count = 0
    with open(path, "w", newline="\n") as handle:
        header = "solid benchmark\n"
        handle.write(header)
        written += len(header)
        while written < size_bytes:
            triangles = random_triangles(20000, rng)
            rows = np.concatenate(
                [triangles["normal"], triangles["vertices"].reshape(-1, 9)], axis=1
            )
            text = "".join(ASCII_FACET % tuple(row) for row in rows.tolist())
            handle.write(text)
            written += len(text)
            triangle_count += len(rows)
        handle.write("endsolid benchmark\n")
    return triangle_count


def source_series_files() -> List[Path]:
    """Return the source CT series: the real 3-slice CT when present, else CT_small."""
    folder = SHARED_DATA / "ct-3slice"
    if folder.is_dir():
        return sorted(folder.glob("*.dcm"))
    from pydicom.data import get_testdata_file

    return [Path(get_testdata_file("CT_small.dcm"))]


def write_encapsulated_stl_reference(
    stl_path: Path, source: Path, output: Path
) -> Path:
    """Encapsulate ``stl_path`` with DCMTK stl2dcm into the study of ``source``."""
    subprocess.run(
        [DCMTK_STL2DCM, "-q", "+st", str(source), "-an", str(stl_path), str(output)],
        check=True,
    )
    return output


def write_copies_with_new_uids(template: Path, folder: Path, count: int) -> List[Path]:
    """Write ``count`` copies of ``template`` that differ in SOP Instance UID."""
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    dataset = pydicom.dcmread(template)
    paths = []
    for index in range(count):
        uid = generate_uid()
        dataset.SOPInstanceUID = uid
        dataset.file_meta.MediaStorageSOPInstanceUID = uid
        dataset.InstanceNumber = index + 1
        path = folder / f"object_{index:04d}.dcm"
        dataset.save_as(path)
        paths.append(path)
    return paths


def synthetic_frame(index: int, rows: int, columns: int) -> np.ndarray:
    """Return one RGB frame that looks like a rendered view: gradients and a shape.

    The content changes from frame to frame, so no encoder can reuse work. The
    frame is built in bands of rows to keep temporary arrays small, because
    the cine benchmark measures the peak memory of the process that calls this.
    """
    frame = np.empty((rows, columns, 3), dtype=np.uint8)
    x = np.linspace(0.0, 1.0, columns, dtype=np.float32)[None, :]
    phase = index / 30.0
    centre_x = 0.5 + 0.3 * np.cos(phase)
    centre_y = 0.5 + 0.3 * np.sin(phase)
    rng = np.random.default_rng(index)
    band = 64
    for top in range(0, rows, band):
        y = np.linspace(0.0, 1.0, rows, dtype=np.float32)[top : top + band, None]
        red = 90 + 60 * np.sin(6.0 * x + phase) * np.cos(4.0 * y)
        green = 80 + 50 * np.cos(5.0 * y - phase) + 0 * x
        blue = 120 + 70 * x * y
        block = np.stack([red, green, blue], axis=-1)
        inside = (x - centre_x) ** 2 + ((y - centre_y) * rows / columns) ** 2 < 0.02
        block[inside] = (230.0, 200.0, 180.0)
        # Low-amplitude noise, as rendering and anti-aliasing leave.
        block += rng.normal(0.0, 2.0, size=block.shape).astype(np.float32)
        frame[top : top + band] = np.clip(block, 0, 255).astype(np.uint8)
    return frame


def remove(path: Path) -> None:
    """Delete a file or folder if it exists."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
