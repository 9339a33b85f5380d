"""Multi-frame Secondary Capture objects for screenshots, cine and video.

Colour input becomes Multi-frame True Color Secondary Capture
(1.2.840.10008.5.1.4.1.1.7.4) and grey-only input Multi-frame Grayscale Byte
Secondary Capture (1.2.840.10008.5.1.4.1.1.7.2). Both are written into the
source study, in a new series, with the source series' Modality: the SC
Equipment module defines Modality as the source equipment of the image.
Frame of Reference is never copied, because a screenshot has no patient
coordinates.

Frames are encoded in a thread pool and spooled to a temporary file next to the
output, one at a time, so memory use does not depend on the number of frames.
The DICOM file is written from the spool once every frame is known, because
Number of Frames, the offset tables and the Lossy Image Compression Ratio come
before Pixel Data in the file.
"""

from __future__ import annotations

import datetime
import io
import itertools
import logging
import os
import shutil
import struct
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from Media2DICOMLib import __version__
from Media2DICOMLib.errors import (
    ImageInputError,
    Media2DICOMError,
    ObjectTooLargeError,
)
from Media2DICOMLib.images import (
    FrameSequence,
    ImageFrame,
    LossyStep,
    image_files_in,
    read_image,
)
from Media2DICOMLib.jpeg import (
    DEFAULT_QUALITY,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    LOSSY_TRANSFER_SYNTAXES,
    FrameEncoder,
    decode_frame,
)
from Media2DICOMLib.new_series import (
    MANUFACTURER,
    MODEL_NAME,
    SeriesInfo,
    base_dataset,
    finish_character_set,
    new_uid,
    save_dataset,
)
from Media2DICOMLib.progress import ProgressCallback, progress_or_default
from Media2DICOMLib.source_study import SourceSeries

LOGGER = logging.getLogger(__name__)

MULTIFRAME_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"
MULTIFRAME_GRAYSCALE_BYTE_SC = "1.2.840.10008.5.1.4.1.1.7.2"

MIB = 1024 * 1024
DEFAULT_SIZE_WARNING_BYTES = 256 * MIB
DEFAULT_SIZE_LIMIT_BYTES = 4000 * MIB

# Basic Offset Table entries are 32-bit. Past this offset the Extended Offset
# Table (64-bit) is written instead and the Basic Offset Table is left empty.
BASIC_OFFSET_TABLE_MAX = 0xFFFFFFFF
# Native Pixel Data has a 32-bit length, of which 0xFFFFFFFF means undefined.
NATIVE_PIXEL_DATA_MAX = 0xFFFFFFFE

FRAME_TIME_TAG = 0x00181063
PIXEL_DATA_TAG = 0x7FE00010

_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
_COPY_CHUNK = 4 * MIB


@dataclass(frozen=True)
class WrittenObject:
    """A Secondary Capture file that was written, usable wherever a path is.

    ``warnings`` lists the messages that were also logged as warnings, such as
    an object larger than the size warning threshold.
    """

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    number_of_frames: int
    size_bytes: int
    warnings: Tuple[str, ...] = ()

    def __fspath__(self) -> str:
        return os.fspath(self.path)


