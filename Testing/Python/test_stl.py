"""Tests of the STL reader: format detection, ASCII and RAS conversion, rejection."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from Media2DICOMLib import stl as stl_module
from Media2DICOMLib.errors import STLError
from Media2DICOMLib.progress import Cancelled
from Media2DICOMLib.stl import TRIANGLE_DTYPE, open_stl, read_stl_triangles

TETRAHEDRON = np.array(
    [
        [[0, 0, 0], [0, 10, 0], [10, 0, 0]],
        [[0, 0, 0], [10, 0, 0], [0, 0, 10]],
        [[0, 0, 0], [0, 0, 10], [0, 10, 0]],
        [[10, 0, 0], [0, 10, 0], [0, 0, 10]],
    ],
    dtype=np.float32,
)

# Triangle counts of the real surfaces, from the data folder's README.
REAL_MODELS = {"liver": 152668, "spine": 20332, "heart": 65288}


def unit_normals(vertices: np.ndarray) -> np.ndarray:
    """Return the normalized cross products of the triangle edges as float32."""
    vertices = vertices.astype(np.float64)
    normals = np.cross(vertices[:, 1] - vertices[:, 0], vertices[:, 2] - vertices[:, 0])
    with np.errstate(invalid="ignore"):
        return (normals / np.linalg.norm(normals, axis=1)[:, None]).astype(np.float32)


def binary_stl_bytes(
    vertices: np.ndarray,
    normals: Optional[np.ndarray] = None,
    header: bytes = b"binary test mesh",
    attributes=0,
    count: Optional[int] = None,
) -> bytes:
    """Return a binary STL. ``count`` overrides the triangle count field."""
    records = np.zeros(len(vertices), TRIANGLE_DTYPE)
    records["vertices"] = vertices
    records["normal"] = unit_normals(vertices) if normals is None else normals
    records["attr"] = attributes
    count = len(vertices) if count is None else count
    return header.ljust(80, b"\x00") + struct.pack("<I", count) + records.tobytes()


def ascii_stl(
    vertices: np.ndarray,
    normals: Optional[np.ndarray] = None,
    name: str = "part",
    newline: str = "\n",
    number=lambda value: f"{value:.6e}",
) -> bytes:
    """Return an ASCII STL with one solid and the usual indentation."""
    normals = unit_normals(vertices) if normals is None else normals
    lines = [f"solid {name}"]
    for normal, triangle in zip(normals, vertices):
        lines.append("  facet normal " + " ".join(number(v) for v in normal))
        lines.append("    outer loop")
        for vertex in triangle:
            lines.append("      vertex " + " ".join(number(v) for v in vertex))
        lines.append("    endloop")
        lines.append("  endfacet")
    lines.append(f"endsolid {name}")
    return (newline.join(lines) + newline).encode("utf-8")


def write_file(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def stream(model, chunk_bytes: int = 4 << 20) -> bytes:
    """Join what iter_chunks yields and check its size, header and count."""
    data = b"".join(model.iter_chunks(chunk_bytes))
    assert len(data) == model.byte_length
    assert data[:80] == model.header
    assert len(model.header) == 80
    assert not data[:80].lstrip().lower().startswith(b"solid")
    assert struct.unpack_from("<I", data, 80)[0] == model.triangle_count
    return data


def records_of(data: bytes) -> np.ndarray:
    return np.frombuffer(data, TRIANGLE_DTYPE, offset=84)


def random_tetrahedra(count: int, seed: int = 0) -> np.ndarray:
    generator = np.random.default_rng(seed)
    return generator.uniform(-250, 250, (count, 3, 3)).astype(np.float32)


@pytest.fixture
def numpy_stl_mesh():
    """numpy-stl's Mesh class, the reference reader."""
    return pytest.importorskip("stl.mesh").Mesh


@pytest.fixture
def small_ascii_blocks(monkeypatch):
    """Parse ASCII in 97-byte blocks, so facets and lines cross block ends."""
    monkeypatch.setattr(stl_module, "_ASCII_BLOCK_BYTES", 97)


# Real files


@pytest.mark.parametrize(
    "name", ["moon-ascii.stl", "moon-ascii-crlf.stl", "cube-ascii.stl"]
)
def test_ascii_real_file_matches_numpy_stl(shared_data, numpy_stl_mesh, name):
    """ASCII vertices equal numpy-stl's reading of the same file."""
    path = shared_data / "stl" / name
    model = open_stl(path)
    reference = numpy_stl_mesh.from_file(str(path), calculate_normals=False)

    assert model.source_format == "ascii"
    assert model.triangle_count == len(reference.vectors)
    np.testing.assert_array_equal(model.triangles(), reference.vectors)
    data = stream(model)
    np.testing.assert_array_equal(read_stl_triangles(data), reference.vectors)
    np.testing.assert_array_equal(records_of(data)["normal"], reference.normals)
    assert not records_of(data)["attr"].any()


