"""Closed surfaces from label maps and Slicer segmentation files, without Slicer.

A label map NRRD (one integer label per voxel) or a 3D Slicer ``.seg.nrrd`` is
meshed into one closed surface per segment, in LPS millimetres of the image's
patient coordinate system. Each surface is written as a binary STL, ready to be
encapsulated. The geometry comes from the NRRD ``space``, ``space origin``
and ``space directions`` fields, so the surfaces lie on the CT the label map
was drawn on and share its Frame of Reference.

Meshing uses surface nets: one vertex per 2x2x2 block of voxel centres that
straddles the segment boundary, one quadrilateral per boundary voxel face,
then constrained smoothing. The label map is padded with one empty voxel on
every side, so segments that touch the image border still give closed
surfaces.

Segment names, colours and label values of a ``.seg.nrrd`` come from its
``SegmentN_*`` header fields, as written by Slicer's segmentation storage node
(``Libs/MRML/Core/vtkMRMLSegmentationStorageNode.cxx``, Slicer 5.10 and 5.12):
``SegmentN_ID``, ``SegmentN_Name``, ``SegmentN_Color`` (three floats 0-1
separated by spaces), ``SegmentN_LabelValue`` and ``SegmentN_Layer`` (the index
along the first axis of a 4D file when segments overlap).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from Media2DICOMLib.errors import LabelMapError
from Media2DICOMLib.progress import Cancelled, ProgressCallback, progress_or_default

LOGGER = logging.getLogger(__name__)

# Smoothing defaults. On the CT label maps of the test suite these values give
# the same triangle count as VTK's vtkSurfaceNets3D with smoothing, and bounds
# within 0.3 voxel of its surfaces.
DEFAULT_SMOOTHING_ITERATIONS = 16
DEFAULT_RELAXATION_FACTOR = 0.5
# Maximum distance, in voxels along each axis, that smoothing moves a vertex
# away from the centre of its voxel block, so a surface keeps its voxel shape.
DEFAULT_CONSTRAINT_DISTANCE = 1.0

STL_HEADER = b"Media2DICOM surface from a label map. SPACE=LPS"

# NRRD "space" values and the sign that turns each axis of that space into LPS.
_SPACE_TO_LPS_SIGNS = {
    "left-posterior-superior": (1.0, 1.0, 1.0),
    "lps": (1.0, 1.0, 1.0),
    "right-anterior-superior": (-1.0, -1.0, 1.0),
    "ras": (-1.0, -1.0, 1.0),
    "left-anterior-superior": (1.0, -1.0, 1.0),
    "las": (1.0, -1.0, 1.0),
}

_SEGMENT_KEY = re.compile(r"^Segment(\d+)_(\w+)$")

_STL_TRIANGLE = np.dtype(
    [
        ("normal", "<f4", (3,)),
        ("vertices", "<f4", (3, 3)),
        ("attribute", "<u2"),
    ]
)



@dataclass
class Segment:
    """One segment of a label map: the voxels of ``label_value`` in ``layer``."""

    name: str
    label_value: int
    layer: int = 0
    color: Optional[Tuple[float, float, float]] = None
    segment_id: str = ""


@dataclass
class LabelMap:
    """Voxels and patient-space geometry of a label map.

    ``voxels`` has shape (layers, i, j, k). ``directions`` has one row per
    voxel axis (i, j, k): the LPS step in millimetres from one voxel to the
    next along that axis. ``origin`` is the LPS position of voxel (0, 0, 0).
    """

    path: Path
    voxels: np.ndarray
    origin: np.ndarray
    directions: np.ndarray
    segments: List[Segment] = field(default_factory=list)

    def voxel_to_lps(self, indices: np.ndarray) -> np.ndarray:
        """Map continuous voxel indices (n, 3) to LPS millimetres."""
        return self.origin + np.asarray(indices, dtype=float) @ self.directions

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along i, j and k in millimetres."""
        return np.linalg.norm(self.directions, axis=1)


@dataclass
class SegmentSurface:
    """A meshed segment written to an STL file."""

    name: str
    label_value: int
    color: Optional[Tuple[float, float, float]]
    path: Path
    triangle_count: int
    bounds: Tuple[Tuple[float, float, float], Tuple[float, float, float]]