def write_secondary_capture(
    source: SourceSeries,
    frames,
    path,
    series: SeriesInfo,
    *,
    transfer_syntax=JPEGBaseline8Bit,
    quality: int = DEFAULT_QUALITY,
    chroma_subsampling: Optional[str] = None,
    conversion_type: Optional[str] = None,
    frame_time_ms: Optional[float] = None,
    burned_in_annotation: str = "NO",
    recognizable_visual_features: Optional[str] = None,
    background=(0, 0, 0),
    reference_source_instances: bool = True,
    size_warning_bytes: int = DEFAULT_SIZE_WARNING_BYTES,
    size_limit_bytes: int = DEFAULT_SIZE_LIMIT_BYTES,
    sop_instance_uid: Optional[str] = None,
    workers: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
) -> WrittenObject:
    """Write one multi-frame Secondary Capture object into the source study.

    Parameters
    ----------
    source : SourceSeries
        The series whose patient, study, Modality and Body Part Examined the
        object takes.
    frames : image, sequence of images, FrameSequence or VideoFrames
        One image (file path, Pillow image or array) becomes a one-frame object.
        A list, a :class:`~Media2DICOMLib.images.FrameSequence` or a
        :class:`~Media2DICOMLib.video.VideoFrames` becomes one frame per item,
        all of the same size. Any other iterable of images also works, which
        lets a generator feed frames without holding them all.
    path : path
        Output file. It appears only when the object is complete.
    series : SeriesInfo
        The new series. Its next Instance Number is used.
    transfer_syntax : str, optional
        JPEG Baseline (default), JPEG Extended, JPEG Lossless, JPEG Lossless
        SV1 or Explicit VR Little Endian.
    quality : int, optional
        JPEG quality from 1 to 100 for the lossy syntaxes.
    chroma_subsampling : str, optional
        ``"444"`` or ``"422"`` for lossy colour frames. By default a one-frame
        object gets 4:4:4, which keeps thin coloured lines and text sharp, and a
        cine gets 4:2:2, which encodes faster and smaller.
    conversion_type : str, optional
        Conversion Type: ``WSD`` (workstation) or ``DV`` (digitized video).
        Defaults to ``DV`` for video input and ``WSD`` otherwise.
    frame_time_ms : float, optional
        Time between frames in milliseconds. Makes the object a cine (Cine
        module, Frame Increment Pointer to Frame Time). Required for more than
        one frame, and taken from the video when the input is a video.
    burned_in_annotation : str, optional
        ``YES`` when the pixels show text that identifies the patient.
    recognizable_visual_features : str, optional
        ``YES`` or ``NO`` for Recognizable Visual Features, left out when None.
    background : tuple of int, optional
        RGB colour that transparent pixels are flattened onto.
    reference_source_instances : bool, optional
        List the source instances in Source Image Sequence, for images derived
        from them. Video input is not derived from them and never lists them.
    size_warning_bytes, size_limit_bytes : int, optional
        A larger object is written with a logged and returned warning. An
        object larger than the limit is rejected before it is written.
    sop_instance_uid : str, optional
        SOP Instance UID to use instead of a new one.
    workers : int, optional
        Encoder threads; defaults to the number of CPUs.
    progress : callable, optional
        ``progress(done, total, message)`` per encoded frame; ``total`` is 0
        when the number of frames is not known in advance.

    Returns
    -------
    WrittenObject
        The path, UIDs, frame count, size and warnings of the new file.

    Raises
    ------
    ImageInputError
        When an image cannot be read, frames differ in size, or a cine has no
        frame time.
    ObjectTooLargeError
        When the object would exceed ``size_limit_bytes``.
    Cancelled
        When ``progress`` cancels. No output or temporary file is left behind.
    """
    from Media2DICOMLib.video import VideoFrames

    path = Path(path)
    report = progress_or_default(progress)
    is_video = isinstance(frames, VideoFrames)
    if conversion_type is None:
        conversion_type = "DV" if is_video else "WSD"
    if frame_time_ms is None and is_video:
        frame_time_ms = 1000.0 / frames.frame_rate
    _check_options(conversion_type, burned_in_annotation, frame_time_ms)

    count, loaders = _frame_loaders(frames, background)
    try:
        first = next(loaders)()
    except StopIteration:
        raise ImageInputError("No frames were given; pass at least one image.")
    single, loaders = _is_single_frame(count, loaders)
    if not single and frame_time_ms is None:
        given = f"{count} frames were" if count else "Several frames were"
        raise ImageInputError(
            f"{given} given without a frame time. Give a frame rate for a cine, "
            "or write the images as separate stills."
        )
    if chroma_subsampling is None:
        # NOTE: 4:2:2 cine frames of strongly saturated colour ramps measured
        # 39.8 dB PSNR at quality 90. Pass "444" when colour edges matter more
        # than encoding speed.
        chroma_subsampling = "444" if single else "422"
    encoder = FrameEncoder(transfer_syntax, quality, first.is_color, chroma_subsampling)
    layout = _FrameLayout(first, encoder)
    uid = sop_instance_uid or new_uid()
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryFile(dir=directory, prefix=".m2d-frames-") as spool:
        spooled = _spool_frames(
            first,
            loaders,
            count,
            layout,
            spool,
            size_limit_bytes,
            workers,
            report,
        )
        if count is not None and spooled.count != count:
            LOGGER.warning(
                "Expected %d frames but got %d, so Number of Frames is %d",
                count,
                spooled.count,
                spooled.count,
            )

        lossy_steps = spooled.lossy_steps(layout, getattr(frames, "lossy_steps", ()))
        dataset = _build_dataset(
            source,
            series,
            layout,
            spooled.count,
            uid,
            conversion_type=conversion_type,
            frame_time_ms=frame_time_ms,
            burned_in_annotation=burned_in_annotation,
            recognizable_visual_features=recognizable_visual_features,
            lossy_steps=lossy_steps,
            reference_source=reference_source_instances and not is_video,
            pixel_aspect_ratio=getattr(frames, "pixel_aspect_ratio", None),
        )
        size_warnings = _write_object(
            dataset,
            spooled,
            encoder,
            spool,
            path,
            size_warning_bytes,
            size_limit_bytes,
        )

    size = path.stat().st_size
    LOGGER.info(
        "Wrote %s: %s, %d frame(s), %.1f MiB, SOP Instance UID %s",
        path,
        "colour" if layout.color else "grey",
        spooled.count,
        size / MIB,
        uid,
    )
    return WrittenObject(
        path=path,
        sop_instance_uid=uid,
        sop_class_uid=str(dataset.SOPClassUID),
        transfer_syntax_uid=str(encoder.transfer_syntax_uid),
        number_of_frames=spooled.count,
        size_bytes=size,
        warnings=tuple(size_warnings),
    )