def test_ascii_real_file_small_blocks(shared_data, tmp_path, small_ascii_blocks):
    """The moon with CRLF and CR-only line ends parses the same in tiny blocks."""
    moon = (shared_data / "stl" / "moon-ascii.stl").read_bytes()
    expected = open_stl(shared_data / "stl" / "moon-ascii.stl").triangles()

    for name, newline in (("crlf", b"\r\n"), ("cr", b"\r")):
        path = write_file(tmp_path, f"moon-{name}.stl", moon.replace(b"\n", newline))
        np.testing.assert_array_equal(open_stl(path).triangles(), expected)


def test_cube_ascii_equals_cube_binary(shared_data):
    """The ASCII cube converts to the triangles of the binary cube."""
    ascii_model = open_stl(shared_data / "stl" / "cube-ascii.stl")
    binary_model = open_stl(shared_data / "stl" / "cube-binary.stl")

    assert ascii_model.source_format == "ascii"
    assert binary_model.source_format == "binary"
    assert ascii_model.triangle_count == binary_model.triangle_count == 12
    np.testing.assert_array_equal(ascii_model.triangles(), binary_model.triangles())
    ascii_records = records_of(stream(ascii_model))
    binary_records = records_of(stream(binary_model))
    np.testing.assert_array_equal(ascii_records["normal"], binary_records["normal"])


@pytest.mark.parametrize(
    "relative", ["stl/star-binary.stl", *(f"models/{n}.stl" for n in REAL_MODELS)]
)
def test_binary_real_file_streams_unchanged(shared_data, numpy_stl_mesh, relative):
    """An LPS binary STL without a 'solid' header streams byte for byte."""
    path = shared_data / relative
    model = open_stl(path)

    assert model.source_format == "binary"
    assert model.space == "LPS"
    assert model.name == path.stem
    if path.stem in REAL_MODELS:
        assert model.triangle_count == REAL_MODELS[path.stem]
    data = stream(model, chunk_bytes=1 << 20)
    assert data == path.read_bytes()
    np.testing.assert_array_equal(
        read_stl_triangles(data), numpy_stl_mesh.from_file(str(path)).vectors
    )


def test_binary_real_solid_header_replaced(shared_data):
    """The real binary cube, whose header starts with 'solid', stays binary."""
    path = shared_data / "stl" / "cube-binary.stl"
    original = path.read_bytes()
    assert original[:80].lstrip().startswith(b"solid")

    model = open_stl(path)
    data = stream(model)

    assert model.source_format == "binary"
    assert data[80:] == original[80:]
    assert b"SPACE=LPS" in model.header
    assert b"solid PRO2STL version 1.0" in model.header


# Binary input


@pytest.mark.parametrize(
    "header", [b"solid part", b"  SOLID exported by CAD", b"\tSolid", b"solid"]
)
def test_binary_solid_header_is_binary(tmp_path, header):
    """Binary STL whose header starts with 'solid' is read by the size rule."""
    path = write_file(tmp_path, "cad.stl", binary_stl_bytes(TETRAHEDRON, header=header))

    model = open_stl(path)
    data = stream(model)

    assert model.source_format == "binary"
    assert model.triangle_count == 4
    np.testing.assert_array_equal(read_stl_triangles(data), TETRAHEDRON)
    assert model.header.startswith(b"Media2DICOM output. SPACE=LPS.")


def test_binary_attribute_field_kept(tmp_path):
    """The 2-byte attribute field of binary input is written unchanged."""
    colours = np.array([0x8000 | 31, 0x7C00, 12345, 65535], dtype=np.uint16)
    path = write_file(
        tmp_path, "colour.stl", binary_stl_bytes(TETRAHEDRON, attributes=colours)
    )

    records = records_of(stream(open_stl(path)))

    np.testing.assert_array_equal(records["attr"], colours)


def test_binary_nan_normals_recomputed(tmp_path):
    """NaN and infinite normals are recomputed, degenerate facets get zero."""
    vertices = np.concatenate([TETRAHEDRON, [[[1, 1, 1], [2, 2, 2], [3, 3, 3]]]])
    normals = np.full((5, 3), np.nan, dtype=np.float32)
    normals[1] = [np.inf, 0, 0]
    normals[2] = [0.25, 0.5, 0.75]
    attributes = np.arange(5, dtype=np.uint16)
    path = write_file(
        tmp_path, "nan.stl", binary_stl_bytes(vertices, normals, attributes=attributes)
    )

    records = records_of(stream(open_stl(path), chunk_bytes=100))

    expected = unit_normals(TETRAHEDRON)
    np.testing.assert_allclose(records["normal"][[0, 1, 3]], expected[[0, 1, 3]])
    np.testing.assert_array_equal(records["normal"][2], [0.25, 0.5, 0.75])
    np.testing.assert_array_equal(records["normal"][4], [0, 0, 0])
    np.testing.assert_array_equal(records["vertices"], vertices)
    np.testing.assert_array_equal(records["attr"], attributes)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_binary_nonfinite_vertex_rejected(tmp_path, bad_value):
    """A NaN or infinite vertex raises while streaming, naming the triangle."""
    vertices = random_tetrahedra(300)
    vertices[217, 2, 1] = bad_value
    path = write_file(tmp_path, "broken.stl", binary_stl_bytes(vertices))
    model = open_stl(path)

    with pytest.raises(STLError) as raised:
        stream(model, chunk_bytes=1000)
    message = str(raised.value)
    assert "broken.stl" in message
    assert "triangle index 217" in message

    output = tmp_path / "out.stl"
    with pytest.raises(STLError):
        model.write_binary(output)
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.stl"]


