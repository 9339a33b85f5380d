"""STL meshes: check binary or ASCII STL and stream it as binary STL in LPS.

Encapsulated STL carries binary STL only, in patient coordinates (LPS
millimetres). :func:`open_stl` checks a file and returns a :class:`StlModel`
whose :meth:`StlModel.iter_chunks` yields the binary STL to encapsulate.

A binary STL is an 80-byte header, a little-endian uint32 triangle count and 50
bytes per triangle: the normal (3 float32), three vertices (9 float32) and a
2-byte attribute field that some exporters use for a colour. A file is binary
exactly when its size is ``84 + 50 * count``. A leading ``solid`` proves nothing
because CAD exporters write it into binary headers too.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from Media2DICOMLib.errors import STLError
from Media2DICOMLib.progress import ProgressCallback, progress_or_default

LOGGER = logging.getLogger(__name__)

HEADER_BYTES = 80
PREAMBLE_BYTES = 84  # the header and the uint32 triangle count
TRIANGLE_BYTES = 50

# One binary STL triangle. numpy packs the fields without padding, so the
# itemsize is 50 and a chunk of the file can be viewed with np.frombuffer.
TRIANGLE_DTYPE = np.dtype(
    [("normal", "<f4", (3,)), ("vertices", "<f4", (3, 3)), ("attr", "<u2")]
)

SPACES = ("LPS", "RAS")

# The coordinate system comment that Slicer writes into STL headers.
_SPACE_COMMENT = re.compile(rb"SPACE\s*=\s*(RAS|LPS)", re.IGNORECASE)

_ASCII_HEADER = b"Media2DICOM output. SPACE=LPS. Converted from ASCII STL."
_REWRITTEN_HEADER_PREFIX = b"Media2DICOM output. SPACE=LPS. Source header: "

_UTF8_BOM = b"\xef\xbb\xbf"
_HEAD_BYTES = 4096

# Bytes that may occur in an ASCII STL: printable ASCII, bytes 128-255 for
# non-ASCII solid names, and the whitespace that bytes.split() separates on.
_CONTROL_SPACES = (b"\t", b"\n", b"\r", b"\x0b", b"\x0c")
_TEXT_BYTES = bytes(range(32, 256)) + b"".join(_CONTROL_SPACES)

# Files that users pick by mistake, named in the error for a clearer message.
_FILE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF-", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (for example 3MF)"),
    (b"\x1f\x8b", "a gzip archive"),
)

# ASCII files are parsed in blocks of this size, so memory stays bounded by the
# triangles read plus about ten times the block (measured with numpy 2.4).
_ASCII_BLOCK_BYTES = 2 << 20
# A longer line cannot be STL, so parsing stops instead of buffering it.
_MAX_ASCII_LINE_BYTES = 64 << 20

# Tokens of one ASCII facet: "#" in the template marks a number, first the three
# of the normal, then the three of each vertex. _FACET_GRAMMAR has None there.
_FACET_TEMPLATE = (
    b"facet normal # # # outer loop vertex # # # vertex # # # vertex # # # "
    b"endloop endfacet"
)
_FACET_GRAMMAR = tuple(
    None if word == b"#" else word for word in _FACET_TEMPLATE.split()
)
_FACET_TOKENS = len(_FACET_GRAMMAR)
_KEYWORD_COLUMNS = tuple(
    (column, word) for column, word in enumerate(_FACET_GRAMMAR) if word is not None
)
_NUMBER_COLUMNS = [column for column, word in enumerate(_FACET_GRAMMAR) if word is None]
_MAX_NUMBER_CHARS = 64

# NaN and infinity spellings that Python's float() rejects: "-nan(ind)" from the
# Microsoft C runtime since Visual Studio 2015, "1.#QNAN", "-1.#IND" and "1.#INF"
# from older Microsoft runtimes (also with digits after them, as in "-1.#IND00"),
# and "nan(...)" with a payload as C's strtod() accepts it. Exporters built with
# these runtimes write them for the normal of a zero-area facet.
_C_RUNTIME_NONFINITE = re.compile(
    rb"[+-]?(?:nan\([0-9a-z_]*\)|1\.#(?:qnan|snan|ind|inf)[0-9e+-]*)", re.IGNORECASE
)

PathLike = Union[str, "os.PathLike[str]"]


class StlModel:
    """A checked STL mesh that streams as binary STL in LPS millimetres.

    Create it with :func:`open_stl`. Binary input stays on disk and is read
    again by each call of :meth:`iter_chunks`. ASCII input is parsed once by
    :func:`open_stl` and its triangles are kept in memory (50 bytes each).

    Attributes
    ----------
    path : pathlib.Path
        The STL file.
    name : str
        Model name: the file stem.
    triangle_count : int
        Number of triangles.
    source_format : str
        ``"binary"`` or ``"ascii"``.
    space : str
        Coordinate system of the file, ``"LPS"`` or ``"RAS"``. RAS meshes are
        converted to LPS on output.
    header : bytes
        The 80-byte header that :meth:`iter_chunks` writes. It never starts with
        ``solid``, and it contains ``SPACE=LPS`` when the mesh was converted from
        RAS or from ASCII.
    byte_length : int
        Size of the binary STL that :meth:`iter_chunks` yields:
        ``84 + 50 * triangle_count``.
    """

    def __init__(
        self,
        path: Path,
        triangle_count: int,
        source_format: str,
        space: str,
        header: bytes,
        records: Optional[List[np.ndarray]] = None,
    ) -> None:
        self.path = path
        self.name = path.stem
        self.triangle_count = triangle_count
        self.source_format = source_format
        self.space = space
        self.header = header
        self.byte_length = PREAMBLE_BYTES + TRIANGLE_BYTES * triangle_count
        # Triangles parsed from ASCII and already in LPS, or None for binary input.
        self._records = records

    def __repr__(self) -> str:
        return (
            f"StlModel({str(self.path)!r}, {self.source_format}, "
            f"{self.triangle_count} triangles, {self.space})"
        )

    def iter_chunks(self, chunk_bytes: int = 4 << 20) -> Iterator[bytes]:
        """Yield the complete binary STL in LPS, in chunks of about ``chunk_bytes``.

        The first chunk starts with the header and the triangle count. Binary
        input is streamed from the file, so memory stays within a few times
        ``chunk_bytes``.
        Normals that are NaN or infinite are recomputed from the vertices.

        Raises
        ------
        STLError
            A vertex is NaN or infinite (the message names the triangle index),
            or the file changed since :func:`open_stl`. Chunks yielded before
            the error belong to an incomplete mesh, so discard them.
        ValueError
            ``chunk_bytes`` is smaller than 1.
        """
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be at least 1, not {chunk_bytes}")
        triangles_per_chunk = max(1, chunk_bytes // TRIANGLE_BYTES)
        if self._records is not None:
            return self._iter_parsed_chunks(triangles_per_chunk)
        return self._iter_file_chunks(triangles_per_chunk)

    def triangles(self) -> np.ndarray:
        """Return the vertices in LPS as an (n, 3, 3) float32 array.

        This loads the whole mesh, so use it only for tests and small meshes.
        """
        if self._records is not None:
            vertices = [records["vertices"] for records in self._records]
            return np.concatenate(vertices).astype(np.float32)
        return read_stl_triangles(b"".join(self.iter_chunks()))

    def write_binary(self, path: PathLike) -> None:
        """Write the binary STL that :meth:`iter_chunks` yields to ``path``.

        The data goes to a temporary file in the same folder, which is renamed to
        ``path`` when complete and removed on error, so ``path`` never contains a
        partial mesh.
        """
        target = Path(path)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            with open(temporary, "wb") as output:
                for chunk in self.iter_chunks():
                    output.write(chunk)
            os.replace(temporary, target)
        except OSError as error:
            _remove_quietly(temporary)
            raise STLError(
                f"Cannot write binary STL {target} from {self.path}: "
                f"{error.strerror or error}. Check that the folder exists and is "
                "writable."
            ) from error
        except BaseException:
            _remove_quietly(temporary)
            raise
        LOGGER.info("Wrote binary STL %s (%d triangles)", target, self.triangle_count)

    def _preamble(self) -> bytes:
        return self.header + struct.pack("<I", self.triangle_count)

    def _iter_parsed_chunks(self, triangles_per_chunk: int) -> Iterator[bytes]:
        pending = [self._preamble()]
        pending_triangles = 0
        for records in self._records:
            for start in range(0, len(records), triangles_per_chunk):
                piece = records[start : start + triangles_per_chunk]
                pending.append(piece.tobytes())
                pending_triangles += len(piece)
                if pending_triangles >= triangles_per_chunk:
                    yield b"".join(pending)
                    pending = []
                    pending_triangles = 0
        if pending:
            yield b"".join(pending)

    def _iter_file_chunks(self, triangles_per_chunk: int) -> Iterator[bytes]:
        repaired_normals = 0
        try:
            file = open(self.path, "rb")
        except OSError as error:
            raise STLError(
                f"Cannot read STL file {self.path}: {error.strerror or error}. "
                "Check that the file still exists and is readable."
            ) from error

        with file:
            preamble = file.read(PREAMBLE_BYTES)
            count = None
            if len(preamble) == PREAMBLE_BYTES:
                count = _triangle_count(preamble)
            if count != self.triangle_count:
                raise STLError(
                    f"STL file {self.path} changed since it was opened: its "
                    f"triangle count is no longer {self.triangle_count}. "
                    "Open it again."
                )

            done = 0
            first_chunk = True
            while done < self.triangle_count:
                chunk_triangles = min(triangles_per_chunk, self.triangle_count - done)
                data = file.read(chunk_triangles * TRIANGLE_BYTES)
                if len(data) != chunk_triangles * TRIANGLE_BYTES:
                    end_index = done + len(data) // TRIANGLE_BYTES
                    raise STLError(
                        f"STL file {self.path} became shorter while it was read: "
                        f"it ends at triangle index {end_index} of "
                        f"{self.triangle_count}. Do not change the file while "
                        "it is converted, then try again."
                    )
                data, repaired = self._convert_binary_triangles(data, done)
                repaired_normals += repaired
                if first_chunk:
                    data = self._preamble() + data
                    first_chunk = False
                yield data
                done += chunk_triangles

            if file.read(1):
                raise STLError(
                    f"STL file {self.path} grew while it was read. Do not change "
                    "the file while it is converted, then try again."
                )

        if repaired_normals:
            LOGGER.warning(
                "Recomputed %d NaN or infinite normals of %s from the vertices",
                repaired_normals,
                self.path,
            )

    def _convert_binary_triangles(
        self, data: bytes, first_index: int
    ) -> Tuple[bytes, int]:
        """Check the vertices of binary triangles and convert them to LPS.

        Returns the triangles to write and the number of recomputed normals.
        """
        records = np.frombuffer(data, TRIANGLE_DTYPE)
        finite = np.isfinite(records["vertices"])
        if not finite.all():
            bad = first_index + int(np.argmin(finite.reshape(len(records), 9).all(1)))
            raise STLError(
                f"Invalid binary STL {self.path}: triangle index {bad} has a "
                "vertex coordinate that is NaN or infinite. Repair or export "
                "the mesh again."
            )

        normals_finite = bool(np.isfinite(records["normal"]).all())
        if normals_finite and self.space == "LPS":
            return data, 0

        records = records.copy()
        repaired = 0 if normals_finite else _repair_normals(records)
        if self.space == "RAS":
            _negate_x_and_y(records)
        return records.tobytes(), repaired


def open_stl(
    path: PathLike,
    space: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
) -> StlModel:
    """Check an STL file and open it as a model to stream as binary STL in LPS.

    The format is decided by the size rule only: the file is binary when its
    size is ``84 + 50 * count``, with ``count`` the uint32 at byte 80, even if
    the header starts with ``solid``. Otherwise it must be ASCII STL, which is
    parsed completely here. Binary triangles are checked later, while
    :meth:`StlModel.iter_chunks` streams them.

    Parameters
    ----------
    path : str or os.PathLike
        The STL file.
    space : {"LPS", "RAS"}, optional
        Coordinate system of the mesh when its header has no ``SPACE=LPS`` or
        ``SPACE=RAS`` comment. The comment wins over this argument. Default LPS.
    progress : callable, optional
        ``progress(done, total, message)`` in bytes, called while ASCII STL is
        parsed. It may raise :class:`Media2DICOMLib.progress.Cancelled`.

    Returns
    -------
    StlModel

    Raises
    ------
    STLError
        The file is missing, empty, not STL, truncated or padded, has no
        triangles, has malformed ASCII (the message gives the line number) or
        a NaN or infinite ASCII vertex, or ``space`` is invalid.
    """
    path = Path(path)
    requested_space = _check_space(space, path)
    size, head = _read_head(path)
    if size == 0:
        raise STLError(f"STL file {path} is empty. Export the model again.")

    if size >= PREAMBLE_BYTES:
        count = _triangle_count(head)
        if size == PREAMBLE_BYTES + TRIANGLE_BYTES * count:
            return _open_binary(path, head[:HEADER_BYTES], count, requested_space)

    if _looks_like_ascii_stl(head):
        return _open_ascii(path, size, requested_space, progress)
    raise STLError(_describe_invalid_file(path, size, head))


def read_stl_triangles(data: bytes) -> np.ndarray:
    """Return the vertices of a binary STL byte string as (n, 3, 3) float32.

    Raises
    ------
    STLError
        The data is shorter than 84 bytes or its size disagrees with its
        triangle count.
    """
    if len(data) < PREAMBLE_BYTES:
        raise STLError(
            f"Binary STL data is {len(data)} bytes, shorter than the "
            f"{PREAMBLE_BYTES}-byte header and triangle count."
        )
    count = _triangle_count(data)
    expected = PREAMBLE_BYTES + TRIANGLE_BYTES * count
    if len(data) != expected:
        raise STLError(
            f"Binary STL data is {len(data)} bytes, but its triangle count "
            f"{count} requires {expected} bytes."
        )
    records = np.frombuffer(data, TRIANGLE_DTYPE, count=count, offset=PREAMBLE_BYTES)
    return records["vertices"].astype(np.float32)


def _check_space(space: Optional[str], path: Path) -> Optional[str]:
    if space is None:
        return None
    normalized = str(space).upper()
    if normalized not in SPACES:
        raise STLError(
            f"Invalid coordinate space {space!r} for STL file {path}: "
            "use 'LPS' or 'RAS'."
        )
    return normalized


def _read_head(path: Path) -> Tuple[int, bytes]:
    """Return the size and the first bytes of ``path``."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            head = file.read(_HEAD_BYTES)
    except FileNotFoundError:
        raise STLError(f"STL file not found: {path}. Check the path.") from None
    except IsADirectoryError:
        raise STLError(f"{path} is a folder, not an STL file.") from None
    except OSError as error:
        raise STLError(
            f"Cannot read STL file {path}: {error.strerror or error}. "
            "Check that the file exists and is readable."
        ) from error
    return size, head