def read_labelmap(path: Union[str, Path]) -> LabelMap:
    """Read a label map NRRD or a Slicer ``.seg.nrrd`` with its segments.

    Parameters
    ----------
    path : str or Path
        A 3D NRRD of integer labels, or a 3D or 4D Slicer segmentation file.

    Returns
    -------
    LabelMap
        Voxels, LPS geometry and segments. A plain label map gets one segment
        per non-zero label value, named ``Label <value>`` and without colour.

    Raises
    ------
    LabelMapError
        When the file is missing or not NRRD, pynrrd is not installed, the
        voxels are not integers, or the header has no patient-space geometry.
    """
    path = Path(path)
    if not path.is_file():
        raise LabelMapError(f"The label map file {path} does not exist.")
    try:
        import nrrd
    except ImportError as exc:
        raise LabelMapError(
            "Reading NRRD label maps needs the pynrrd package. Install it with "
            "'pip install pynrrd'."
        ) from exc

    try:
        data, header = nrrd.read(str(path))
    except (nrrd.NRRDError, OSError, ValueError) as exc:
        raise LabelMapError(
            f"Failed to read {path} as NRRD (pynrrd: {exc}). Give a label map or a "
            "Slicer .seg.nrrd file."
        ) from exc

    if not np.issubdtype(data.dtype, np.integer):
        raise LabelMapError(
            f"The voxels of {path} are {data.dtype}, not integers, so it is not a "
            "label map. Export the segmentation as a label map or .seg.nrrd."
        )

    voxels, domain_axes = _voxels_with_layer_axis(data, header, path)
    origin, directions = _lps_geometry(header, domain_axes, path)
    segments = _segments_from_header(header, voxels.shape[0], path)
    if not segments:
        segments = _segments_from_labels(voxels)
    LOGGER.info(
        "Read label map %s: %s voxels, %d segment(s)",
        path,
        "x".join(str(n) for n in voxels.shape[1:]),
        len(segments),
    )
    return LabelMap(path, voxels, origin, directions, segments)


def mesh_segment(
    labelmap: LabelMap,
    segment: Segment,
    smoothing_iterations: int = DEFAULT_SMOOTHING_ITERATIONS,
    relaxation_factor: float = DEFAULT_RELAXATION_FACTOR,
    constraint_distance: float = DEFAULT_CONSTRAINT_DISTANCE,
) -> Tuple[np.ndarray, np.ndarray]:
    """Mesh one segment into a closed surface.

    Returns
    -------
    vertices : numpy.ndarray
        (n, 3) vertex positions in LPS millimetres.
    triangles : numpy.ndarray
        (m, 3) vertex indices, counter-clockwise seen from outside, so the
        right-hand normals point out of the segment. Empty when the segment has
        no voxel.
    """
    if not 0 <= segment.layer < labelmap.voxels.shape[0]:
        raise LabelMapError(
            f"Segment '{segment.name}' of {labelmap.path} is in layer "
            f"{segment.layer}, but the file has {labelmap.voxels.shape[0]} layer(s)."
        )
    mask = labelmap.voxels[segment.layer] == segment.label_value
    if not mask.any():
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)

    vertices, quads = surface_nets(mask)
    if smoothing_iterations > 0:
        vertices = smooth_vertices(
            vertices,
            quads,
            smoothing_iterations,
            relaxation_factor,
            constraint_distance,
        )
    triangles = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])

    # A left-handed voxel-to-patient mapping mirrors the mesh, which would turn
    # the outward normals inward.
    if np.linalg.det(labelmap.directions) < 0:
        triangles = triangles[:, ::-1]
    return labelmap.voxel_to_lps(vertices), triangles