def write_stills(
    source: SourceSeries,
    images: Sequence,
    output_dir,
    series: SeriesInfo,
    **options,
) -> List[WrittenObject]:
    """Write each image as a one-frame Secondary Capture in one series.

    ``images`` contains file paths, folders (their image files in numeric
    order), Pillow images or arrays; the images may differ in size. The files
    are named after their SOP Instance UIDs in ``output_dir``. ``options`` are
    the keyword arguments of :func:`write_secondary_capture`, except
    ``frame_time_ms`` and ``sop_instance_uid``.
    """
    for key in ("frame_time_ms", "sop_instance_uid"):
        if key in options:
            raise TypeError(f"write_stills() does not accept {key}")
    progress = progress_or_default(options.pop("progress", None))
    output_dir = Path(output_dir)
    items = []
    for image in images:
        if isinstance(image, (str, os.PathLike)) and Path(image).is_dir():
            items.extend(image_files_in(Path(image)))
        else:
            items.append(image)
    if not items:
        raise ImageInputError("No images were given; pass at least one image.")

    written = []
    for index, image in enumerate(items):
        progress(index, len(items), "Writing screenshots")
        uid = new_uid()
        written.append(
            write_secondary_capture(
                source,
                image,
                output_dir / f"SC_{uid}.dcm",
                series,
                sop_instance_uid=uid,
                **options,
            )
        )
    progress(len(items), len(items), "Writing screenshots")
    return written