def _triangle_count(data: bytes) -> int:
    return struct.unpack_from("<I", data, HEADER_BYTES)[0]


def _starts_with_solid(data: bytes) -> bool:
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    return data.lstrip().lower().startswith(b"solid")


def _looks_like_ascii_stl(head: bytes) -> bool:
    """Return whether ``head`` starts with ``solid`` and contains only text."""
    return _starts_with_solid(head) and not head.translate(None, _TEXT_BYTES)


def _choose_space(
    path: Path, header_space: Optional[str], requested_space: Optional[str]
) -> str:
    if header_space is None:
        return requested_space or "LPS"
    if requested_space is not None and requested_space != header_space:
        LOGGER.warning(
            "STL file %s has SPACE=%s in its header, which overrides the "
            "requested space %s",
            path,
            header_space,
            requested_space,
        )
    return header_space


def _space_from_comment(text: bytes) -> Optional[str]:
    match = _SPACE_COMMENT.search(text)
    return match.group(1).decode("ascii").upper() if match else None


def _make_header(text: bytes) -> bytes:
    return text[:HEADER_BYTES].ljust(HEADER_BYTES, b"\x00")


def _binary_output_header(original: bytes, converted_from_ras: bool) -> bytes:
    """Return the header to write for binary input.

    The original header is kept unless it starts with ``solid`` or the mesh is
    converted from RAS. Otherwise the new header contains SPACE=LPS and as much
    of the original text as fits.
    """
    if not converted_from_ras and not _starts_with_solid(original):
        return original
    original_text = _SPACE_COMMENT.sub(b"", original).strip(b"\x00 \t\r\n\x0b\x0c")
    return _make_header(_REWRITTEN_HEADER_PREFIX + original_text)


