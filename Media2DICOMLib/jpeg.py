"""Frame encoders and decoders for the transfer syntaxes of Secondary Capture.

======================  =====================  ==============  ====================
Transfer syntax         UID                    Encoder         Photometric (colour)
======================  =====================  ==============  ====================
JPEG Baseline           1.2.840.10008.1.2.4.50 see below (SOF0) YBR_FULL_422
JPEG Extended           1.2.840.10008.1.2.4.51 see below (SOF1) YBR_FULL_422
JPEG Lossless           1.2.840.10008.1.2.4.57 imagecodecs     RGB
JPEG Lossless SV1       1.2.840.10008.1.2.4.70 imagecodecs     RGB
Explicit VR Little      1.2.840.10008.1.2.1    none (native)   RGB
======================  =====================  ==============  ====================

Grey frames are ``MONOCHROME2`` in every syntax. Lossy colour frames have
4:2:2 (half the chroma columns) or 4:4:4 (full) chroma sampling, chosen per
encoder. Chroma subsampling alone limited a 3D Slicer screenshot with thin
coloured outlines to about 36 dB PSNR at every quality, against 44 dB for
4:4:4 at quality 90. 4:4:4 also made 1920x1080 frames about 1.7 times slower to
encode.

NOTE: both samplings are labelled ``YBR_FULL_422``, the only Photometric
Interpretation that dciodvfy accepts for lossy JPEG in the Secondary Capture
IODs. Decoders take the sampling from the JPEG frame header, as PS3.5 8.2.1
requires, but a strict reading of ``_422`` expects 4:2:2 frames.

The lossless encoder is libjpeg-turbo 3 through imagecodecs ``jpeg8_encode``.
Each frame it returns is checked for a SOF3 (lossless) marker, because a build
without lossless support would write a different process.

Lossy frames also go through imagecodecs when it is installed, and through
Pillow otherwise (3D Slicer bundles Pillow but not imagecodecs). With the same
quality and 4:2:2 subsampling both call libjpeg-turbo with the same settings and
wrote frames of identical size and PSNR in a test at qualities 2 to 90.
imagecodecs releases the GIL while it encodes, so a thread pool over frames
uses every core. Pillow 13 encodes to memory without releasing the GIL, and two
threads encoding 1920x1080 frames with it ran slower than one.
"""

from __future__ import annotations

import io
import logging
import tempfile
import threading
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
from PIL import Image
from pydicom.uid import UID

from Media2DICOMLib.errors import EncodingError
from Media2DICOMLib.images import JPEG_LOSSY_METHOD

LOGGER = logging.getLogger(__name__)

DEFAULT_QUALITY = 90

# Transfer syntax UIDs written out, because pydicom 2.x names .70 "JPEGLossless",
# the keyword that pydicom 3 (and the DICOM standard) give to .57.
JPEGBaseline8Bit = UID("1.2.840.10008.1.2.4.50")
JPEGExtended12Bit = UID("1.2.840.10008.1.2.4.51")
JPEGLossless = UID("1.2.840.10008.1.2.4.57")
JPEGLosslessSV1 = UID("1.2.840.10008.1.2.4.70")
ExplicitVRLittleEndian = UID("1.2.840.10008.1.2.1")

# Command-line names of the transfer syntaxes, in the order --help lists them.
TRANSFER_SYNTAX_NAMES: Dict[str, UID] = {
    "jpeg-baseline": JPEGBaseline8Bit,
    "jpeg-extended": JPEGExtended12Bit,
    "jpeg-lossless": JPEGLossless,
    "jpeg-lossless-sv1": JPEGLosslessSV1,
    "explicit-little": ExplicitVRLittleEndian,
}

LOSSY_TRANSFER_SYNTAXES = (JPEGBaseline8Bit, JPEGExtended12Bit)

# Chroma subsampling names, with the value Pillow's ``subsampling`` option takes
# for each.
CHROMA_SUBSAMPLINGS = {"444": 0, "422": 1}
LOSSLESS_JPEG_TRANSFER_SYNTAXES = (JPEGLossless, JPEGLosslessSV1)

# Process 14 (.57) accepts predictors 1 to 7. Predictor 4 (left + above - upper
# left) gave frames 4 to 5 % smaller than predictor 1 with libjpeg-turbo 3.1, on
# a 3D Slicer and a planning-workstation screenshot. It also makes the two
# lossless syntaxes differ in content, not only in UID.
PROCESS_14_PREDICTOR = 4
SV1_PREDICTOR = 1

_SOF0 = 0xC0
_SOF1 = 0xC1
_SOF3 = 0xC3
_SOS = 0xDA
_STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD9)}