def decompress_to_explicit_little(path_in, path_out) -> Path:
    """Rewrite a JPEG Secondary Capture file as Explicit VR Little Endian.

    Used when a server rejects the JPEG transfer syntaxes. Colour frames become
    ``RGB`` with Planar Configuration 0. Lossy Image Compression stays ``01``
    with its method and ratio when the frames were ever lossy, as DICOM
    requires after decompression. The SOP Instance UID is kept, because the
    pixels are the same image. Frames are decoded one at a time.

    Returns
    -------
    Path
        ``path_out``.

    Raises
    ------
    Media2DICOMError
        When the file is not an 8-bit encapsulated JPEG image, or a frame
        cannot be decoded.
    """
    path_in, path_out = Path(path_in), Path(path_out)
    with open(path_in, "rb") as stream:
        try:
            dataset = pydicom.dcmread(stream, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types on damaged files
            raise Media2DICOMError(
                f"Failed to read the DICOM file {path_in}: {exc}"
            ) from exc
        transfer_syntax = str(dataset.file_meta.TransferSyntaxUID)
        _check_decompressible(dataset, transfer_syntax, path_in)
        pixel_start = stream.tell()
        fragments = _read_fragments(stream, path_in)
        frame_spans = _group_fragments(fragments, dataset, stream, path_in)

        rows, columns = int(dataset.Rows), int(dataset.Columns)
        samples = int(dataset.SamplesPerPixel)
        frame_bytes = rows * columns * samples
        total = frame_bytes * len(frame_spans)
        if total > NATIVE_PIXEL_DATA_MAX:
            raise ObjectTooLargeError(
                f"{path_in} would need {total / MIB:.1f} MiB of uncompressed Pixel "
                "Data, more than the 4 GiB Explicit VR Little Endian allows. Send "
                "it with a JPEG transfer syntax or write fewer frames."
            )

        _make_native_header(dataset, transfer_syntax, fragments, frame_bytes)
        partial = path_out.with_name(path_out.name + ".partial")
        try:
            with open(partial, "wb") as out:
                save_dataset(dataset, out, ExplicitVRLittleEndian)
                out.write(_native_pixel_data_header(total))
                shape = (rows, columns, samples) if samples > 1 else (rows, columns)
                _write_decoded_frames(
                    out, stream, frame_spans, transfer_syntax, shape, path_in
                )
                if total % 2:
                    out.write(b"\x00")
            os.replace(partial, path_out)
        finally:
            if partial.exists():
                partial.unlink()
    LOGGER.info(
        "Decompressed %s (%s, %d frames, pixel data at byte %d) to %s",
        path_in,
        transfer_syntax,
        len(frame_spans),
        pixel_start,
        path_out,
    )
    return path_out


# ---------------------------------------------------------------------------
# Frame input and encoding


class _FrameLayout:
    """Size and colour of every frame, fixed by the first one."""

    def __init__(self, first: ImageFrame, encoder: FrameEncoder) -> None:
        self.rows, self.columns = first.rows, first.columns
        self.color = first.is_color
        self.name = first.name
        self.encoder = encoder

    @property
    def samples_per_pixel(self) -> int:
        return 3 if self.color else 1

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * self.samples_per_pixel

    def conform(self, frame: ImageFrame) -> np.ndarray:
        """Return the frame's pixels in this layout, or raise when they cannot fit."""
        if (frame.rows, frame.columns) != (self.rows, self.columns):
            raise ImageInputError(
                f"The frame {frame.name} is {frame.columns}x{frame.rows} pixels but "
                f"the first frame {self.name} is {self.columns}x{self.rows}. All "
                "frames of a cine must have the same size."
            )
        if self.color and not frame.is_color:
            return np.repeat(frame.pixels[:, :, None], 3, axis=2)
        if frame.is_color and not self.color:
            raise ImageInputError(
                f"The frame {frame.name} is colour but the first frame {self.name} "
                "is grey. Convert the first frame to RGB so the whole cine is colour."
            )
        return frame.pixels


@dataclass
class _Spooled:
    """Encoded frames in the spool file, in order."""

    lengths: List[int] = field(default_factory=list)
    frame_steps: List[Tuple[LossyStep, ...]] = field(default_factory=list)
    data_bytes: int = 0

    @property
    def count(self) -> int:
        return len(self.lengths)

    def append(self, length: int, steps: Tuple[LossyStep, ...]) -> None:
        self.lengths.append(length)
        self.frame_steps.append(steps)
        self.data_bytes += length

    def lossy_steps(self, layout: _FrameLayout, input_steps) -> List[LossyStep]:
        """Combine the inputs' lossy steps with this encoding's step, in order."""
        steps = list(input_steps) or _merge_frame_steps(self.frame_steps)
        method = layout.encoder.lossy_method
        if method:
            ratio = layout.frame_bytes * self.count / max(self.data_bytes, 1)
            steps.append(LossyStep(method, ratio))
        return steps


def _frame_loaders(frames, background) -> Tuple[Optional[int], Iterator[Callable]]:
    """Return the frame count (None when unknown) and one loader per frame."""
    if hasattr(frames, "loaders"):
        return len(frames), iter(frames.loaders())
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        frames = list(frames)
    if _is_single_image(frames):
        frames = [frames]
    if isinstance(frames, (list, tuple)):
        sequence = FrameSequence(frames, background)
        return len(sequence), iter(sequence.loaders())
    reported: set = set()

    def lazy():
        for index, item in enumerate(frames):
            if isinstance(item, ImageFrame):
                yield lambda item=item: item
            else:
                name = (
                    None
                    if isinstance(item, (str, os.PathLike))
                    else f"frame {index + 1}"
                )
                yield lambda item=item, name=name: read_image(
                    item, background, name, reported
                )

    return None, lazy()


def _is_single_frame(count: Optional[int], loaders: Iterator) -> Tuple[bool, Iterator]:
    """Return whether the first frame is the only one, and the remaining loaders.

    When the count is unknown the next loader is taken to find out, and it is
    put back in front of the loaders that are returned.
    """
    if count is not None:
        return count == 1, loaders
    following = next(loaders, None)
    if following is None:
        return True, loaders
    return False, itertools.chain([following], loaders)


def _is_single_image(value) -> bool:
    from PIL import Image

    if isinstance(value, (str, os.PathLike, Image.Image, ImageFrame)):
        return True
    return isinstance(value, np.ndarray) and value.ndim in (2, 3)


def _spool_frames(
    first: ImageFrame,
    loaders: Iterator[Callable],
    count: Optional[int],
    layout: _FrameLayout,
    spool,
    size_limit_bytes: int,
    workers: Optional[int],
    report: ProgressCallback,
) -> _Spooled:
    """Encode the frames in a thread pool and append them to ``spool`` in order."""
    encoder = layout.encoder
    first_data = encoder.encode(layout.conform(first))
    if count is not None:
        estimate = count * (len(first_data) + 8)
        if estimate > size_limit_bytes:
            raise ObjectTooLargeError(
                _too_large_message(estimate, size_limit_bytes, count, layout, True)
            )

    spooled = _Spooled()

    def store(data: bytes, steps) -> None:
        spool.write(data)
        spooled.append(len(data), steps)
        if spooled.data_bytes > size_limit_bytes:
            raise ObjectTooLargeError(
                _too_large_message(
                    spooled.data_bytes, size_limit_bytes, count, layout, False
                )
            )
        report(spooled.count, count or 0, "Encoding frames")

    def encode(loader) -> Tuple[bytes, tuple]:
        frame = loader()
        return encoder.encode(layout.conform(frame)), frame.lossy_steps

    store(first_data, first.lossy_steps)
    thread_count = max(1, workers or os.cpu_count() or 1)
    pending: deque = deque()
    with ThreadPoolExecutor(thread_count, thread_name_prefix="m2d-encode") as pool:
        try:
            for loader in loaders:
                pending.append(pool.submit(encode, loader))
                while len(pending) > 2 * thread_count:
                    store(*pending.popleft().result())
            while pending:
                store(*pending.popleft().result())
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return spooled


def _merge_frame_steps(frame_steps) -> List[LossyStep]:
    """Combine per-frame lossy steps: the first frame's methods, the mean ratios."""
    longest = max((len(steps) for steps in frame_steps), default=0)
    merged = []
    for position in range(longest):
        at_position = [
            steps[position] for steps in frame_steps if len(steps) > position
        ]
        ratios = [step.ratio for step in at_position]
        ratio = None if None in ratios else sum(ratios) / len(ratios)
        merged.append(LossyStep(at_position[0].method, ratio))
    return merged


def _too_large_message(size, limit, count, layout, estimated) -> str:
    frames = f"{count} frame(s)" if count is not None else "the frames"
    size_text = (
        f"about {size / MIB:.1f}" if estimated else f"more than {size / MIB:.1f}"
    )
    return (
        f"The Secondary Capture of {frames} of {layout.columns}x{layout.rows} "
        f"pixels would be {size_text} MiB, over the limit of {limit / MIB:.0f} MiB. "
        "Lower the JPEG quality, use fewer frames (subsample the video) or "
        "smaller frames."
    )


# ---------------------------------------------------------------------------
# Dataset


def _check_options(conversion_type, burned_in_annotation, frame_time_ms) -> None:
    if conversion_type not in ("WSD", "DV", "DI", "DF", "SD", "SI", "DRW", "SYN"):
        raise ImageInputError(
            f"Invalid Conversion Type {conversion_type!r}: use WSD for workstation "
            "captures or DV for digitized video."
        )
    if burned_in_annotation not in ("YES", "NO"):
        raise ImageInputError(
            f"Invalid Burned In Annotation {burned_in_annotation!r}: use YES or NO."
        )
    if frame_time_ms is not None and not frame_time_ms > 0:
        raise ImageInputError(
            f"Invalid frame time {frame_time_ms} ms: give a positive number, "
            "1000 divided by the frame rate."
        )


def _build_dataset(
    source: SourceSeries,
    series: SeriesInfo,
    layout: _FrameLayout,
    count: int,
    sop_instance_uid: str,
    *,
    conversion_type: str,
    frame_time_ms: Optional[float],
    burned_in_annotation: str,
    recognizable_visual_features: Optional[str],
    lossy_steps: Sequence[LossyStep],
    reference_source: bool,
    pixel_aspect_ratio,
) -> Dataset:
    sop_class = (
        MULTIFRAME_TRUE_COLOR_SC if layout.color else MULTIFRAME_GRAYSCALE_BYTE_SC
    )
    dataset = base_dataset(
        source, series, sop_class, source.modality or "OT", sop_instance_uid
    )
    now = datetime.datetime.now()

    _add_general_series(dataset, source)

    dataset.ImageType = ["DERIVED", "SECONDARY"]
    dataset.PatientOrientation = ""
    if reference_source and source.instances:
        dataset.SourceImageSequence = _source_image_items(source)

    dataset.ConversionType = conversion_type
    dataset.SecondaryCaptureDeviceManufacturer = MANUFACTURER
    dataset.SecondaryCaptureDeviceManufacturerModelName = MODEL_NAME
    dataset.SecondaryCaptureDeviceSoftwareVersions = __version__
    dataset.DateOfSecondaryCapture = now.strftime("%Y%m%d")
    dataset.TimeOfSecondaryCapture = now.strftime("%H%M%S")

    dataset.BurnedInAnnotation = burned_in_annotation
    if recognizable_visual_features:
        dataset.RecognizableVisualFeatures = recognizable_visual_features
    if not layout.color:
        # Grayscale Byte SC requires a rescale, and screenshot pixels are display
        # values, so it is the identity in unspecified units (US).
        dataset.RescaleIntercept = "0"
        dataset.RescaleSlope = "1"
        dataset.RescaleType = "US"
        dataset.PresentationLUTShape = "IDENTITY"

    _add_image_pixel(dataset, layout, count, pixel_aspect_ratio)
    # Frame Increment Pointer is required only with more than one frame, and
    # dciodvfy rejects it on a single frame, so a one-frame cine is a still.
    if frame_time_ms is not None and count > 1:
        _add_cine(dataset, frame_time_ms, count)
    if lossy_steps:
        _add_lossy_compression(dataset, lossy_steps)

    finish_character_set(dataset, source)
    return dataset


def _add_general_series(dataset: Dataset, source: SourceSeries) -> None:
    if source.body_part_examined:
        dataset.BodyPartExamined = source.body_part_examined
    laterality = source.header.get("Laterality")
    if laterality:
        dataset.Laterality = laterality
    elif not source.body_part_examined:
        # Laterality is Type 2C. Without Body Part Examined a reader cannot
        # tell whether the body part is paired, so it is written empty (unknown).
        dataset.Laterality = ""


def _source_image_items(source: SourceSeries) -> List[Dataset]:
    items = []
    for instance in source.instances:
        item = Dataset()
        item.ReferencedSOPClassUID = instance.sop_class_uid
        item.ReferencedSOPInstanceUID = instance.sop_instance_uid
        items.append(item)
    return items


def _add_image_pixel(dataset: Dataset, layout: _FrameLayout, count, aspect) -> None:
    dataset.SamplesPerPixel = layout.samples_per_pixel
    dataset.PhotometricInterpretation = layout.encoder.photometric_interpretation
    if layout.color:
        dataset.PlanarConfiguration = 0
    dataset.Rows = layout.rows
    dataset.Columns = layout.columns
    dataset.BitsAllocated = 8
    dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0
    if aspect and aspect[0] != aspect[1]:
        # Pixel Aspect Ratio is row spacing to column spacing, the reverse of a
        # video's sample aspect ratio (pixel width to pixel height).
        dataset.PixelAspectRatio = [int(aspect[1]), int(aspect[0])]
    dataset.NumberOfFrames = count


def _add_cine(dataset: Dataset, frame_time_ms: float, count: int) -> None:
    frame_rate = 1000.0 / frame_time_ms
    dataset.FrameIncrementPointer = FRAME_TIME_TAG
    dataset.FrameTime = _decimal_string(frame_time_ms)
    dataset.PreferredPlaybackSequencing = 0
    dataset.StartTrim = 1
    dataset.StopTrim = count
    dataset.RecommendedDisplayFrameRate = max(1, round(frame_rate))
    dataset.CineRate = max(1, round(frame_rate))
    dataset.EffectiveDuration = _decimal_string(count * frame_time_ms / 1000.0)
    dataset.ActualFrameDuration = max(1, round(frame_time_ms))


def _add_lossy_compression(dataset: Dataset, steps: Sequence[LossyStep]) -> None:
    dataset.LossyImageCompression = "01"
    dataset.LossyImageCompressionMethod = [step.method for step in steps]
    if all(step.ratio is not None for step in steps):
        dataset.LossyImageCompressionRatio = [
            _decimal_string(step.ratio) for step in steps
        ]
    else:
        # NOTE: a Pillow image or array that was a JPEG in memory has no known
        # compressed size, so the ratios are left out and only methods are listed.
        LOGGER.info("Lossy Image Compression Ratio left out: a ratio is unknown")


def _decimal_string(value: float) -> str:
    """Format a DS value in at most 16 characters."""
    text = f"{value:.10g}"
    precision = 10
    while len(text) > 16:
        precision -= 1
        text = f"{value:.{precision}g}"
    return text


# ---------------------------------------------------------------------------
# File writing


def _write_object(
    dataset: Dataset,
    spooled: _Spooled,
    encoder: FrameEncoder,
    spool,
    path: Path,
    size_warning_bytes: int,
    size_limit_bytes: int,
) -> List[str]:
    """Write the header and the spooled Pixel Data, and return the size warnings."""
    offsets = _frame_offsets(spooled.lengths)
    use_extended = encoder.is_encapsulated and offsets[-1] > BASIC_OFFSET_TABLE_MAX
    if use_extended:
        dataset.ExtendedOffsetTable = np.asarray(offsets, "<u8").tobytes()
        dataset.ExtendedOffsetTableLengths = np.asarray(
            spooled.lengths, "<u8"
        ).tobytes()

    header = io.BytesIO()
    save_dataset(dataset, header, encoder.transfer_syntax_uid)
    if encoder.is_encapsulated:
        table = b"" if use_extended else np.asarray(offsets, "<u4").tobytes()
        pixel_bytes = 12 + 8 + len(table) + 8 * spooled.count + spooled.data_bytes + 8
    else:
        pixel_bytes = 12 + spooled.data_bytes + spooled.data_bytes % 2
        if spooled.data_bytes > NATIVE_PIXEL_DATA_MAX:
            raise ObjectTooLargeError(
                f"{spooled.count} uncompressed frames need "
                f"{spooled.data_bytes / MIB:.1f} MiB, more than the 4 GiB that "
                "Explicit VR Little Endian Pixel Data can contain. Use a JPEG "
                "transfer syntax, fewer frames or smaller frames."
            )
    size = header.tell() + pixel_bytes
    if size > size_limit_bytes:
        raise ObjectTooLargeError(
            f"The Secondary Capture {path.name} would be {size / MIB:.1f} MiB, over "
            f"the limit of {size_limit_bytes / MIB:.0f} MiB. Lower the JPEG quality, "
            "use fewer frames or smaller frames."
        )
    warnings = []
    if size > size_warning_bytes:
        message = (
            f"The Secondary Capture {path.name} is {size / MIB:.1f} MiB, more than "
            f"{size_warning_bytes / MIB:.0f} MiB; some servers reject objects this "
            "large."
        )
        LOGGER.warning(message)
        warnings.append(message)

    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as out:
            out.write(header.getvalue())
            spool.seek(0)
            if encoder.is_encapsulated:
                _write_encapsulated(out, spool, spooled.lengths, table)
            else:
                out.write(_native_pixel_data_header(spooled.data_bytes))
                shutil.copyfileobj(spool, out, _COPY_CHUNK)
                if spooled.data_bytes % 2:
                    out.write(b"\x00")
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    return warnings


def _frame_offsets(lengths: Sequence[int]) -> List[int]:
    """Offsets of each frame's item from the first item after the Basic Offset Table."""
    offsets, position = [], 0
    for length in lengths:
        offsets.append(position)
        position += 8 + length
    return offsets


def _write_encapsulated(out, spool, lengths: Sequence[int], table: bytes) -> None:
    out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
    out.write(_ITEM + struct.pack("<I", len(table)) + table)
    for length in lengths:
        out.write(_ITEM + struct.pack("<I", length))
        remaining = length
        while remaining:
            chunk = spool.read(min(remaining, _COPY_CHUNK))
            if not chunk:
                raise Media2DICOMError("The frame spool file ended early.")
            out.write(chunk)
            remaining -= len(chunk)
    out.write(_SEQUENCE_DELIMITER)


def _native_pixel_data_header(length: int) -> bytes:
    return struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, length + length % 2)