def _describe_invalid_file(path: Path, size: int, head: bytes) -> str:
    """Return the error message for a file that is neither binary nor ASCII STL."""
    for signature, description in _FILE_SIGNATURES:
        if head.startswith(signature):
            return f"{path} is {description}, not an STL file. Choose an STL file."
    if head[128:132] == b"DICM":
        return f"{path} is a DICOM file, not an STL file. Choose an STL file."

    if size < PREAMBLE_BYTES:
        return (
            f"{path} is not an STL file: it is {size} bytes, shorter than the "
            f"{PREAMBLE_BYTES}-byte header and triangle count of a binary STL, "
            "and it is not ASCII STL. Export the model again."
        )

    count = _triangle_count(head)
    expected = PREAMBLE_BYTES + TRIANGLE_BYTES * count
    if size < expected:
        difference = f"{expected - size} bytes short, so it is truncated or not STL"
    else:
        difference = f"{size - expected} bytes too long, so it is padded or not STL"
    message = (
        f"Invalid binary STL {path}: the triangle count at byte 80 is {count}, "
        f"so the file should be {expected} bytes, but it is {size} bytes "
        f"({difference})."
    )
    if _starts_with_solid(head):
        message += (
            " Its header starts with 'solid', but it contains binary data, so it "
            "is not ASCII STL either."
        )
    return message + " Export the model again."


