"""Hostile STL input: broken CAD exports, odd ASCII layouts and random bytes.

Every input either opens as a model whose binary STL round-trips into an
Encapsulated STL object, or raises STLError with a message that names the file.
No other exception, no hang and no allocation in proportion to a forged count.

Set MEDIA2DICOM_HYPOTHESIS_EXAMPLES (for example to 5000) for a longer
property-based run than the fixed number of examples used in CI.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from Media2DICOMLib import stl as stl_module
from Media2DICOMLib.encapsulated_stl import (
    ENCAPSULATED_STL_STORAGE,
    write_encapsulated_stl,
)
from Media2DICOMLib.errors import STLError
from Media2DICOMLib.new_series import SeriesInfo
from Media2DICOMLib.source_study import read_source_series
from Media2DICOMLib.stl import TRIANGLE_DTYPE, open_stl, read_stl_triangles

from dicom_checks import assert_dciodvfy_clean

REPOSITORY = Path(__file__).resolve().parents[2]

# Far above the few milliseconds one small example takes, so only a hang or a
# runaway loop reaches it.
MAX_SECONDS_PER_EXAMPLE = 30.0
# Peak Python and numpy allocation allowed while one small file is read. A
# reader that trusted a forged count of 2**32 - 1 would need about 200 GB.
MAX_BYTES_PER_EXAMPLE = 16 << 20

TRIANGLES = np.array(
    [
        [[0, 0, 0], [0, 10, 0], [10, 0, 0]],
        [[0, 0, 0], [10, 0, 0], [0, 0, 10]],
        [[0, 0, 0], [0, 0, 10], [0, 10, 0]],
        [[10, 0, 0], [0, 10, 0], [0, 0, 10]],
    ],
    dtype=np.float32,
)


def examples(default: int) -> int:
    """Return ``default``, or the count in MEDIA2DICOM_HYPOTHESIS_EXAMPLES when set."""
    requested = os.environ.get("MEDIA2DICOM_HYPOTHESIS_EXAMPLES")
    return int(requested) if requested else default


def property_settings(default: int) -> settings:
    return settings(
        max_examples=examples(default),
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


def binary_stl(
    triangles: np.ndarray = TRIANGLES,
    header: bytes = b"hostile test mesh",
    count: Optional[int] = None,
    attributes=0,
    normals: Optional[np.ndarray] = None,
) -> bytes:
    records = np.zeros(len(triangles), TRIANGLE_DTYPE)
    records["vertices"] = triangles
    records["normal"] = 0.0 if normals is None else normals
    records["attr"] = attributes
    count = len(triangles) if count is None else count
    return header.ljust(80, b"\x00")[:80] + struct.pack("<I", count) + records.tobytes()


def facet_lines(triangle, normal: str = "0 0 1", indent: str = "  ") -> list:
    lines = [f"{indent}facet normal {normal}", f"{indent}  outer loop"]
    for vertex in triangle:
        coordinates = " ".join(f"{value:g}" for value in vertex)
        lines.append(f"{indent}    vertex {coordinates}")
    lines += [f"{indent}  endloop", f"{indent}endfacet"]
    return lines


def ascii_stl(
    triangles: np.ndarray = TRIANGLES,
    name: str = "part",
    newline: str = "\n",
    normal: str = "0 0 1",
    ending: Optional[str] = None,
    encoding: str = "utf-8",
) -> bytes:
    lines = [f"solid {name}"]
    for triangle in triangles:
        lines += facet_lines(triangle, normal)
    if ending is None:
        ending = f"endsolid {name}"
    if ending:
        lines.append(ending)
    return (newline.join(lines) + newline).encode(encoding)


def several_solids() -> bytes:
    parts = [ascii_stl(TRIANGLES[:2], "first"), ascii_stl(TRIANGLES[2:], "second")]
    return b"".join(parts)


def exponent_numbers() -> bytes:
    lines = ["solid exponents", "facet normal 0.0E+00 0e0 1.000000e+000", "outer loop"]
    lines += ["vertex 1.5E+01 -2.5e-01 3e2", "vertex 1.0E1 0E0 0", "vertex 0 1e+1 0"]
    lines += ["endloop", "endfacet", "endsolid exponents"]
    return ("\n".join(lines) + "\n").encode()


def tabs_and_blank_lines() -> bytes:
    text = ascii_stl().decode()
    text = text.replace("  ", "\t").replace(" ", "\t \t")
    return ("\n\n" + text.replace("\n", "\n\n") + "\n\n").encode()


def vendor_color_binary() -> bytes:
    # Materialise Magics: "COLOR=" and an RGBA byte quadruple in the header,
    # and a per-facet colour with bit 15 set in each attribute field.
    header = b"COLOR=\xc8\x32\x32\xff,MATERIAL=\xff\xff\xff\xff\x80\x80\x80\xff"
    return binary_stl(header=header, attributes=[0x8000 | 0x7C00, 0x03E0, 0x001F, 0])


def degenerate_facets() -> bytes:
    flat = TRIANGLES.copy()
    flat[1] = [[1, 1, 1], [1, 1, 1], [1, 1, 1]]
    flat[2] = [[0, 0, 0], [1, 1, 1], [2, 2, 2]]
    return ascii_stl(flat, normal="nan nan nan")


def png_named_stl() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(200)


@dataclass
class StlCase:
    """One input of the table and what the reader must do with it.

    ``triangles`` is the expected triangle count of an accepted input, or
    None when the reader must raise STLError with every text in ``errors``.
    """

    build: Callable[[], bytes]
    triangles: Optional[int] = None
    errors: tuple = ()
    vertices: Optional[np.ndarray] = None
    attributes: Optional[list] = None
    header_kept: Optional[bool] = None


STL_CASES = {
    "binary with solid header": StlCase(
        lambda: binary_stl(header=b"solid exported by CAD"),
        triangles=4,
        vertices=TRIANGLES,
        header_kept=False,
    ),
    "header only": StlCase(
        lambda: b"header only".ljust(80, b" "),
        errors=("it is 80 bytes, shorter than the 84-byte",),
    ),
    "zero triangles": StlCase(
        lambda: binary_stl(TRIANGLES[:0]),
        errors=("contains no triangles (its triangle count is 0)",),
    ),
    "count 0 with data": StlCase(
        lambda: binary_stl(count=0),
        errors=("triangle count at byte 80 is 0", "200 bytes too long"),
    ),
    "count larger than data": StlCase(
        lambda: binary_stl(count=9),
        errors=("triangle count at byte 80 is 9", "250 bytes short"),
    ),
    "trailing bytes": StlCase(
        lambda: binary_stl() + b"\x00\x0a\x1a",
        errors=("3 bytes too long", "padded or not STL"),
    ),
    "count 2**31 on small file": StlCase(
        lambda: binary_stl(count=2**31),
        errors=(f"triangle count at byte 80 is {2**31}", "truncated or not STL"),
    ),
    "count 2**31 - 1 on small file": StlCase(
        lambda: binary_stl(count=2**31 - 1),
        errors=(f"should be {84 + 50 * (2**31 - 1)} bytes",),
    ),
    "count 2**32 - 1 on small file": StlCase(
        lambda: binary_stl(count=2**32 - 1),
        errors=(f"should be {84 + 50 * (2**32 - 1)} bytes", "but it is 284 bytes"),
    ),
    "ascii CRLF": StlCase(
        lambda: ascii_stl(newline="\r\n"), triangles=4, vertices=TRIANGLES
    ),
    "ascii CR only": StlCase(
        lambda: ascii_stl(newline="\r"), triangles=4, vertices=TRIANGLES
    ),
    "ascii tabs and blank lines": StlCase(
        tabs_and_blank_lines, triangles=4, vertices=TRIANGLES
    ),
    "ascii several solids": StlCase(several_solids, triangles=4, vertices=TRIANGLES),
    "ascii missing endsolid": StlCase(
        lambda: ascii_stl(ending=""), triangles=4, vertices=TRIANGLES
    ),
    "ascii end solid": StlCase(
        lambda: ascii_stl(ending="end solid part"), triangles=4, vertices=TRIANGLES
    ),
    "ascii bare endsolid": StlCase(
        lambda: ascii_stl(ending="endsolid"), triangles=4, vertices=TRIANGLES
    ),
    "ascii exponents": StlCase(
        exponent_numbers,
        triangles=1,
        vertices=np.array([[[15, -0.25, 300], [10, 0, 0], [0, 10, 0]]], np.float32),
    ),
    "ascii nan normals": StlCase(
        lambda: ascii_stl(normal="nan nan nan"), triangles=4, vertices=TRIANGLES
    ),
    "ascii -nan(ind) normals": StlCase(
        lambda: ascii_stl(normal="-nan(ind) -nan(ind) -nan(ind)"),
        triangles=4,
        vertices=TRIANGLES,
    ),
    "ascii 1.#QNAN normals": StlCase(
        lambda: ascii_stl(normal="1.#QNAN -1.#IND00 1.#INF"),
        triangles=4,
        vertices=TRIANGLES,
    ),
    "ascii -nan(ind) vertex": StlCase(
        lambda: ascii_stl().replace(b"vertex 0 10 0", b"vertex 0 -nan(ind) 0", 1),
        errors=("line 5", "triangle index 0 has a vertex coordinate that is NaN"),
    ),
    "binary nan normals": StlCase(
        lambda: binary_stl(normals=np.full((4, 3), np.nan, np.float32)),
        triangles=4,
        vertices=TRIANGLES,
    ),
    "degenerate facets": StlCase(degenerate_facets, triangles=4),
    "vendor COLOR= header and attribute bytes": StlCase(
        vendor_color_binary,
        triangles=4,
        vertices=TRIANGLES,
        attributes=[0xFC00, 0x03E0, 0x001F, 0],
        header_kept=True,
    ),
    "ascii UTF-8 solid name": StlCase(
        lambda: ascii_stl(name="Leber_\u00fc_\u809d\u81df"), triangles=4
    ),
    "ascii Latin-1 solid name": StlCase(
        lambda: ascii_stl(name="Leber_\u00fc", encoding="latin-1"), triangles=4
    ),
    "binary non-ASCII header": StlCase(
        lambda: binary_stl(header="Kn\u00f6chel \u9aa8".encode("utf-8")),
        triangles=4,
        header_kept=True,
    ),
    "PNG named .stl": StlCase(png_named_stl, errors=("is a PNG image", "not an STL")),
    "UTF-16 ASCII STL": StlCase(
        lambda: ascii_stl(encoding="utf-16"), errors=("truncated or not STL",)
    ),
    "facets without solid": StlCase(
        lambda: "\n".join(facet_lines(TRIANGLES[0])).encode() + b"\n",
        errors=("truncated or not STL",),
    ),
}


@pytest.fixture(scope="module")
def source(ct_small):
    return read_source_series(ct_small)


@pytest.mark.parametrize("name", sorted(STL_CASES))
def test_stl_table_case(tmp_path, source, name):
    """Each hostile STL opens as the expected model or raises a clear STLError."""
    case = STL_CASES[name]
    data = case.build()
    path = tmp_path / "input.stl"
    path.write_bytes(data)

    if case.triangles is None:
        with pytest.raises(STLError) as raised:
            open_stl(path)
        message = str(raised.value)
        assert str(path) in message
        for text in case.errors:
            assert text in message
        return

    model = open_stl(path)
    streamed = b"".join(model.iter_chunks())
    assert model.triangle_count == case.triangles
    assert len(streamed) == 84 + 50 * case.triangles
    assert not streamed[:80].lower().startswith(b"solid")

    records = np.frombuffer(streamed, TRIANGLE_DTYPE, offset=84)
    assert np.isfinite(records["normal"]).all()
    assert np.isfinite(records["vertices"]).all()
    if case.vertices is not None:
        np.testing.assert_array_equal(records["vertices"], case.vertices)
    if case.attributes is not None:
        assert records["attr"].tolist() == case.attributes
    if case.header_kept is not None:
        assert (streamed[:80] == data[:80]) is case.header_kept

    output = tmp_path / "model.dcm"
    series = SeriesInfo(series_number=901, series_description="Hostile STL")
    write_encapsulated_stl(source, model, output, series)
    assert_dciodvfy_clean(output)

    dataset = pydicom.dcmread(output)
    length = int(dataset.EncapsulatedDocumentLength)
    document = bytes(dataset.EncapsulatedDocument)
    assert dataset.SOPClassUID == ENCAPSULATED_STL_STORAGE
    assert dataset.Modality == "M3D"
    assert dataset.MIMETypeOfEncapsulatedDocument == "model/stl"
    assert dataset.StudyInstanceUID == source.study_instance_uid
    assert dataset.PatientID == source.header.PatientID
    assert length == len(streamed)
    assert len(document) == length + length % 2
    assert document[:length] == streamed
    assert len(read_stl_triangles(document[:length])) == case.triangles


def test_degenerate_facets_get_zero_normals(tmp_path):
    """Zero-area facets with NaN normals get a zero normal, others a unit normal."""
    path = tmp_path / "flat.stl"
    path.write_bytes(degenerate_facets())

    records = np.frombuffer(
        b"".join(open_stl(path).iter_chunks()), TRIANGLE_DTYPE, offset=84
    )

    lengths = np.linalg.norm(records["normal"].astype(np.float64), axis=1)
    assert lengths[0] == pytest.approx(1.0)
    assert lengths[1] == 0.0
    assert lengths[2] == 0.0
    assert lengths[3] == pytest.approx(1.0)


# Property-based: results are a model or STLError, in bounded time and memory


def open_within_bounds(path: Path) -> Optional[bytes]:
    """Open and stream ``path``; return the binary STL, or None on STLError.

    Any other exception fails the test, and so do more than
    MAX_SECONDS_PER_EXAMPLE seconds or MAX_BYTES_PER_EXAMPLE bytes allocated.
    """
    started = time.monotonic()
    tracemalloc.start()
    try:
        try:
            model = open_stl(path)
            data = b"".join(model.iter_chunks(chunk_bytes=150))
        except STLError as error:
            assert str(path) in str(error)
            data = None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - started

    assert elapsed < MAX_SECONDS_PER_EXAMPLE, f"reading took {elapsed:.1f} s"
    assert peak < MAX_BYTES_PER_EXAMPLE, f"peak allocation {peak} bytes"
    if data is not None:
        assert len(read_stl_triangles(data)) == model.triangle_count
    return data


@property_settings(300)
@given(
    count=st.one_of(
        st.integers(0, 2**32 - 1),
        st.integers(2**31 - 8, 2**31 + 8),
        st.integers(2**32 - 16, 2**32 - 1),
        st.integers(0, 12),
    ),
    triangles=st.integers(0, 6),
    extra=st.binary(max_size=60),
    solid_header=st.booleans(),
)
def test_forged_count_model_or_error(tmp_path, count, triangles, extra, solid_header):
    """Any count on a small file opens only when it matches the size."""
    vertices = np.resize(TRIANGLES, (triangles, 3, 3))
    header = b"solid forged" if solid_header else b"forged"
    data = binary_stl(vertices, header=header, count=count) + extra
    path = tmp_path / "forged.stl"
    path.write_bytes(data)

    result = open_within_bounds(path)

    if len(data) == 84 + 50 * count and count > 0:
        assert result is not None
        assert struct.unpack_from("<I", result, 80)[0] == count
    elif len(data) != 84 + 50 * count:
        # Only text made of ASCII STL words could open, and these bytes are not.
        assert result is None


VALID_ASCII = ascii_stl(newline="\r\n", name="mutated")


@property_settings(300)
@given(
    cut=st.integers(0, len(VALID_ASCII)),
    replacements=st.lists(
        st.tuples(st.integers(0, len(VALID_ASCII) - 1), st.integers(0, 255)),
        max_size=5,
    ),
    block_bytes=st.sampled_from([11, 64, 1 << 20]),
)
def test_mutated_ascii_model_or_error(tmp_path, cut, replacements, block_bytes):
    """Truncated ASCII STL with replaced bytes opens or raises STLError."""
    data = bytearray(VALID_ASCII)
    for position, value in replacements:
        data[position] = value
    path = tmp_path / "mutated.stl"
    path.write_bytes(bytes(data[:cut]))

    original = stl_module._ASCII_BLOCK_BYTES
    stl_module._ASCII_BLOCK_BYTES = block_bytes
    try:
        result = open_within_bounds(path)
    finally:
        stl_module._ASCII_BLOCK_BYTES = original

    if result is not None:
        assert 1 <= struct.unpack_from("<I", result, 80)[0] <= len(TRIANGLES)


@property_settings(200)
@given(
    text=st.text(
        st.characters(min_codepoint=1, max_codepoint=0x7F), min_size=0, max_size=400
    ),
    prefix=st.sampled_from(["", "solid ", "solid x\nfacet normal 0 0 1\n", "  SOLID"]),
)
def test_random_ascii_text_model_or_error(tmp_path, text, prefix):
    """Random ASCII text, with or without a solid line, opens or raises STLError."""
    path = tmp_path / "text.stl"
    path.write_bytes((prefix + text).encode("ascii"))

    open_within_bounds(path)


# Hang and memory checks in a child process with hard limits

CHILD_SCRIPT = textwrap.dedent("""
    import resource, sys
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from Media2DICOMLib import stl
    from Media2DICOMLib.errors import STLError
    stl._MAX_ASCII_LINE_BYTES = 1 << 20
    try:
        model = stl.open_stl(sys.argv[1])
        for chunk in model.iter_chunks():
            pass
    except STLError as error:
        print("STLError:", error)
    else:
        print("opened", model.triangle_count)
    """)

# Address space of the child: enough for Python and numpy, far too little for a
# reader that allocates what a forged count or an endless line requests.
CHILD_ADDRESS_SPACE = 1 << 30


def ascii_with_long_line() -> bytes:
    return b"solid long\n facet normal " + b"1" * (3 << 20) + b"\n"


def ascii_with_many_solids() -> bytes:
    return b"solid a\nendsolid a\n" * 20_000 + ascii_stl()


@pytest.mark.parametrize(
    "name, build, expected",
    [
        ("count 2**32 - 1", lambda: binary_stl(count=2**32 - 1), "STLError:"),
        ("count 2**31", lambda: binary_stl(count=2**31), "STLError:"),
        ("3 MiB line", ascii_with_long_line, "is longer than 1 MiB"),
        ("20000 empty solids", ascii_with_many_solids, "opened 4"),
    ],
)
def test_reader_in_limited_child(tmp_path, name, build, expected):
    """The reader finishes within a time and address-space limit on hostile files."""
    path = tmp_path / "hostile.stl"
    path.write_bytes(build())
    environment = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    environment["PYTHONPATH"] = str(REPOSITORY)

    # A hang shows as TimeoutExpired, far above the second this normally takes.
    result = subprocess.run(
        [sys.executable, "-c", CHILD_SCRIPT, str(path), str(CHILD_ADDRESS_SPACE)],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )

    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
    assert "MemoryError" not in result.stderr