def surface_nets(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Build the unsmoothed surface-nets mesh of a boolean 3D mask.

    Returns vertex positions in voxel indices of ``mask`` (block centres, so
    half-integers) and quadrilaterals as four vertex indices each, ordered
    counter-clockwise seen from outside the mask in a right-handed voxel frame.
    """
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    block_shape = tuple(n - 1 for n in padded.shape)
    quads = []
    for axis in range(3):
        quads.append(_boundary_quads(padded, axis))
    blocks = np.concatenate(quads)

    # Each distinct voxel block in a quadrilateral becomes one vertex.
    flat = np.ravel_multi_index(blocks.reshape(-1, 3).T, block_shape)
    unique_blocks, vertex_of_corner = np.unique(flat, return_inverse=True)
    block_corners = np.stack(np.unravel_index(unique_blocks, block_shape), axis=1)

    # Block (a, b, c) of the padded mask is centred at padded voxel index
    # (a + 0.5, ...), which is (a - 0.5, ...) in voxel indices of ``mask``.
    vertices = block_corners.astype(float) - 0.5
    return vertices, vertex_of_corner.reshape(-1, 4)


def _boundary_quads(padded: np.ndarray, axis: int) -> np.ndarray:
    """List the voxel blocks around each boundary face normal to ``axis``.

    Returns an (n, 4, 3) array: for each pair of neighbouring voxels along
    ``axis`` with one inside and one outside, the lower corners of the four
    blocks that share the face between them, in outward counter-clockwise order.
    """
    low = np.take(padded, np.arange(padded.shape[axis] - 1), axis=axis)
    high = np.take(padded, np.arange(1, padded.shape[axis]), axis=axis)
    position = np.nonzero(low != high)
    inside_low = low[position]

    # The two other axes in cyclic order (axis+1, axis+2), so that counter-
    # clockwise in their plane means a normal along +axis.
    first, second = (axis + 1) % 3, (axis + 2) % 3
    offsets = ((-1, -1), (0, -1), (0, 0), (-1, 0))
    corners = []
    for offset_first, offset_second in offsets:
        corner = [position[0].copy(), position[1].copy(), position[2].copy()]
        corner[first] = corner[first] + offset_first
        corner[second] = corner[second] + offset_second
        corners.append(np.stack(corner, axis=1))
    blocks = np.stack(corners, axis=1)

    # The face normal must point from the inside voxel to the outside one:
    # +axis when the lower voxel is inside, else reverse the order.
    outward_negative = ~inside_low
    blocks[outward_negative] = blocks[outward_negative][:, ::-1]
    return blocks


def smooth_vertices(
    vertices: np.ndarray,
    quads: np.ndarray,
    iterations: int,
    relaxation_factor: float,
    constraint_distance: float,
) -> np.ndarray:
    """Move each vertex towards the mean of its mesh neighbours.

    Each iteration moves a vertex by ``relaxation_factor`` of the way to the
    mean of the vertices it shares a quadrilateral edge with, then clamps it to
    ``constraint_distance`` voxels of its starting position along each axis.
    """
    start = vertices.copy()
    edges = np.concatenate(
        [quads[:, [0, 1]], quads[:, [1, 2]], quads[:, [2, 3]], quads[:, [3, 0]]]
    )
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    edges = np.concatenate([edges, edges[:, ::-1]])
    neighbour_count = np.bincount(edges[:, 0], minlength=len(vertices))[:, None]

    smoothed = vertices.astype(float)
    for _ in range(iterations):
        neighbour_sum = np.zeros_like(smoothed)
        np.add.at(neighbour_sum, edges[:, 0], smoothed[edges[:, 1]])
        smoothed = smoothed + relaxation_factor * (
            neighbour_sum / neighbour_count - smoothed
        )
        smoothed = np.clip(
            smoothed, start - constraint_distance, start + constraint_distance
        )
    return smoothed


def write_binary_stl(
    path: Union[str, Path],
    vertices: np.ndarray,
    triangles: np.ndarray,
    header: bytes = STL_HEADER,
) -> None:
    """Write a binary STL with right-hand normals.

    The 80-byte header must not start with ``solid``, because readers take
    such files for ASCII STL.
    """
    if header[:5].lower() == b"solid":
        raise ValueError("A binary STL header must not start with 'solid'.")
    corners = np.asarray(vertices, dtype=float)[np.asarray(triangles)]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    lengths = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.divide(normals, lengths, out=np.zeros_like(normals), where=lengths > 0)

    records = np.zeros(len(corners), dtype=_STL_TRIANGLE)
    records["normal"] = normals
    records["vertices"] = corners
    with open(path, "wb") as stream:
        stream.write(header[:80].ljust(80, b"\0"))
        stream.write(np.uint32(len(records)).tobytes())
        stream.write(records.tobytes())


def mesh_labelmap_file(
    path: Union[str, Path],
    output_dir: Union[str, Path],
    *,
    segment_names: Optional[Sequence[str]] = None,
    smoothing_iterations: int = DEFAULT_SMOOTHING_ITERATIONS,
    progress: Optional[ProgressCallback] = None,
) -> List[SegmentSurface]:
    """Mesh every segment of a label map file and write one STL per segment.

    Parameters
    ----------
    path : str or Path
        Label map NRRD or Slicer ``.seg.nrrd``.
    output_dir : str or Path
        Folder for the STL files (created when missing). It also receives
        ``segments.json``, which lists each file with its segment name, label
        value and colour (sRGB floats 0-1, or null).
    segment_names : sequence of str, optional
        Mesh only these segments, matched by name, segment ID or label value.
    smoothing_iterations : int, optional
        Smoothing passes; 0 keeps the blocky voxel surface.
    progress : callable, optional
        ``progress(done, total, message)`` called once per segment; raising
        :class:`~Media2DICOMLib.progress.Cancelled` stops and removes the files
        written so far.

    Raises
    ------
    LabelMapError
        When the file cannot be read, a requested segment is not in it, or no
        chosen segment has any voxel.
    """
    progress = progress_or_default(progress)
    labelmap = read_labelmap(path)
    segments = _choose_segments(labelmap, segment_names)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    surfaces: List[SegmentSurface] = []
    used_names: set = set()
    try:
        for done, segment in enumerate(segments):
            progress(done, len(segments), f"Meshing {segment.name}")
            surface = _write_segment_surface(
                labelmap, segment, output_dir, used_names, smoothing_iterations
            )
            if surface is not None:
                surfaces.append(surface)
        progress(len(segments), len(segments), "Meshing done")
    except Cancelled:
        for surface in surfaces:
            surface.path.unlink(missing_ok=True)
        raise

    if not surfaces:
        raise LabelMapError(
            f"No chosen segment of {labelmap.path} contains any voxel, so no "
            "surface was written."
        )
    _write_manifest(output_dir / "segments.json", surfaces)
    return surfaces


def _write_segment_surface(labelmap, segment, output_dir, used_names, iterations):
    vertices, triangles = mesh_segment(labelmap, segment, iterations)
    if len(triangles) == 0:
        LOGGER.warning(
            "Segment '%s' (label %d) of %s has no voxel; no surface written",
            segment.name,
            segment.label_value,
            labelmap.path,
        )
        return None
    stl_path = output_dir / (_unique_file_stem(segment.name, used_names) + ".stl")
    write_binary_stl(stl_path, vertices, triangles)
    bounds = (
        tuple(float(v) for v in vertices.min(axis=0)),
        tuple(float(v) for v in vertices.max(axis=0)),
    )
    LOGGER.info(
        "Wrote %s: segment '%s', %d triangles", stl_path, segment.name, len(triangles)
    )
    return SegmentSurface(
        segment.name,
        segment.label_value,
        segment.color,
        stl_path,
        len(triangles),
        bounds,
    )


def _choose_segments(labelmap: LabelMap, requested: Optional[Sequence[str]]):
    if not requested:
        return list(labelmap.segments)
    chosen = []
    for request in requested:
        matches = [
            s
            for s in labelmap.segments
            if request in (s.name, s.segment_id, str(s.label_value))
        ]
        if not matches:
            available = ", ".join(
                f"'{s.name}' (label {s.label_value})" for s in labelmap.segments
            )
            raise LabelMapError(
                f"Segment '{request}' is not in {labelmap.path}. Segments in the "
                f"file: {available}."
            )
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


def _unique_file_stem(name: str, used: set) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "segment"
    candidate = stem
    number = 2
    while candidate.lower() in used:
        candidate = f"{stem}_{number}"
        number += 1
    used.add(candidate.lower())
    return candidate


def _write_manifest(path: Path, surfaces: Sequence[SegmentSurface]) -> None:
    entries = [
        {
            "file": surface.path.name,
            "name": surface.name,
            "label_value": surface.label_value,
            "color": list(surface.color) if surface.color else None,
            "triangles": surface.triangle_count,
        }
        for surface in surfaces
    ]
    path.write_text(json.dumps({"segments": entries}, indent=2) + "\n", "utf-8")


def _voxels_with_layer_axis(data: np.ndarray, header: dict, path: Path):
    """Return voxels shaped (layers, i, j, k) and the indices of the spatial axes."""
    kinds = [str(kind).lower() for kind in header.get("kinds", [])]
    if data.ndim == 3:
        return data[np.newaxis], [0, 1, 2]
    if data.ndim == 4:
        spatial = [i for i, kind in enumerate(kinds) if kind in ("domain", "space")]
        if len(spatial) != 3:
            raise LabelMapError(
                f"{path} has 4 axes but not 3 spatial ones (kinds: {kinds}). Give a "
                "3D label map or a Slicer .seg.nrrd file."
            )
        layer_axis = ({0, 1, 2, 3} - set(spatial)).pop()
        return np.moveaxis(data, layer_axis, 0), spatial
    raise LabelMapError(
        f"{path} has {data.ndim} axes. Give a 3D label map or a Slicer .seg.nrrd file."
    )


def _lps_geometry(header: dict, spatial_axes: Sequence[int], path: Path):
    space = str(header.get("space", "")).strip().lower()
    if space not in _SPACE_TO_LPS_SIGNS:
        raise LabelMapError(
            f"{path} has space '{space or 'none'}', so its voxels cannot be placed "
            "in patient coordinates. Save it from Slicer or another tool that "
            "writes an LPS or RAS space."
        )
    all_directions = np.asarray(header.get("space directions"), dtype=float)
    if all_directions.ndim != 2 or all_directions.shape[1] != 3:
        raise LabelMapError(f"{path} has no valid 'space directions' field.")
    if all_directions.shape[0] == 3:
        directions = all_directions
    else:
        directions = all_directions[list(spatial_axes)]
    if not np.all(np.isfinite(directions)) or abs(np.linalg.det(directions)) < 1e-12:
        raise LabelMapError(
            f"The 'space directions' of {path} do not span 3D space: {directions}."
        )
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    signs = np.asarray(_SPACE_TO_LPS_SIGNS[space])
    return origin * signs, directions * signs


def _segments_from_header(header: dict, layer_count: int, path: Path) -> List[Segment]:
    fields: dict = {}
    for key, value in header.items():
        match = _SEGMENT_KEY.match(str(key))
        if match:
            fields.setdefault(int(match.group(1)), {})[match.group(2)] = str(value)

    segments = []
    for index in sorted(fields):
        values = fields[index]
        if "ID" not in values and "LabelValue" not in values:
            continue
        try:
            label_value = int(values.get("LabelValue", "1"))
            # Slicer reads a segment without a layer field from the layer with
            # its own index, which in a 3D file is the only layer.
            default_layer = index if layer_count > 1 else 0
            layer = int(values.get("Layer", str(default_layer)))
        except ValueError as exc:
            raise LabelMapError(
                f"Segment {index} of {path} has an invalid label value or layer: {exc}"
            ) from exc
        segments.append(
            Segment(
                name=values.get("Name") or f"Segment_{label_value}",
                label_value=label_value,
                layer=layer,
                color=_parse_color(values.get("Color")),
                segment_id=values.get("ID", ""),
            )
        )
    return segments


def _parse_color(text: Optional[str]):
    if not text:
        return None
    try:
        red, green, blue = (float(part) for part in text.split()[:3])
    except ValueError:
        LOGGER.warning("Ignored the invalid segment colour '%s'", text)
        return None
    return (
        min(max(red, 0.0), 1.0),
        min(max(green, 0.0), 1.0),
        min(max(blue, 0.0), 1.0),
    )


def _segments_from_labels(voxels: np.ndarray) -> List[Segment]:
    labels = [int(v) for v in np.unique(voxels[0]) if v != 0]
    return [Segment(name=f"Label {label}", label_value=label) for label in labels]