def _open_binary(
    path: Path, header: bytes, count: int, requested_space: Optional[str]
) -> StlModel:
    if count == 0:
        raise STLError(
            f"STL file {path} contains no triangles (its triangle count is 0). "
            "Export a model that has a surface."
        )
    space = _choose_space(path, _space_from_comment(header), requested_space)
    output_header = _binary_output_header(header, converted_from_ras=space == "RAS")
    LOGGER.info("Opened binary STL %s: %d triangles in %s", path, count, space)
    return StlModel(path, count, "binary", space, output_header)


def _open_ascii(
    path: Path,
    size: int,
    requested_space: Optional[str],
    progress: Optional[ProgressCallback],
) -> StlModel:
    progress = progress_or_default(progress)
    message = f"Reading ASCII STL {path.name}"
    parser = _AsciiParser(path)
    try:
        file = open(path, "rb")
    except OSError as error:
        raise STLError(
            f"Cannot read STL file {path}: {error.strerror or error}. "
            "Check that the file exists and is readable."
        ) from error

    with file:
        consumed = 0
        if file.read(len(_UTF8_BOM)) == _UTF8_BOM:
            consumed = len(_UTF8_BOM)
        else:
            file.seek(0)
        carry = b""
        line_number = 1
        while True:
            data = file.read(_ASCII_BLOCK_BYTES)
            consumed += len(data)
            text = carry + data if carry else data
            if data:
                cut = _find_block_end(text)
                block, carry = text[:cut], text[cut:]
            else:
                block, carry = text, b""
            if len(carry) > _MAX_ASCII_LINE_BYTES:
                raise STLError(
                    f"Invalid ASCII STL {path}: line {line_number} is longer than "
                    f"{_MAX_ASCII_LINE_BYTES >> 20} MiB. The file is not ASCII STL."
                )
            if block:
                parser.parse_block(block, line_number)
                line_number += _count_line_breaks(block)
            progress(consumed, size, message)
            if not data:
                break

    if consumed < size:
        raise STLError(
            f"STL file {path} became shorter while it was read ({consumed} of "
            f"{size} bytes). Do not change the file while it is converted, then "
            "try again."
        )
    records = parser.finish()

    first_solid_line = parser.first_solid_line or b""
    space = _choose_space(path, _space_from_comment(first_solid_line), requested_space)
    repaired = 0
    for block_records in records:
        repaired += _repair_normals(block_records)
        if space == "RAS":
            _negate_x_and_y(block_records)
    if repaired:
        LOGGER.warning(
            "Recomputed %d NaN or infinite normals of %s from the vertices",
            repaired,
            path,
        )

    count = sum(len(r) for r in records)
    LOGGER.info("Opened ASCII STL %s: %d triangles in %s", path, count, space)
    return StlModel(path, count, "ascii", space, _make_header(_ASCII_HEADER), records)