def test_binary_file_shortened_while_streaming(tmp_path):
    """A file cut short after open_stl raises instead of yielding a short mesh."""
    path = write_file(
        tmp_path, "shrinking.stl", binary_stl_bytes(random_tetrahedra(50))
    )
    model = open_stl(path)
    with open(path, "r+b") as file:
        file.truncate(84 + 50 * 30 + 20)

    with pytest.raises(STLError, match="shrinking.stl.*became shorter"):
        stream(model, chunk_bytes=500)


def test_binary_file_changed_count_rejected(tmp_path):
    """A triangle count changed after open_stl raises before any chunk."""
    path = write_file(tmp_path, "changed.stl", binary_stl_bytes(TETRAHEDRON))
    model = open_stl(path)
    path.write_bytes(binary_stl_bytes(TETRAHEDRON[:2]))

    chunks = model.iter_chunks()
    with pytest.raises(STLError, match="changed.stl changed since it was opened"):
        next(chunks)


def test_binary_file_grown_while_streaming(tmp_path):
    """Data appended after open_stl raises at the end of the stream."""
    path = write_file(tmp_path, "grown.stl", binary_stl_bytes(TETRAHEDRON))
    model = open_stl(path)
    with open(path, "ab") as file:
        file.write(b"\x00" * 50)

    with pytest.raises(STLError, match="grown.stl grew"):
        stream(model)


def test_chunks_follow_chunk_bytes(tmp_path):
    """Chunks hold about chunk_bytes each and join to the same STL."""
    path = write_file(tmp_path, "many.stl", binary_stl_bytes(random_tetrahedra(101)))
    model = open_stl(path)

    chunks = list(model.iter_chunks(chunk_bytes=500))

    assert len(chunks[0]) == 84 + 500
    assert all(len(chunk) == 500 for chunk in chunks[1:-1])
    assert len(chunks[-1]) == 50
    assert len(chunks) == 11
    assert b"".join(chunks) == path.read_bytes()
    with pytest.raises(ValueError):
        next(model.iter_chunks(chunk_bytes=0))


