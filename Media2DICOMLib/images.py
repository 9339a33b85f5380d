"""Still images and cine frames, loaded and normalised to 8-bit pixels.

Every input becomes a numpy ``uint8`` array, ``(rows, columns, 3)`` for colour
or ``(rows, columns)`` for grey, which is what the Secondary Capture writer
encodes. Screenshots come in many shapes, so instead of failing the loader:

- flattens an alpha channel onto a background colour (black by default),
- expands palette images,
- scales 16-bit and other integer pixels to 8 bits, with a logged warning,
- applies the EXIF orientation of photographs.

Inputs are image files (PNG, JPEG, BMP, TIFF and other formats Pillow reads),
Pillow images and numpy arrays, so the Slicer module can pass captures without
temporary files. A lossy JPEG input is remembered as a :class:`LossyStep`, so
the writer can declare it in Lossy Image Compression.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from Media2DICOMLib.errors import ImageInputError

LOGGER = logging.getLogger(__name__)

# File name suffixes taken from a folder of frames; other files are skipped.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Lossy Image Compression Method (0028,2114) defined term for JPEG lossy.
JPEG_LOSSY_METHOD = "ISO_10918_1"

Color = Tuple[int, int, int]
ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]


@dataclass(frozen=True)
class LossyStep:
    """One lossy compression an image went through before it reached us.

    ``method`` is a defined term of Lossy Image Compression Method (0028,2114),
    and ``ratio`` the uncompressed size divided by the compressed size, or None
    when the compressed size is unknown.
    """

    method: str
    ratio: Optional[float] = None


@dataclass
class ImageFrame:
    """Pixels of one image or frame, with the lossy steps it went through."""

    pixels: np.ndarray
    lossy_steps: Tuple[LossyStep, ...] = ()
    name: str = ""

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def columns(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def is_color(self) -> bool:
        return self.pixels.ndim == 3


def read_image(
    source: ImageSource,
    background: Color = (0, 0, 0),
    name: Optional[str] = None,
    reported: Optional[set] = None,
) -> ImageFrame:
    """Load one image and normalise it to 8-bit grey or RGB.

    Parameters
    ----------
    source : path, PIL.Image.Image or numpy.ndarray
        An image file, a Pillow image or an array of shape ``(rows, columns)``
        or ``(rows, columns, samples)`` with 1 to 4 samples (grey, grey and
        alpha, RGB, RGBA). Arrays may be bool, any integer type, or float with
        values from 0 to 1.
    background : tuple of int, optional
        RGB colour (0-255 each) that transparent pixels are flattened onto.
    name : str, optional
        Name used in messages; defaults to the file name.
    reported : set, optional
        Kinds of conversion already reported for this sequence of frames. A
        conversion whose kind is in the set is logged at DEBUG instead of
        WARNING, so a long cine logs each kind once.

    Returns
    -------
    ImageFrame
        ``uint8`` pixels, C-contiguous, and the lossy steps of the input.

    Raises
    ------
    ImageInputError
        When the file is missing or not an image Pillow can read, or the array
        has a shape or value range that is not an image.
    """
    background = _check_background(background)
    notices = _Notices(reported)
    if isinstance(source, np.ndarray):
        label = name or f"array {source.shape} {source.dtype}"
        pixels = _normalise_array(source, background, label, notices)
        return ImageFrame(np.ascontiguousarray(pixels), (), label)
    if isinstance(source, Image.Image):
        label = name or getattr(source, "filename", "") or f"{source.mode} image"
        steps = _lossy_steps_of(source, None)
        pixels = _normalise_pil(source, background, label, notices)
        return ImageFrame(np.ascontiguousarray(pixels), steps, label)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = name or str(path)
        image = _open_file(path)
        with image:
            steps = _lossy_steps_of(image, path)
            pixels = _normalise_pil(image, background, label, notices)
        return ImageFrame(np.ascontiguousarray(pixels), steps, label)
    raise ImageInputError(
        f"Unsupported image input of type {type(source).__name__}. Pass a file "
        "path, a Pillow image or a numpy array."
    )


def load_image(source: ImageSource, background: Color = (0, 0, 0)) -> np.ndarray:
    """Load one image as ``uint8`` pixels, ``(rows, columns[, 3])``.

    See :func:`read_image` for the inputs and conversions.
    """
    return read_image(source, background).pixels


class FrameSequence:
    """Ordered cine frames that are loaded one at a time, on demand.

    Memory use does not grow with the number of frames, because only the
    frame being iterated is decoded.
    """

    def __init__(self, items: Sequence[ImageSource], background: Color = (0, 0, 0)):
        self.items = list(items)
        self.background = _check_background(background)
        self._reported: set = set()

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[ImageFrame]:
        for loader in self.loaders():
            yield loader()

    def __getitem__(self, index: int) -> ImageFrame:
        return self._load(self.items[index], index)

    def loaders(self) -> Iterator[Callable[[], ImageFrame]]:
        """Yield one function per frame that loads it, so frames can load in threads."""
        for index, item in enumerate(self.items):
            yield _bind(self._load, item, index)

    def _load(self, item: ImageSource, index: int) -> ImageFrame:
        name = None
        if not isinstance(item, (str, os.PathLike)):
            name = f"frame {index + 1}"
        return read_image(item, self.background, name, self._reported)


def load_frames(
    folder_or_list: Union[str, os.PathLike, Sequence[ImageSource]],
    background: Color = (0, 0, 0),
) -> FrameSequence:
    """Collect cine frames from a folder of numbered images or a list of images.

    A folder contributes its image files (see :data:`IMAGE_SUFFIXES`) sorted by
    the numbers in their names, so ``frame_2.png`` comes before
    ``frame_10.png``, as 3D Slicer's Screen Capture module numbers them. A list
    keeps its order, and folders inside it are expanded the same way.

    Raises
    ------
    ImageInputError
        When a path does not exist or no image file is found.
    """
    if isinstance(folder_or_list, (str, os.PathLike)):
        folder_or_list = [folder_or_list]
    items: List[ImageSource] = []
    for item in folder_or_list:
        if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
            items.extend(image_files_in(Path(item)))
        elif isinstance(item, (str, os.PathLike)) and not Path(item).exists():
            raise ImageInputError(
                f"The image path {item} does not exist. Give image files or a "
                "folder of numbered frames."
            )
        else:
            items.append(item)
    if not items:
        raise ImageInputError(
            "No image files were found in "
            + ", ".join(str(item) for item in folder_or_list)
            + f". Frames must be files ending in {', '.join(IMAGE_SUFFIXES)}."
        )
    return FrameSequence(items, background)


def image_files_in(folder: Path) -> List[Path]:
    """List the image files of ``folder`` in natural (numeric) order."""
    files = [
        path
        for path in Path(folder).iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    ]
    return sorted(files, key=natural_sort_key)


def natural_sort_key(path: Union[str, os.PathLike]) -> tuple:
    """Sort key that orders the digit runs of a name by their numeric value."""
    name = os.path.basename(os.fspath(path))
    parts = re.split(r"(\d+)", name.lower())
    key = tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts
    )
    return key + ((1, 0, name),)


def _bind(function, item, index):
    return lambda: function(item, index)


def _check_background(background) -> Color:
    try:
        values = tuple(int(v) for v in background)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise ImageInputError(
            f"Invalid background colour {background!r}: give three integers "
            "from 0 to 255 (red, green, blue)."
        )
    return values


class _Notices:
    """Logs each kind of conversion once per sequence of frames."""

    def __init__(self, reported: Optional[set]):
        self.reported = reported if reported is not None else set()

    def warn(self, kind: str, message: str, *args) -> None:
        if kind in self.reported:
            LOGGER.debug(message, *args)
        else:
            self.reported.add(kind)
            LOGGER.warning(message, *args)


def _open_file(path: Path) -> Image.Image:
    if not path.is_file():
        raise ImageInputError(f"The image file {path} does not exist. Check the path.")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageInputError(
            f"Failed to read the image file {path}: {exc}. Use PNG, JPEG, BMP "
            "or TIFF."
        ) from exc
    return image


def _lossy_steps_of(image: Image.Image, path: Optional[Path]) -> Tuple[LossyStep, ...]:
    """Return the lossy step of a JPEG (or JPEG-in-TIFF) input, else nothing."""
    is_jpeg = image.format in ("JPEG", "MPO")
    if image.format == "TIFF":
        is_jpeg = str(image.info.get("compression", "")).lower() in (
            "jpeg",
            "tiff_jpeg",
        )
    if not is_jpeg:
        return ()
    ratio = None
    if path is not None and path.stat().st_size > 0:
        bands = len(image.getbands())
        ratio = image.width * image.height * bands / path.stat().st_size
    return (LossyStep(JPEG_LOSSY_METHOD, ratio),)


def _normalise_pil(image: Image.Image, background: Color, label: str, notices):
    orientation = _exif_orientation(image)
    if orientation not in (None, 1):
        LOGGER.info("Applied EXIF orientation %d to %s", orientation, label)
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "1":
        image = image.convert("L")
    elif mode == "P":
        has_alpha = "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        notices.warn("colour-space", "Converted %s from %s to RGB", label, mode)
        image = image.convert("RGB")
    elif mode in ("RGBa", "La"):
        image = image.convert("RGBA" if mode == "RGBa" else "LA")
    return _normalise_array(np.asarray(image), background, label, notices)


def _exif_orientation(image: Image.Image) -> Optional[int]:
    try:
        return image.getexif().get(0x0112)
    except Exception:  # a damaged EXIF block only loses the orientation
        return None


def _normalise_array(array: np.ndarray, background: Color, label: str, notices):
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (
        array.ndim == 3 and array.shape[2] not in (2, 3, 4)
    ):
        raise ImageInputError(
            f"The image {label} has shape {array.shape}; expected (rows, columns) "
            "or (rows, columns, samples) with 1 to 4 samples."
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageInputError(f"The image {label} is empty (shape {array.shape}).")
    if array.shape[0] > 65535 or array.shape[1] > 65535:
        raise ImageInputError(
            f"The image {label} is {array.shape[1]}x{array.shape[0]} pixels; DICOM "
            "Rows and Columns are at most 65535. Scale it down first."
        )

    array = _to_uint8(array, label, notices)
    if array.ndim == 2:
        return array
    if array.shape[2] == 2:
        return _flatten_grey_alpha(array, background, label, notices)
    if array.shape[2] == 4:
        return _flatten_alpha(array, background, label, notices)
    return array


def _to_uint8(array: np.ndarray, label: str, notices) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        if np.isnan(array).any() or low < 0.0 or high > 1.0:
            raise ImageInputError(
                f"The float image {label} has values from {low} to {high}; float "
                "pixels must lie between 0 and 1. Convert it to uint8 or uint16."
            )
        return np.rint(array * 255.0).astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise ImageInputError(
            f"The image {label} has pixel type {array.dtype}; use an integer or "
            "float type."
        )

    low, high = int(array.min()), int(array.max())
    if low < 0:
        # Signed pixels have no fixed black level, so the value range is
        # stretched to 0-255.
        notices.warn(
            "signed",
            "Scaled %s from signed values %d..%d to 8 bits",
            label,
            low,
            high,
        )
        span = max(high - low, 1)
        scaled = (array.astype(np.float64) - low) * (255.0 / span)
        return np.rint(scaled).astype(np.uint8)
    if high <= 255:
        return array.astype(np.uint8)

    # The smallest bit depth that contains the maximum maps to 0-255, so a 12-bit
    # image keeps its brightness and 8-bit values stored as v * 257 come back
    # exactly.
    bits = high.bit_length()
    notices.warn(
        "high-bit-depth",
        "Scaled %s from %d-bit pixels (maximum %d) to 8 bits",
        label,
        bits,
        high,
    )
    scaled = array.astype(np.float64) * (255.0 / ((1 << bits) - 1))
    return np.rint(scaled).astype(np.uint8)


def _flatten_alpha(rgba: np.ndarray, background: Color, label: str, notices):
    alpha = rgba[:, :, 3:4].astype(np.uint32)
    if int(alpha.min()) == 255:
        return rgba[:, :, :3]
    notices.warn(
        "alpha",
        "Flattened the transparent pixels of %s onto background %s",
        label,
        background,
    )
    color = rgba[:, :, :3].astype(np.uint32)
    fill = np.asarray(background, dtype=np.uint32).reshape(1, 1, 3)
    blended = (color * alpha + fill * (255 - alpha) + 127) // 255
    return blended.astype(np.uint8)


def _flatten_grey_alpha(grey_alpha: np.ndarray, background: Color, label, notices):
    grey = grey_alpha[:, :, 0]
    if int(grey_alpha[:, :, 1].min()) == 255:
        return grey
    rgba = np.dstack([grey, grey, grey, grey_alpha[:, :, 1]])
    flattened = _flatten_alpha(rgba, background, label, notices)
    if background[0] == background[1] == background[2]:
        return np.ascontiguousarray(flattened[:, :, 0])
    return flattened