def _count_line_breaks(text: bytes) -> int:
    """Count LF, CRLF and CR-only line breaks."""
    if b"\r" not in text:
        return int(np.count_nonzero(np.frombuffer(text, np.uint8) == ord("\n")))
    return text.count(b"\n") + text.count(b"\r") - text.count(b"\r\n")


def _line_start(text: bytes, index: int) -> int:
    return max(text.rfind(b"\n", 0, index), text.rfind(b"\r", 0, index)) + 1


def _line_end(text: bytes, index: int) -> int:
    """Return the index of the line break at or after ``index``, or -1."""
    ends = [i for i in (text.find(b"\n", index), text.find(b"\r", index)) if i >= 0]
    return min(ends) if ends else -1


def _solid_keyword(line: bytes) -> Optional[bytes]:
    """Return b"solid" or b"endsolid" if the line starts or ends a solid, else None."""
    words = line.lstrip().lower()
    if words.startswith(b"endsolid"):
        return b"endsolid"
    if words.startswith(b"solid"):
        return b"solid"
    if words.startswith(b"end") and words[3:4].isspace():
        if words[3:].lstrip().startswith(b"solid"):
            return b"endsolid"
    return None


def _find_block_end(text: bytes) -> int:
    """Return where to cut ``text`` so the first part ends with whole facets.

    The cut goes right after the last ``endfacet`` that ends its line, so the
    next block starts between facets and never between CR and LF. Without one,
    the cut goes after the last complete line break, or at 0 when there is none.
    """
    text = text.lower()
    index = text.rfind(b"endfacet")
    while index != -1:
        end = index + len(b"endfacet")
        line_end = _line_end(text, end)
        if (
            (index == 0 or text[index - 1 : index].isspace())
            and line_end != -1
            and (line_end == end or text[end:line_end].isspace())
            and _solid_keyword(text[_line_start(text, index) : index]) is None
        ):
            return end
        index = text.rfind(b"endfacet", 0, index)

    newline = text.rfind(b"\n")
    if newline != -1:
        return newline + 1
    # A CR as the last byte may be the first half of a CRLF, so it is not a cut.
    carriage_return = text.rfind(b"\r", 0, len(text) - 1)
    return carriage_return + 1