def test_binary_streaming_memory_bounded(tmp_path):
    """Streaming a 20 MB binary STL keeps allocations near the chunk size."""
    path = tmp_path / "large.stl"
    with open(path, "wb") as file:
        file.write(b"large".ljust(80, b"\x00") + struct.pack("<I", 400_000))
        block = binary_stl_bytes(random_tetrahedra(40_000))[84:]
        for _ in range(10):
            file.write(block)
    model = open_stl(path)

    tracemalloc.start()
    try:
        total = sum(len(chunk) for chunk in model.iter_chunks(chunk_bytes=1 << 20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert total == path.stat().st_size
    assert peak < 4 << 20, f"peak allocation {peak} bytes for a 20 MB file"


def test_write_binary_round_trip(tmp_path):
    """write_binary writes what iter_chunks yields, and it reads back as binary."""
    source = write_file(tmp_path, "part.stl", ascii_stl(TETRAHEDRON))
    model = open_stl(source)
    output = tmp_path / "part-binary.stl"

    model.write_binary(output)
    reopened = open_stl(output)

    assert output.read_bytes() == stream(model)
    assert reopened.source_format == "binary"
    assert reopened.header == model.header
    np.testing.assert_array_equal(reopened.triangles(), TETRAHEDRON)


def test_write_binary_missing_folder(tmp_path):
    """Writing into a missing folder raises STLError naming the path."""
    model = open_stl(write_file(tmp_path, "part.stl", binary_stl_bytes(TETRAHEDRON)))

    with pytest.raises(STLError, match="missing"):
        model.write_binary(tmp_path / "missing" / "out.stl")


# RAS and LPS


def test_ras_binary_converted_to_lps(tmp_path):
    """A SPACE=RAS header negates x and y of vertices and normals."""
    normals = unit_normals(TETRAHEDRON)
    attributes = np.array([1, 2, 3, 4], dtype=np.uint16)
    path = write_file(
        tmp_path,
        "ras.stl",
        binary_stl_bytes(
            TETRAHEDRON, header=b"3D Slicer output. SPACE=RAS", attributes=attributes
        ),
    )

    model = open_stl(path)
    records = records_of(stream(model, chunk_bytes=100))

    assert model.space == "RAS"
    assert b"SPACE=LPS" in model.header
    assert b"RAS" not in model.header
    np.testing.assert_array_equal(records["vertices"][..., :2], -TETRAHEDRON[..., :2])
    np.testing.assert_array_equal(records["vertices"][..., 2], TETRAHEDRON[..., 2])
    np.testing.assert_array_equal(records["normal"][:, :2], -normals[:, :2])
    np.testing.assert_array_equal(records["normal"][:, 2], normals[:, 2])
    np.testing.assert_array_equal(records["attr"], attributes)
    np.testing.assert_allclose(
        records["normal"], unit_normals(records["vertices"]), atol=1e-6
    )


def test_lps_header_kept_unchanged(tmp_path):
    """Slicer's current header is written as it is."""
    header = b"3D Slicer output. SPACE=LPS"
    path = write_file(tmp_path, "lps.stl", binary_stl_bytes(TETRAHEDRON, header=header))

    model = open_stl(path, space="RAS")

    assert model.space == "LPS"
    assert model.header == header.ljust(80, b"\x00")
    np.testing.assert_array_equal(model.triangles(), TETRAHEDRON)


def test_ras_ascii_converted_to_lps(tmp_path):
    """An ASCII solid line with SPACE=RAS converts the mesh to LPS."""
    path = write_file(
        tmp_path, "ras.stl", ascii_stl(TETRAHEDRON, name="ascii SPACE=RAS")
    )

    model = open_stl(path)

    assert model.space == "RAS"
    expected = TETRAHEDRON * np.array([-1, -1, 1], dtype=np.float32)
    np.testing.assert_array_equal(model.triangles(), expected)
    assert b"SPACE=LPS" in stream(model)[:80]


def test_space_argument_without_comment(tmp_path):
    """The space argument applies when the header has no SPACE comment."""
    path = write_file(tmp_path, "plain.stl", binary_stl_bytes(TETRAHEDRON))

    lps = open_stl(path)
    ras = open_stl(path, space="ras")

    assert lps.space == "LPS"
    assert ras.space == "RAS"
    np.testing.assert_array_equal(lps.triangles(), TETRAHEDRON)
    np.testing.assert_array_equal(ras.triangles()[..., :2], -TETRAHEDRON[..., :2])
    assert b"SPACE=LPS" in ras.header
    assert b"binary test mesh" in ras.header


def test_invalid_space_rejected(tmp_path):
    """A space other than LPS or RAS raises STLError naming the value."""
    path = write_file(tmp_path, "plain.stl", binary_stl_bytes(TETRAHEDRON))

    with pytest.raises(STLError, match="'XYZ'.*plain.stl"):
        open_stl(path, space="XYZ")


# ASCII variants


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_ascii_line_endings(tmp_path, newline):
    """LF, CRLF and CR-only files give the same triangles and normals."""
    vertices = random_tetrahedra(20)
    path = write_file(tmp_path, "endings.stl", ascii_stl(vertices, newline=newline))

    model = open_stl(path)
    records = records_of(stream(model))

    assert model.source_format == "ascii"
    assert model.triangle_count == 20
    expected = np.array(
        [[float(f"{v:.6e}") for v in row] for row in vertices.reshape(-1, 3)]
    )
    np.testing.assert_array_equal(
        records["vertices"].reshape(-1, 3), expected.astype(np.float32)
    )
    np.testing.assert_allclose(records["normal"], unit_normals(vertices), atol=1e-6)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_ascii_line_endings_small_blocks(tmp_path, small_ascii_blocks, newline):
    """Line endings split across parse blocks still give the same triangles."""
    vertices = random_tetrahedra(20)
    path = write_file(tmp_path, "endings.stl", ascii_stl(vertices, newline=newline))

    np.testing.assert_allclose(open_stl(path).triangles(), vertices, rtol=1e-6)


def test_ascii_multiple_solids_kept(tmp_path):
    """Every solid block of a file contributes its triangles."""
    first = random_tetrahedra(3, seed=1)
    second = random_tetrahedra(5, seed=2)
    data = ascii_stl(first, name="first") + b"\n" + ascii_stl(second, name="second")
    path = write_file(tmp_path, "two.stl", data)

    model = open_stl(path)

    assert model.triangle_count == 8
    np.testing.assert_allclose(
        model.triangles(), np.concatenate([first, second]), rtol=1e-6
    )


def test_ascii_solid_without_endsolid_before_next(tmp_path):
    """A solid that starts before the previous one ended keeps both."""
    first = ascii_stl(TETRAHEDRON[:2], name="a").replace(b"endsolid a\n", b"")
    path = write_file(tmp_path, "nested.stl", first + ascii_stl(TETRAHEDRON[2:]))

    np.testing.assert_array_equal(open_stl(path).triangles(), TETRAHEDRON)


@pytest.mark.parametrize(
    "text, value",
    [
        ("1.5e+02", 150.0),
        ("-2E-3", -0.002),
        ("+3.25E1", 32.5),
        (".5", 0.5),
        ("7.", 7.0),
        ("-0", -0.0),
        ("1e-45", 1e-45),
        ("0.1", 0.1),
    ],
)
def test_ascii_number_forms(tmp_path, text, value):
    """Exponents, signs and short forms parse as float() then float32."""
    facet = (
        f"solid n\nfacet normal 0 0 1\nouter loop\nvertex {text} 0 0\n"
        "vertex 0 1 0\nvertex 0 0 1\nendloop\nendfacet\nendsolid n\n"
    )
    path = write_file(tmp_path, "numbers.stl", facet.encode())

    triangles = open_stl(path).triangles()

    assert triangles[0, 0, 0] == np.float32(value)
    assert np.signbit(triangles[0, 0, 0]) == np.signbit(value)


def test_ascii_whitespace_variants(tmp_path):
    """Leading tabs, blank lines, runs of spaces and a missing endsolid parse."""
    text = (
        b"\n  \t solid   spaced \t\n\n"
        b"\tfacet\tnormal 0 0 1   \n\n"
        b"  \t  outer  loop\n"
        b"vertex 1 2 3\n   vertex\t4 5 6\n\t\tvertex 7   8 9\n"
        b"\n\n endloop \n endfacet\n\n  "
    )
    path = write_file(tmp_path, "spaces.stl", text)

    model = open_stl(path)

    np.testing.assert_array_equal(
        model.triangles(), [[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]
    )


@pytest.mark.parametrize(
    "ending", [b"endsolid part", b"end solid part", b"END SOLID", b"endsolid", b""]
)
def test_ascii_endsolid_variants(tmp_path, ending):
    """endsolid, end solid, uppercase, without name or missing are accepted."""
    text = ascii_stl(TETRAHEDRON).replace(b"endsolid part\n", ending + b"\n")
    path = write_file(tmp_path, "ending.stl", text)

    np.testing.assert_array_equal(open_stl(path).triangles(), TETRAHEDRON)


@pytest.mark.parametrize(
    "name", ["Leber ü 肝臓".encode("utf-8"), b"caf\xe9 latin-1", b"\xff\xfe"]
)
def test_ascii_non_ascii_solid_name(tmp_path, name):
    """Non-ASCII solid names in any encoding are skipped."""
    text = b"solid " + name + ascii_stl(TETRAHEDRON)[len(b"solid part") :]
    path = write_file(tmp_path, "name.stl", text)

    model = open_stl(path)

    np.testing.assert_array_equal(model.triangles(), TETRAHEDRON)
    assert model.header.isascii()


def test_ascii_utf8_bom_accepted(tmp_path):
    """A UTF-8 byte order mark before 'solid' is skipped."""
    path = write_file(tmp_path, "bom.stl", b"\xef\xbb\xbf" + ascii_stl(TETRAHEDRON))

    np.testing.assert_array_equal(open_stl(path).triangles(), TETRAHEDRON)


def test_ascii_uppercase_keywords(tmp_path):
    """Uppercase keywords parse like lowercase ones."""
    text = ascii_stl(TETRAHEDRON).upper()
    path = write_file(tmp_path, "upper.stl", text)

    np.testing.assert_array_equal(open_stl(path).triangles(), TETRAHEDRON)


def test_ascii_line_parser_matches_fast_parser(shared_data, tmp_path, monkeypatch):
    """The line parser alone gives the triangles of the vectorized parser."""
    vertices = random_tetrahedra(50)
    files = [
        shared_data / "stl" / "moon-ascii-crlf.stl",
        write_file(
            tmp_path,
            "formats.stl",
            ascii_stl(vertices, number=lambda v: repr(float(v))),
        ),
        write_file(tmp_path, "short.stl", ascii_stl(vertices, number="{:.3g}".format)),
    ]
    fast = [open_stl(path).triangles() for path in files]

    monkeypatch.setattr(stl_module, "_parse_facets_fast", lambda *args: None)
    by_line = [open_stl(path).triangles() for path in files]

    for fast_triangles, line_triangles in zip(fast, by_line):
        np.testing.assert_array_equal(fast_triangles, line_triangles)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_ascii_common_layouts_take_fast_path(tmp_path, monkeypatch, newline):
    """Usual ASCII layouts never need the slower line parser."""
    vertices = random_tetrahedra(30)
    vertices[::3] = vertices[::3].round()
    text = ascii_stl(vertices, newline=newline, number="{:.9g}".format)
    files = [
        write_file(tmp_path, "lower.stl", text),
        write_file(tmp_path, "upper.stl", text.upper()),
        write_file(tmp_path, "exponent.stl", ascii_stl(vertices, newline=newline)),
    ]

    def fail(*args):
        raise AssertionError("the line parser was used")

    monkeypatch.setattr(stl_module._AsciiParser, "_parse_block_by_line", fail)
    monkeypatch.setattr(stl_module, "_ASCII_BLOCK_BYTES", 1000)
    for path in files:
        np.testing.assert_allclose(open_stl(path).triangles(), vertices, rtol=1e-6)


def test_ascii_nan_normal_recomputed(tmp_path):
    """NaN normals in ASCII are recomputed and degenerate facets get zero."""
    vertices = np.concatenate([TETRAHEDRON, [[[0, 0, 0], [1, 1, 1], [2, 2, 2]]]])
    normals = np.full((5, 3), np.nan, dtype=np.float32)
    path = write_file(tmp_path, "nan.stl", ascii_stl(vertices, normals))

    records = records_of(stream(open_stl(path)))

    np.testing.assert_allclose(records["normal"][:4], unit_normals(TETRAHEDRON))
    np.testing.assert_array_equal(records["normal"][4], [0, 0, 0])


@pytest.mark.parametrize("bad_value", ["nan", "inf", "-Infinity", "1e39"])
def test_ascii_nonfinite_vertex_rejected(tmp_path, bad_value):
    """A vertex that is not a finite float32 names the line and triangle index."""
    vertices = random_tetrahedra(5)
    text = ascii_stl(vertices).decode().splitlines()
    # List index of the third vertex of facet 3: line 0 is the solid line and
    # each facet has 7 lines.
    line = 1 + 3 * 7 + 4
    text[line] = f"      vertex 1 {bad_value} 2"
    path = write_file(tmp_path, "bad.stl", ("\n".join(text) + "\n").encode())

    with pytest.raises(STLError) as raised:
        open_stl(path)
    message = str(raised.value)
    assert "bad.stl" in message
    assert f"line {line + 1}:" in message
    assert "triangle index 3" in message


# Malformed ASCII, reported with its line number

FACET = [
    "facet normal 0 0 1",
    "outer loop",
    "vertex 0 0 0",
    "vertex 1 0 0",
    "vertex 0 1 0",
    "endloop",
    "endfacet",
]

MALFORMED_ASCII = {
    "misspelled keyword": (
        ["solid a", *FACET[:3], "vertx 1 0 0", *FACET[4:]],
        5,
        "expected 'vertex', found 'vertx'",
    ),
    "keyword of the same length": (
        ["solid a", *FACET[:3], "vortex 1 0 0", *FACET[4:]],
        5,
        "expected 'vertex', found 'vortex'",
    ),
    "invalid number": (
        ["solid a", *FACET[:2], "vertex 0 1.2.3 0", *FACET[3:]],
        4,
        "invalid number '1.2.3'",
    ),
    "missing number": (
        ["solid a", *FACET[:3], "vertex 1 0", *FACET[4:]],
        6,
        "invalid number 'vertex'",
    ),
    "missing endloop": (
        ["solid a", *FACET[:5], *FACET[6:]],
        7,
        "expected 'endloop', found 'endfacet'",
    ),
    "four vertices": (
        ["solid a", *FACET[:5], "vertex 1 1 0", *FACET[5:]],
        7,
        "expected 'endloop', found 'vertex'",
    ),
    "text between facets": (
        ["solid a", *FACET, "  hello", *FACET],
        9,
        "expected 'facet' or 'endsolid', found 'hello'",
    ),
    "facet after endsolid": (
        ["solid a", *FACET, "endsolid a", "", *FACET],
        11,
        "'facet' outside a solid",
    ),
    "endsolid without solid": (
        ["solid a", *FACET, "endsolid a", "endsolid b"],
        10,
        "'endsolid' without a matching 'solid'",
    ),
    "solid inside facet": (
        ["solid a", *FACET[:4], "solid b", *FACET[4:]],
        6,
        "expected 'vertex', found 'solid'",
    ),
    "cut inside facet": (
        ["solid a", *FACET, *FACET[:4]],
        9,
        "ends inside the facet that starts at line 9",
    ),
}


@pytest.mark.parametrize("block_bytes", [None, 13])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("case", sorted(MALFORMED_ASCII))
def test_malformed_ascii_names_line(tmp_path, monkeypatch, case, newline, block_bytes):
    """Malformed ASCII raises STLError with the file and the right line number."""
    lines, line_number, reason = MALFORMED_ASCII[case]
    if block_bytes is not None:
        monkeypatch.setattr(stl_module, "_ASCII_BLOCK_BYTES", block_bytes)
    path = write_file(tmp_path, "bad.stl", (newline.join(lines) + newline).encode())

    with pytest.raises(STLError) as raised:
        open_stl(path)
    message = str(raised.value)
    assert str(path) in message
    assert f"line {line_number}" in message
    assert reason in message


def test_ascii_control_byte_names_line(tmp_path):
    """A control byte after the first 4 KiB is reported with its line."""
    text = ascii_stl(random_tetrahedra(40)).decode().splitlines()
    text[250] = text[250].replace("vertex", "vertex\x01")
    path = write_file(tmp_path, "control.stl", ("\n".join(text) + "\n").encode())

    with pytest.raises(STLError, match="line 251: expected 'vertex'"):
        open_stl(path)


def test_ascii_no_facets_rejected(tmp_path):
    """An ASCII file with a solid but no facet has zero triangles."""
    path = write_file(tmp_path, "hollow.stl", b"solid hollow\nendsolid hollow\n")

    with pytest.raises(STLError, match="hollow.stl contains no triangles"):
        open_stl(path)


def test_ascii_parsing_memory_bounded(tmp_path, monkeypatch):
    """Parsing ASCII allocates about the output plus a few parse blocks."""
    monkeypatch.setattr(stl_module, "_ASCII_BLOCK_BYTES", 256 << 10)
    path = write_file(tmp_path, "big.stl", ascii_stl(random_tetrahedra(40_000)))
    output_bytes = 50 * 40_000

    tracemalloc.start()
    try:
        model = open_stl(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert model.triangle_count == 40_000
    assert path.stat().st_size > 4 * output_bytes
    assert peak < output_bytes + (4 << 20), f"peak allocation {peak} bytes"


def test_ascii_progress_and_cancel(tmp_path):
    """Progress counts bytes up to the file size, and Cancelled stops parsing."""
    path = write_file(tmp_path, "part.stl", ascii_stl(TETRAHEDRON))
    calls = []

    open_stl(path, progress=lambda done, total, message: calls.append((done, total)))

    size = path.stat().st_size
    assert calls[-1] == (size, size)
    assert all(total == size for _, total in calls)

    def cancel(done, total, message):
        raise Cancelled()

    with pytest.raises(Cancelled):
        open_stl(path, progress=cancel)


# Files that are not valid STL


def test_missing_file_rejected(tmp_path):
    with pytest.raises(STLError, match="not found: .*absent.stl"):
        open_stl(tmp_path / "absent.stl")


def test_folder_rejected(tmp_path):
    with pytest.raises(STLError, match="is a folder"):
        open_stl(tmp_path)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "is empty"),
        (b"header only".ljust(80, b"\x00"), "it is 80 bytes, shorter than the 84-byte"),
        (b"short", "it is 5 bytes"),
        (b"no triangles".ljust(80, b"\x00") + b"\x00" * 4, "contains no triangles"),
    ],
)
def test_short_files_rejected(tmp_path, data, reason):
    """Empty, header-only and zero-triangle files raise with the reason."""
    path = write_file(tmp_path, "short.stl", data)

    with pytest.raises(STLError) as raised:
        open_stl(path)
    assert "short.stl" in str(raised.value)
    assert reason in str(raised.value)


@pytest.mark.parametrize(
    "count, size, expected, remark",
    [
        (4, 84 + 50 * 3, 84 + 50 * 4, "50 bytes short"),
        (4, 84 + 50 * 4 + 7, 84 + 50 * 4, "7 bytes too long"),
        (0, 84 + 50 * 4, 84, "200 bytes too long"),
        (2**31, 84 + 50 * 4, 84 + 50 * 2**31, "truncated or not STL"),
        (2**32 - 1, 84 + 50 * 4, 84 + 50 * (2**32 - 1), "truncated or not STL"),
    ],
)
def test_count_size_mismatch_rejected(tmp_path, count, size, expected, remark):
    """A count that disagrees with the size names both sizes."""
    data = binary_stl_bytes(random_tetrahedra(5), count=count)[:size]
    data = data.ljust(size, b"\x00")
    path = write_file(tmp_path, "mismatch.stl", data)

    with pytest.raises(STLError) as raised:
        open_stl(path)
    message = str(raised.value)
    assert "mismatch.stl" in message
    assert f"triangle count at byte 80 is {count}" in message
    assert f"should be {expected} bytes" in message
    assert f"but it is {size} bytes" in message
    assert remark in message


def test_truncated_solid_header_binary_rejected(tmp_path):
    """A truncated binary file with a 'solid' header is not taken for ASCII."""
    data = binary_stl_bytes(TETRAHEDRON, header=b"solid cad")[:-30]
    path = write_file(tmp_path, "cut.stl", data)

    with pytest.raises(STLError) as raised:
        open_stl(path)
    message = str(raised.value)
    assert "should be 284 bytes, but it is 254 bytes" in message
    assert "not ASCII STL either" in message


def test_images_and_dicom_rejected(shared_data, ct_small):
    """Real PNG, JPEG and DICOM files are named as what they are."""
    cases = [
        (shared_data / "screenshots" / "slicer-view.png", "a PNG image"),
        (shared_data / "screenshots" / "workstation-view.jpg", "a JPEG image"),
        (ct_small, "a DICOM file"),
    ]
    for path, kind in cases:
        with pytest.raises(STLError) as raised:
            open_stl(path)
        assert str(path) in str(raised.value)
        assert f"is {kind}, not an STL file" in str(raised.value)


def test_random_bytes_rejected(tmp_path):
    """Random bytes are not STL."""
    generator = np.random.default_rng(7)
    path = write_file(tmp_path, "noise.stl", generator.bytes(10_000))

    with pytest.raises(STLError, match="noise.stl.*truncated or not STL"):
        open_stl(path)


def test_read_stl_triangles_rejects_bad_sizes():
    """read_stl_triangles checks the length against the count."""
    data = binary_stl_bytes(TETRAHEDRON)

    np.testing.assert_array_equal(read_stl_triangles(data), TETRAHEDRON)
    with pytest.raises(STLError, match="shorter than the 84-byte"):
        read_stl_triangles(data[:83])
    with pytest.raises(STLError, match="triangle count 4 requires 284 bytes"):
        read_stl_triangles(data[:-1])


# Random input: a model or STLError, never another exception

BASE_BINARY = binary_stl_bytes(random_tetrahedra(6), header=b"solid fuzz")

ASCII_WORDS = st.sampled_from(
    [
        "solid",
        "endsolid",
        "end",
        "facet",
        "normal",
        "outer",
        "loop",
        "vertex",
        "endloop",
        "endfacet",
        "0",
        "-1.5e+02",
        "nan",
        "inf",
        "1e39",
        "1..2",
        "\x00",
        "\u00fc",
        " ",
        "\t",
        "\n",
        "\r\n",
        "\r",
    ]
)


def open_and_stream(path: Path) -> None:
    """Open and stream ``path``, accepting only success or STLError."""
    try:
        model = open_stl(path)
        data = stream(model, chunk_bytes=120)
    except STLError:
        return
    assert len(read_stl_triangles(data)) == model.triangle_count


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    length=st.integers(0, len(BASE_BINARY)),
    flips=st.lists(st.integers(0, 8 * len(BASE_BINARY) - 1), max_size=6),
)
def test_mutated_binary_model_or_error(tmp_path, length, flips):
    """Truncated or bit-flipped binary STL opens or raises STLError."""
    data = bytearray(BASE_BINARY)
    for bit in flips:
        data[bit // 8] ^= 1 << (bit % 8)
    open_and_stream(write_file(tmp_path, "mutated.stl", bytes(data[:length])))


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    words=st.lists(ASCII_WORDS, max_size=80),
    facets=st.integers(0, 3),
    block_bytes=st.sampled_from([7, 64, 1 << 20]),
)
def test_random_ascii_model_or_error(tmp_path, words, facets, block_bytes):
    """Random ASCII after valid facets opens or raises STLError."""
    prefix = ascii_stl(TETRAHEDRON[:facets]).replace(b"endsolid part\n", b"")
    text = prefix + " ".join(words).encode("utf-8")
    original = stl_module._ASCII_BLOCK_BYTES
    stl_module._ASCII_BLOCK_BYTES = block_bytes
    try:
        open_and_stream(write_file(tmp_path, "random.stl", text))
    finally:
        stl_module._ASCII_BLOCK_BYTES = original