def transfer_syntax_from_name(value: str) -> UID:
    """Map a command-line name or a UID to a supported transfer syntax UID.

    Raises
    ------
    EncodingError
        When the value is neither a known name nor a supported UID.
    """
    if value in TRANSFER_SYNTAX_NAMES:
        return TRANSFER_SYNTAX_NAMES[value]
    if value in TRANSFER_SYNTAX_NAMES.values():
        return UID(value)
    names = ", ".join(TRANSFER_SYNTAX_NAMES)
    raise EncodingError(
        f"Unsupported transfer syntax {value!r}. Use one of {names} or its UID."
    )


@dataclass(frozen=True)
class FrameEncoder:
    """Encodes 8-bit frames for one transfer syntax and describes the result.

    ``encode`` returns the bytes of one frame: a JPEG frame padded to even
    length, ready to be one fragment, or for Explicit VR Little Endian the
    native pixels, unpadded.
    """

    transfer_syntax_uid: UID
    quality: int = DEFAULT_QUALITY
    color: bool = True
    chroma_subsampling: str = "422"

    def __post_init__(self) -> None:
        if self.chroma_subsampling not in CHROMA_SUBSAMPLINGS:
            raise EncodingError(
                f"Invalid chroma subsampling {self.chroma_subsampling!r}: use "
                "'422' (half the chroma columns) or '444' (full chroma)."
            )
        # The dataclass is frozen, so the UID a name maps to is set directly.
        uid = transfer_syntax_from_name(str(self.transfer_syntax_uid))
        object.__setattr__(self, "transfer_syntax_uid", uid)
        if self.is_lossy and not 1 <= int(self.quality) <= 100:
            raise EncodingError(
                f"Invalid JPEG quality {self.quality}: use an integer from 1 "
                "(smallest) to 100 (best)."
            )
        if self.transfer_syntax_uid in LOSSLESS_JPEG_TRANSFER_SYNTAXES:
            _require_lossless_encoder()

    @property
    def is_encapsulated(self) -> bool:
        return self.transfer_syntax_uid != ExplicitVRLittleEndian

    @property
    def is_lossy(self) -> bool:
        return self.transfer_syntax_uid in LOSSY_TRANSFER_SYNTAXES

    @property
    def lossy_method(self) -> Optional[str]:
        """Lossy Image Compression Method of this encoder, or None when lossless."""
        return JPEG_LOSSY_METHOD if self.is_lossy else None

    @property
    def photometric_interpretation(self) -> str:
        if not self.color:
            return "MONOCHROME2"
        return "YBR_FULL_422" if self.is_lossy else "RGB"

    def encode(self, pixels: np.ndarray) -> bytes:
        """Encode one frame of ``uint8`` pixels, grey or RGB as ``color`` selects."""
        if self.transfer_syntax_uid == ExplicitVRLittleEndian:
            data = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
        elif self.is_lossy:
            data = _encode_lossy(pixels, self.quality, self.chroma_subsampling)
            if self.transfer_syntax_uid == JPEGExtended12Bit:
                data = _replace_frame_marker(data, _SOF0, _SOF1)
        else:
            predictor = (
                SV1_PREDICTOR
                if self.transfer_syntax_uid == JPEGLosslessSV1
                else PROCESS_14_PREDICTOR
            )
            data = _encode_lossless(pixels, predictor)
        if self.is_encapsulated and len(data) % 2:
            data += b"\x00"
        return data


def decode_frame(data: bytes, transfer_syntax_uid: str) -> np.ndarray:
    """Decode one JPEG frame to ``uint8`` RGB or grey pixels.

    Lossy frames are decoded by Pillow, which converts YCbCr to RGB. Lossless
    frames need imagecodecs or pylibjpeg-libjpeg.

    Raises
    ------
    EncodingError
        When no installed decoder handles the frame, or the frame is damaged.
    """
    if transfer_syntax_uid in LOSSY_TRANSFER_SYNTAXES:
        try:
            with Image.open(io.BytesIO(data)) as image:
                return np.asarray(image.convert("RGB" if image.mode != "L" else "L"))
        except OSError as exc:
            raise EncodingError(f"Failed to decode a JPEG frame: {exc}") from exc
    if transfer_syntax_uid in LOSSLESS_JPEG_TRANSFER_SYNTAXES:
        return _decode_lossless(data)
    raise EncodingError(
        f"Transfer syntax {transfer_syntax_uid} is not a JPEG syntax this "
        "library decodes."
    )


def frame_process_marker(data: bytes) -> Optional[int]:
    """Return the SOFn marker code (0xC0 to 0xCF) of a JPEG stream, or None."""
    position = _find_frame_marker(data)
    return data[position + 1] if position is not None else None