def _solid_lines(block: bytes) -> Iterator[Tuple[int, int, bytes]]:
    """Yield (line start, line end, keyword) of the solid lines of a lowered block."""
    index = block.find(b"solid")
    while index != -1:
        start = _line_start(block, index)
        end = _line_end(block, index)
        if end == -1:
            end = len(block)
        keyword = _solid_keyword(block[start:end])
        if keyword is not None:
            yield start, end, keyword
            index = block.find(b"solid", end)
        else:
            index = block.find(b"solid", index + len(b"solid"))


class _AsciiParser:
    """Parser of ASCII STL blocks that keeps its state between blocks.

    Each block first goes through a vectorized parser that handles blocks of
    whole facets. When that fails, a line by line parser reads the same block.
    It accepts the rarer cases (a facet that crosses blocks, a number longer
    than 64 characters) and raises the error with its line number.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.in_solid = False
        self.first_solid_line: Optional[bytes] = None
        self.records: List[np.ndarray] = []
        self.triangle_count = 0
        self.blocks = 0
        self.blocks_by_line = 0
        # Position in _FACET_GRAMMAR, and the numbers of the facet being read
        # with the line of each.
        self.step = 0
        self.values: List[float] = []
        self.value_lines: List[int] = []
        self.facet_line = 0

    def parse_block(self, block: bytes, first_line: int) -> None:
        """Parse one block of whole lines that starts at line ``first_line``."""
        self.blocks += 1
        records = self._parse_block_fast(block) if self.step == 0 else None
        if records is None:
            self.blocks_by_line += 1
            records = self._parse_block_by_line(block, first_line)
        if len(records):
            self.records.append(records)
            self.triangle_count += len(records)

    def finish(self) -> List[np.ndarray]:
        """Check the end of the file and return the triangle records."""
        if self.step != 0:
            raise STLError(
                f"Invalid ASCII STL {self.path}: the file ends inside the facet "
                f"that starts at line {self.facet_line}, so the mesh is cut short. "
                "Export the model again."
            )
        if self.triangle_count == 0:
            raise STLError(
                f"STL file {self.path} contains no triangles. Export a model that "
                "has a surface."
            )
        if self.in_solid:
            LOGGER.debug("ASCII STL %s has no final endsolid line", self.path)
        if self.blocks_by_line:
            LOGGER.debug(
                "ASCII STL %s: %d of %d blocks needed the slower line parser",
                self.path,
                self.blocks_by_line,
                self.blocks,
            )
        return self.records

    def _parse_block_fast(self, block: bytes) -> Optional[np.ndarray]:
        """Parse a block with numpy, or return None to fall back to lines."""
        # Control bytes other than whitespace are invalid, so the line parser
        # handles such a block and names the line.
        if block.translate(None, _TEXT_BYTES):
            return None

        # Keywords are case-insensitive. Lowering the block keeps its offsets.
        lowered = block.lower()
        in_solid = self.in_solid
        first_solid_line = self.first_solid_line
        pieces = []
        position = 0
        for start, end, keyword in _solid_lines(lowered):
            records = _parse_facets_fast(lowered, position, start)
            if records is None or (len(records) and not in_solid):
                return None
            pieces.append(records)
            if keyword == b"solid":
                in_solid = True
                if first_solid_line is None:
                    first_solid_line = block[start:end]
            elif in_solid:
                in_solid = False
            else:
                return None
            position = end

        records = _parse_facets_fast(lowered, position, len(lowered))
        if records is None or (len(records) and not in_solid):
            return None
        pieces.append(records)

        self.in_solid = in_solid
        self.first_solid_line = first_solid_line
        return np.concatenate(pieces) if len(pieces) > 1 else pieces[0]

    def _parse_block_by_line(self, block: bytes, first_line: int) -> np.ndarray:
        rows: List[List[float]] = []
        # bytes.splitlines() splits on LF, CRLF and CR only.
        for offset, line in enumerate(block.splitlines()):
            line_number = first_line + offset
            if self.step == 0:
                keyword = _solid_keyword(line)
                if keyword == b"solid":
                    self.in_solid = True
                    if self.first_solid_line is None:
                        self.first_solid_line = line
                    continue
                if keyword == b"endsolid":
                    if not self.in_solid:
                        raise self._error(
                            line_number, "'endsolid' without a matching 'solid'"
                        )
                    self.in_solid = False
                    continue
            for token in line.split():
                self._take_token(token, line_number, rows)
        return _records_from_values(np.array(rows, dtype=np.float64).reshape(-1, 12))

    def _take_token(
        self, token: bytes, line_number: int, rows: List[List[float]]
    ) -> None:
        expected = _FACET_GRAMMAR[self.step]
        if expected is None:
            try:
                self.values.append(float(token))
            except ValueError:
                if not _C_RUNTIME_NONFINITE.fullmatch(token):
                    raise self._error(
                        line_number, f"invalid number {_show_token(token)}"
                    ) from None
                # A NaN normal is recomputed, and a NaN vertex is rejected below.
                self.values.append(float("nan"))
            self.value_lines.append(line_number)
        elif token.lower() != expected:
            if self.step == 0:
                expected_text = "'facet' or 'endsolid'" if self.in_solid else "'solid'"
            else:
                expected_text = f"'{expected.decode()}'"
            raise self._error(
                line_number, f"expected {expected_text}, found {_show_token(token)}"
            )
        elif self.step == 0:
            if not self.in_solid:
                raise self._error(line_number, "'facet' outside a solid")
            self.facet_line = line_number

        self.step += 1
        if self.step == _FACET_TOKENS:
            self._finish_facet(rows)

    def _finish_facet(self, rows: List[List[float]]) -> None:
        with np.errstate(over="ignore"):
            finite = np.isfinite(np.array(self.values, dtype=np.float32))
        finite[:3] = True  # normals are recomputed instead
        if not finite.all():
            index = self.triangle_count + len(rows)
            raise self._error(
                self.value_lines[int(np.argmin(finite))],
                f"triangle index {index} has a vertex coordinate that is NaN, "
                "infinite or beyond the float32 range",
            )
        rows.append(self.values)
        self.values = []
        self.value_lines = []
        self.step = 0

    def _error(self, line_number: int, reason: str) -> STLError:
        return STLError(
            f"Invalid ASCII STL {self.path} at line {line_number}: {reason}. "
            "Correct the file or export the model again."
        )


def _show_token(token: bytes) -> str:
    text = token[:40].decode("utf-8", "replace")
    return repr(text + ("..." if len(token) > 40 else ""))


def _parse_facets_fast(block: bytes, start: int, stop: int) -> Optional[np.ndarray]:
    """Parse ``block[start:stop]`` as whole facets with lowercase keywords.

    Returns the triangle records, or None when the text has another layout, an
    invalid token or a vertex that is not finite as float32. The caller then
    parses it line by line, which gives the line number of the error.
    """
    length = stop - start
    if length <= 0:
        return _records_from_values(np.empty((0, 12)))
    chars = np.frombuffer(block, np.uint8, count=length, offset=start)

    # Token boundaries are where the whitespace mask, padded with whitespace on
    # both sides, changes. Starts and ends alternate, so one pass finds both.
    space = np.empty(length + 2, np.bool_)
    space[0] = space[-1] = True
    np.less_equal(chars, 32, out=space[1:-1])
    boundaries = np.flatnonzero(space[1:] != space[:-1])
    starts = boundaries[0::2]
    ends = boundaries[1::2]
    if len(starts) % _FACET_TOKENS:
        return None
    facets = len(starts) // _FACET_TOKENS
    if facets == 0:
        return _records_from_values(np.empty((0, 12)))
    starts = starts.reshape(facets, _FACET_TOKENS)
    lengths = ends.reshape(facets, _FACET_TOKENS) - starts

    for column, word in _KEYWORD_COLUMNS:
        if not (lengths[:, column] == len(word)).all():
            return None
        found = sliding_window_view(chars, len(word))[starts[:, column]]
        if not (found == np.frombuffer(word, np.uint8)).all():
            return None

    values = _parse_numbers(
        chars,
        starts[:, _NUMBER_COLUMNS].ravel(),
        lengths[:, _NUMBER_COLUMNS].ravel(),
    )
    if values is None:
        return None
    records = _records_from_values(values.reshape(facets, 12))
    if not np.isfinite(records["vertices"]).all():
        return None
    return records


def _parse_numbers(
    chars: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> Optional[np.ndarray]:
    """Convert the number tokens at ``starts`` to float64, or return None.

    The tokens are copied into a fixed-width bytes array and cast to float64.
    In tests with numpy 1.21, 1.26 and 2.4, the cast accepted the same tokens as
    Python's float() and returned the same, correctly rounded values.
    """
    width = int(lengths.max())
    if width > _MAX_NUMBER_CHARS:
        return None
    if int(starts.max()) + width > len(chars):
        padded = np.zeros(len(chars) + width, np.uint8)
        padded[: len(chars)] = chars
        chars = padded
    matrix = sliding_window_view(chars, width)[starts]
    # Zero the bytes after each token, because the bytes dtype strips them.
    matrix *= np.arange(width) < lengths[:, None]
    try:
        return matrix.view(f"S{width}").ravel().astype(np.float64)
    except ValueError:
        return None


def _records_from_values(values: np.ndarray) -> np.ndarray:
    """Build triangle records from rows of normal and vertex numbers."""
    records = np.zeros(len(values), TRIANGLE_DTYPE)
    # Values beyond the float32 range become infinite, which the callers check.
    with np.errstate(over="ignore"):
        records["normal"] = values[:, :3]
        records["vertices"] = values[:, 3:].reshape(-1, 3, 3)
    return records


def _repair_normals(records: np.ndarray) -> int:
    """Recompute the NaN or infinite normals in ``records`` from the vertices.

    A facet whose edge cross product is zero (zero area) gets a zero normal.
    Returns the number of repaired normals.
    """
    bad = ~np.isfinite(records["normal"]).all(axis=1)
    count = int(np.count_nonzero(bad))
    if count == 0:
        return 0
    vertices = records["vertices"][bad].astype(np.float64)
    normals = np.cross(vertices[:, 1] - vertices[:, 0], vertices[:, 2] - vertices[:, 0])
    norms = np.linalg.norm(normals, axis=1)
    nonzero = norms > 0
    normals[nonzero] /= norms[nonzero, None]
    records["normal"][bad] = normals
    return count


def _negate_x_and_y(records: np.ndarray) -> None:
    """Convert records from RAS to LPS in place.

    Negating x and y is a rotation by 180 degrees about z, so the facet winding
    and the outward direction of the normals are kept.
    """
    records["normal"][:, :2] *= -1
    records["vertices"][:, :, :2] *= -1


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as error:
        LOGGER.warning("Cannot remove the partial file %s: %s", path, error)
