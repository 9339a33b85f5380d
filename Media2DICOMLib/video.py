"""Video files (MP4, MOV, AVI, MKV and others FFmpeg reads) decoded into frames.

Decoding uses PyAV (the ``av`` package, FFmpeg's libraries). The frame rate,
duration and frame count are read before any frame is decoded, so a caller can
check the object size before encoding starts. Frames are decoded one at a time
while the object is written.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Tuple, Union

import numpy as np

from Media2DICOMLib.errors import ImageInputError, ObjectTooLargeError
from Media2DICOMLib.images import ImageFrame, LossyStep

LOGGER = logging.getLogger(__name__)

MIB = 1024 * 1024

# Lossy Image Compression Method (0028,2114) defined terms (DICOM PS3.3
# C.7.6.1.1.5) for the video codecs that have one, keyed by FFmpeg codec name.
LOSSY_VIDEO_METHODS = {
    "mjpeg": "ISO_10918_1",
    "mpeg2video": "ISO_13818_2",
    "h264": "ISO_14496_10",
    "hevc": "ISO_23008_2",
}

# FFmpeg codecs that store every pixel exactly. Any other codec counts as lossy.
LOSSLESS_VIDEO_CODECS = {
    "rawvideo",
    "ffv1",
    "huffyuv",
    "ffvhuff",
    "png",
    "apng",
    "utvideo",
    "qtrle",
    "magicyuv",
    "r210",
    "v210",
    "bmp",
    "tiff",
}


@dataclass
class VideoFrames:
    """Frames of a video file with its timing, decoded lazily.

    ``frame_rate`` (frames per second), ``duration`` (seconds) and ``count``
    describe the frames that iteration yields, after subsampling. ``size`` is
    ``(width, height)`` in pixels as displayed, after any rotation.
    ``lossy_steps`` contains the video codec's compression when it is lossy.
    """

    path: Path
    frame_rate: float
    duration: float
    count: int
    size: Tuple[int, int]
    codec: str
    subsample: int = 1
    source_frame_count: int = 0
    lossy_steps: Tuple[LossyStep, ...] = ()
    pixel_aspect_ratio: Optional[Tuple[int, int]] = None

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[ImageFrame]:
        for loader in self.loaders():
            yield loader()

    @property
    def frames(self) -> Iterator[np.ndarray]:
        """Iterator over the frames as ``uint8`` RGB arrays."""
        return (frame.pixels for frame in self)

    def loaders(self) -> Iterator[Callable[[], ImageFrame]]:
        """Decode the video and yield one function per kept frame.

        Decoding happens in the caller's thread. Each function converts its
        decoded frame to RGB, so a thread pool can run them.
        """
        av = _import_av()
        kept_count = 0
        with _open_container(av, self.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            try:
                for index, frame in enumerate(container.decode(stream)):
                    if index % self.subsample:
                        continue
                    if kept_count >= self.count:
                        break
                    kept_count += 1
                    yield _bind_frame(frame, f"{self.path.name} frame {index + 1}")
            except _ffmpeg_error(av) as exc:
                raise ImageInputError(
                    f"Failed to decode the video {self.path} after {kept_count} "
                    f"frames: {exc}"
                ) from exc


def read_video(
    path: Union[str, os.PathLike],
    max_frames: Optional[int] = None,
    subsample: Union[int, str, None] = None,
) -> VideoFrames:
    """Open a video file and describe its frames without decoding them.

    Parameters
    ----------
    path : path
        The video file.
    max_frames : int, optional
        Maximum number of frames to keep. A longer video is rejected unless
        ``subsample`` reduces it enough.
    subsample : int or "auto", optional
        Keep every n-th frame; the frame rate is divided by n. ``"auto"`` picks
        the smallest n that fits ``max_frames``.

    Raises
    ------
    ImageInputError
        When the file is missing, is not a video, or cannot be decoded.
    ObjectTooLargeError
        When the video has more than ``max_frames`` frames after subsampling.
        The message gives the frame count and the uncompressed size.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"The video file {path} does not exist. Check the path.")
    av = _import_av()
    with _open_container(av, path) as container:
        # FFmpeg opens still images as one-frame videos through its image
        # demuxers ("image2" and the "*_pipe" family), which are not videos.
        format_names = set((container.format.name or "").split(","))
        if "image2" in format_names or any(n.endswith("_pipe") for n in format_names):
            raise ImageInputError(
                f"{path} is a still image, not a video. Give it as an image file "
                "instead (without --video on the command line)."
            )
        if not container.streams.video:
            raise ImageInputError(
                f"{path} has no video stream. Give a video file such as MP4 or MOV."
            )
        stream = container.streams.video[0]
        frame_rate = _frame_rate(stream, path)
        codec = stream.codec_context.name
        width, height = stream.codec_context.width, stream.codec_context.height
        source_count, stream_bytes = _count_frames(container, stream)
        aspect = _sample_aspect_ratio(stream)
    if source_count == 0 or not width or not height:
        raise ImageInputError(f"The video {path} contains no frames.")
    quarter_turns = _first_frame_rotation(av, path)
    if quarter_turns % 2:
        width, height = height, width
        if aspect:
            aspect = (aspect[1], aspect[0])

    step = _subsample_step(subsample, source_count, max_frames, path)
    count = math.ceil(source_count / step)
    if max_frames is not None and count > max_frames:
        raw = count * width * height * 3
        subsample_note = f" ({count} when keeping every {step})" if step > 1 else ""
        raise ObjectTooLargeError(
            f"The video {path} has {source_count} frames of {width}x{height} "
            f"pixels{subsample_note}, about {raw / MIB:.0f} MiB uncompressed, but at most "
            f"{max_frames} frames are allowed. Subsample it with a step of "
            f"{math.ceil(source_count / max_frames)} or more (--subsample "
            f"{math.ceil(source_count / max_frames)} or --subsample auto on the command "
            "line), or cut it shorter."
        )

    steps: Tuple[LossyStep, ...] = ()
    if codec not in LOSSLESS_VIDEO_CODECS:
        ratio = (
            width * height * 3 * source_count / stream_bytes if stream_bytes else None
        )
        method = LOSSY_VIDEO_METHODS.get(codec)
        if method is None:
            # NOTE: DICOM has no defined term for this codec, so the FFmpeg name
            # is recorded as the method.
            method = codec.upper()[:16]
        steps = (LossyStep(method, ratio),)

    kept_rate = frame_rate / step
    LOGGER.info(
        "Video %s: %s %dx%d, %d frames at %.3f frame/s, keeping %d",
        path,
        codec,
        width,
        height,
        source_count,
        frame_rate,
        count,
    )
    return VideoFrames(
        path=path,
        frame_rate=kept_rate,
        duration=count / kept_rate,
        count=count,
        size=(width, height),
        codec=codec,
        subsample=step,
        source_frame_count=source_count,
        lossy_steps=steps,
        pixel_aspect_ratio=aspect,
    )