def _encode_lossy(pixels: np.ndarray, quality: int, chroma: str) -> bytes:
    codecs = _lossy_imagecodecs()
    if codecs is None:
        return _encode_pillow(pixels, quality, chroma)
    subsampling = chroma if pixels.ndim == 3 else None
    data = bytes(
        codecs.jpeg8_encode(
            np.ascontiguousarray(pixels), level=int(quality), subsampling=subsampling
        )
    )
    if frame_process_marker(data) != _SOF0:
        # A build that does not force baseline tables writes SOF1 at low quality.
        return _encode_pillow(pixels, quality, chroma)
    return data


def _lossy_imagecodecs():
    try:
        import imagecodecs
    except ImportError:
        return None
    if not getattr(imagecodecs, "JPEG8", None) or not imagecodecs.JPEG8.available:
        return None
    return imagecodecs


# One scratch file per encoder thread, reused for every frame it encodes.
_PILLOW_SCRATCH = threading.local()


def _encode_pillow(pixels: np.ndarray, quality: int, chroma: str) -> bytes:
    image = Image.fromarray(pixels)
    options = {"quality": int(quality)}
    if image.mode == "RGB":
        options["subsampling"] = CHROMA_SUBSAMPLINGS[chroma]
    # Pillow (checked with 13.0) releases the GIL while it encodes only when
    # the target has a file descriptor, because only then does it call
    # encode_to_file. Into BytesIO, threads encode one frame at a time.
    scratch = getattr(_PILLOW_SCRATCH, "file", None)
    if scratch is None:
        scratch = _PILLOW_SCRATCH.file = tempfile.TemporaryFile(prefix="m2d-jpeg-")
    scratch.seek(0)
    scratch.truncate()
    image.save(scratch, "JPEG", **options)
    length = scratch.tell()
    scratch.seek(0)
    return scratch.read(length)


def _encode_lossless(pixels: np.ndarray, predictor: int) -> bytes:
    import imagecodecs

    data = bytes(
        imagecodecs.jpeg8_encode(
            np.ascontiguousarray(pixels), lossless=True, predictor=predictor
        )
    )
    marker = frame_process_marker(data)
    if marker != _SOF3:
        found = "none" if marker is None else hex(marker)
        raise EncodingError(
            f"imagecodecs wrote a JPEG frame with frame marker {found} instead of "
            "SOF3 (lossless). Install imagecodecs built with libjpeg-turbo 3 or "
            "later, or choose another transfer syntax."
        )
    return data


def _require_lossless_encoder() -> None:
    try:
        import imagecodecs
    except ImportError as exc:
        raise EncodingError(
            "JPEG Lossless needs the imagecodecs package, which is not installed. "
            "Install it (pip install imagecodecs) or choose JPEG Baseline or "
            "Explicit VR Little Endian."
        ) from exc
    if not getattr(imagecodecs, "JPEG8", None) or not imagecodecs.JPEG8.available:
        raise EncodingError(
            "The installed imagecodecs has no JPEG8 codec, which JPEG Lossless "
            "needs. Reinstall imagecodecs or choose another transfer syntax."
        )


def _decode_lossless(data: bytes) -> np.ndarray:
    try:
        import imagecodecs
    except ImportError:
        imagecodecs = None
    if imagecodecs is not None:
        try:
            return np.asarray(imagecodecs.jpeg8_decode(data))
        except Exception as exc:  # imagecodecs raises its own error types
            raise EncodingError(
                f"Failed to decode a lossless JPEG frame: {exc}"
            ) from exc
    try:
        from libjpeg import decode
    except ImportError as exc:
        raise EncodingError(
            "Decoding JPEG Lossless needs imagecodecs or pylibjpeg-libjpeg, and "
            "neither is installed. Install one (pip install imagecodecs)."
        ) from exc
    try:
        return np.asarray(decode(data))
    except Exception as exc:  # libjpeg raises RuntimeError and others
        raise EncodingError(
            f"Failed to decode a lossless JPEG frame: {exc}"
        ) from exc


def _find_frame_marker(data: bytes) -> Optional[int]:
    """Return the offset of the first SOFn marker, walking the marker segments."""
    position = 2 if data[:2] == b"\xff\xd8" else None
    if position is None:
        return None
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        code = data[position + 1]
        if code == 0xFF:
            position += 1
            continue
        if 0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC):
            return position
        if code == _SOS:
            return None
        if code in _STANDALONE_MARKERS:
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        position += 2 + length
    return None


def _replace_frame_marker(data: bytes, old: int, new: int) -> bytes:
    # An 8-bit SOF0 frame is also a valid extended sequential (SOF1) frame: the
    # two differ only in the limits SOF0 puts on precision and table count.
    position = _find_frame_marker(data)
    if position is None or data[position + 1] != old:
        raise EncodingError(
            f"The JPEG encoder wrote an unexpected frame marker; expected {hex(old)}."
        )
    return data[: position + 1] + bytes([new]) + data[position + 2 :]