# ---------------------------------------------------------------------------
# Decompression


def _check_decompressible(dataset: Dataset, transfer_syntax: str, path: Path) -> None:
    from Media2DICOMLib.jpeg import LOSSLESS_JPEG_TRANSFER_SYNTAXES

    jpeg_syntaxes = (*LOSSY_TRANSFER_SYNTAXES, *LOSSLESS_JPEG_TRANSFER_SYNTAXES)
    if transfer_syntax not in jpeg_syntaxes:
        raise Media2DICOMError(
            f"{path} has transfer syntax {transfer_syntax}, not a JPEG syntax, so "
            "there is nothing to decompress."
        )
    if int(dataset.get("BitsAllocated", 0)) != 8:
        raise Media2DICOMError(
            f"{path} has Bits Allocated {dataset.get('BitsAllocated')}; only 8-bit "
            "Secondary Capture images are decompressed."
        )


def _read_fragments(stream, path: Path) -> List[Tuple[int, int]]:
    """Return the file offset and length of each Pixel Data item, in file order."""
    group, element, vr, _, length = struct.unpack("<HH2sHI", stream.read(12))
    if (group << 16 | element) != PIXEL_DATA_TAG or length != 0xFFFFFFFF:
        raise Media2DICOMError(
            f"{path} has no encapsulated Pixel Data where the header ends."
        )
    items = []
    while True:
        raw = stream.read(8)
        if len(raw) < 8:
            raise Media2DICOMError(f"{path} ends inside its encapsulated Pixel Data.")
        group, element, length = struct.unpack("<HHI", raw)
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        if (group, element) != (0xFFFE, 0xE000):
            raise Media2DICOMError(
                f"{path} has an invalid item tag ({group:04X},{element:04X}) in its "
                "Pixel Data."
            )
        items.append((stream.tell(), length))
        stream.seek(length, os.SEEK_CUR)
    if not items:
        raise Media2DICOMError(f"{path} has no Basic Offset Table item.")
    return items