def _import_av():
    try:
        import av
    except ImportError as exc:
        raise ImageInputError(
            "Reading video needs the PyAV package (pip install av), which is not "
            "installed."
        ) from exc
    return av


def _ffmpeg_error(av):
    # Older PyAV releases call the FFmpeg error class AVError.
    return getattr(av, "FFmpegError", None) or av.AVError


def _open_container(av, path: Path):
    try:
        return av.open(str(path))
    except _ffmpeg_error(av) as exc:
        raise ImageInputError(
            f"Failed to open {path} as a video: {exc}. Use MP4, MOV, AVI or MKV."
        ) from exc


def _frame_rate(stream, path: Path) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or float(rate) <= 0:
        raise ImageInputError(
            f"The video {path} declares no frame rate. Re-encode it with a fixed "
            "frame rate."
        )
    # NOTE: variable frame rate video is written with its average rate, so
    # Frame Time is uniform even when the source timing was not.
    return float(rate)


def _count_frames(container, stream) -> Tuple[int, int]:
    """Count the video packets and their bytes by demuxing, without decoding."""
    count = 0
    total = 0
    for packet in container.demux(stream):
        if packet.size:
            count += 1
            total += packet.size
    return count, total


def _sample_aspect_ratio(stream) -> Optional[Tuple[int, int]]:
    ratio = stream.codec_context.sample_aspect_ratio or stream.sample_aspect_ratio
    if not ratio or ratio.numerator <= 0 or ratio.denominator <= 0:
        return None
    return int(ratio.numerator), int(ratio.denominator)


def _subsample_step(subsample, count: int, max_frames: Optional[int], path) -> int:
    if subsample is None:
        return 1
    if subsample == "auto":
        if max_frames is None or count <= max_frames:
            return 1
        return math.ceil(count / max_frames)
    if isinstance(subsample, bool) or not isinstance(subsample, int) or subsample < 1:
        raise ImageInputError(
            f"Invalid subsample value {subsample!r} for {path}: give a whole "
            "number of 1 or more, or 'auto'."
        )
    return subsample


def _bind_frame(frame, name: str) -> Callable[[], ImageFrame]:
    def convert() -> ImageFrame:
        pixels = _upright(frame.to_ndarray(format="rgb24"), _rotation_of(frame))
        return ImageFrame(np.ascontiguousarray(pixels), (), name)

    return convert


def _rotation_of(frame) -> int:
    """Return a frame's display rotation in counter-clockwise quarter turns.

    Phone videos store portrait recordings as landscape frames with a display
    matrix. PyAV 18 reports its angle as ``VideoFrame.rotation`` in
    counter-clockwise degrees. A release without that attribute gives 0.
    """
    degrees = getattr(frame, "rotation", 0) or 0
    quarter_turns = round(degrees / 90.0)
    if abs(degrees - quarter_turns * 90) > 1:
        # NOTE: rotations that are not multiples of 90 degrees are ignored.
        LOGGER.warning("Ignored a video display rotation of %s degrees", degrees)
        return 0
    return quarter_turns % 4


def _upright(pixels: np.ndarray, quarter_turns: int) -> np.ndarray:
    # numpy's rot90 turns counter-clockwise for positive k, like the display
    # matrix angle.
    return np.rot90(pixels, quarter_turns) if quarter_turns else pixels


def _first_frame_rotation(av, path: Path) -> int:
    with _open_container(av, path) as container:
        for frame in container.decode(video=0):
            return _rotation_of(frame)
    return 0