NUMBER_FORMATS = ["{!r}", "{:e}", "{:E}", "{:.3f}", "{:g}", "{:+.6e}", "{:.9g}"]


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_random_layout_ascii_parses_exactly(tmp_path, data):
    """Valid ASCII of random layout gives float32(float(text)) for each number."""
    newline = data.draw(st.sampled_from(["\n", "\r\n", "\r"]))
    case = data.draw(st.sampled_from([str.lower, str.upper, str.title]))
    block_bytes = data.draw(st.sampled_from([5, 64, 1 << 20]))
    separators = st.sampled_from([" ", "  ", "\t", " \t "])
    coordinates = st.floats(-1e6, 1e6, width=32)

    def line(*words):
        indent = data.draw(st.sampled_from(["", "  ", "\t"]))
        return indent + data.draw(separators).join(words)

    lines = [line(case("solid"), "random")]
    rows = []
    for _ in range(data.draw(st.integers(1, 6))):
        texts = [
            data.draw(st.sampled_from(NUMBER_FORMATS)).format(data.draw(coordinates))
            for _ in range(12)
        ]
        rows.append([float(text) for text in texts])
        lines.append(line(case("facet"), case("normal"), *texts[:3]))
        lines.append(line(case("outer"), case("loop")))
        for vertex in range(3):
            lines.append(line(case("vertex"), *texts[3 + 3 * vertex : 6 + 3 * vertex]))
        lines.append(line(case("endloop")))
        lines.append(line(case("endfacet")))
        if data.draw(st.booleans()):
            lines.append("")
    lines.append(line(case("endsolid"), "random"))
    path = write_file(tmp_path, "layout.stl", (newline.join(lines) + newline).encode())

    original = stl_module._ASCII_BLOCK_BYTES
    stl_module._ASCII_BLOCK_BYTES = block_bytes
    try:
        records = records_of(stream(open_stl(path)))
    finally:
        stl_module._ASCII_BLOCK_BYTES = original

    expected = np.array(rows).astype(np.float32)
    np.testing.assert_array_equal(records["normal"], expected[:, :3])
    np.testing.assert_array_equal(records["vertices"].reshape(-1, 9), expected[:, 3:])