def _group_fragments(items, dataset: Dataset, stream, path: Path) -> List[list]:
    """Group the fragments of each frame, using the offset tables when present."""
    (table_offset, table_length), fragments = items[0], items[1:]
    frame_count = int(dataset.get("NumberOfFrames", 1) or 1)
    first_item = table_offset + table_length
    starts = None
    if table_length:
        stream.seek(table_offset)
        starts = list(np.frombuffer(stream.read(table_length), "<u4"))
    elif "ExtendedOffsetTable" in dataset:
        starts = list(np.frombuffer(dataset.ExtendedOffsetTable, "<u8"))
    if starts is not None:
        positions = [first_item + int(start) + 8 for start in starts]
        groups: List[list] = []
        for fragment in fragments:
            while (
                len(groups) < len(positions) and fragment[0] >= positions[len(groups)]
            ):
                groups.append([])
            groups[-1].append(fragment)
    elif len(fragments) == frame_count:
        groups = [[fragment] for fragment in fragments]
    elif frame_count == 1:
        groups = [fragments]
    else:
        groups = []
        for fragment in fragments:
            stream.seek(fragment[0])
            if stream.read(2) == b"\xff\xd8" or not groups:
                groups.append([])
            groups[-1].append(fragment)
    if len(groups) != frame_count:
        raise Media2DICOMError(
            f"{path} declares {frame_count} frames but its Pixel Data contains "
            f"{len(groups)}."
        )
    return groups


def _write_decoded_frames(out, stream, frame_spans, transfer_syntax, shape, path):
    """Decode each frame's fragments and append its native pixels to ``out``."""
    for index, spans in enumerate(frame_spans):
        data = b"".join(_read_span(stream, span) for span in spans)
        pixels = decode_frame(data, transfer_syntax)
        if pixels.shape != shape or pixels.dtype != np.uint8:
            raise Media2DICOMError(
                f"Frame {index + 1} of {path} decodes to {pixels.shape} "
                f"{pixels.dtype}, but Rows, Columns and Samples per Pixel give "
                f"{shape} uint8."
            )
        out.write(np.ascontiguousarray(pixels).tobytes())


def _read_span(stream, span: Tuple[int, int]) -> bytes:
    stream.seek(span[0])
    return stream.read(span[1])


def _make_native_header(dataset: Dataset, transfer_syntax, fragments, frame_bytes):
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in dataset:
            delattr(dataset, keyword)
    if int(dataset.SamplesPerPixel) == 3:
        dataset.PhotometricInterpretation = "RGB"
        dataset.PlanarConfiguration = 0
    if transfer_syntax in LOSSY_TRANSFER_SYNTAXES:
        dataset.LossyImageCompression = "01"
        if "LossyImageCompressionMethod" not in dataset:
            compressed = sum(length for _, length in fragments[1:])
            frames = int(dataset.get("NumberOfFrames", 1) or 1)
            ratio = frame_bytes * frames / max(compressed, 1)
            dataset.LossyImageCompressionMethod = "ISO_10918_1"
            dataset.LossyImageCompressionRatio = _decimal_string(ratio)
