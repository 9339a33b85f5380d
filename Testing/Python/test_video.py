"""Video files decoded with PyAV and written as cine Secondary Capture objects."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from Media2DICOMLib import cli
from Media2DICOMLib.errors import ImageInputError, ObjectTooLargeError
from Media2DICOMLib.jpeg import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
)
from Media2DICOMLib.new_series import SeriesInfo
from Media2DICOMLib.secondary_capture import write_secondary_capture
from Media2DICOMLib.source_study import read_source_series
from Media2DICOMLib.video import read_video

from dicom_checks import assert_dciodvfy_clean
from test_secondary_capture import psnr, rgb_pixels

av = pytest.importorskip("av", reason="PyAV (pip install av) is needed for video")

WIDTH, HEIGHT = 160, 120
FRAME_RATE = 10
SECONDS = 10
MIN_PSNR_DB = 40.0


def moving_frame(index: int) -> np.ndarray:
    """A smooth test picture with a bar that moves one step per frame.

    Colours stay between 40 and 210, as in rendered or endoscopic scenes. A ramp
    over the full 0-255 range of red measured 39.8 dB after 4:2:2 JPEG at
    quality 90, because the video's own 4:2:0 chroma is resampled twice.
    """
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    frame = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    frame[..., 0] = (40 + x * 170 // (WIDTH - 1)).astype(np.uint8)
    frame[..., 1] = (40 + y * 170 // (HEIGHT - 1)).astype(np.uint8)
    frame[..., 2] = 40 + (index * 2) % 170
    left = (index * 4) % (WIDTH - 16)
    frame[:, left : left + 16] = (240, 240, 240)
    return frame


def make_video(
    path: Path,
    codec: str = "libx264",
    pixel_format: str = "yuv420p",
    frame_count: int = FRAME_RATE * SECONDS,
    rate=FRAME_RATE,
    configure=None,
    frame_of=moving_frame,
) -> Path:
    """Encode ``frame_count`` frames into ``path`` with PyAV.

    ``configure`` is called with the new stream before the first frame, to set
    options such as a display rotation. ``frame_of(index)`` makes each frame.
    """
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width = WIDTH
        stream.height = HEIGHT
        stream.pix_fmt = pixel_format
        if configure:
            configure(stream)
        for index in range(frame_count):
            frame = av.VideoFrame.from_ndarray(frame_of(index), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decoded_frames(path: Path) -> np.ndarray:
    """Every frame of ``path`` as PyAV decodes it, in RGB."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames)


@pytest.fixture(scope="module")
def mp4_video(tmp_path_factory) -> Path:
    """A 10-second H.264 MP4 of 160x120 pixels at 10 frames per second."""
    folder = tmp_path_factory.mktemp("video")
    return make_video(folder / "clip.mp4")


def test_read_video_describes_mp4(mp4_video):
    """Frame count, rate, duration, size and codec come from the file."""
    video = read_video(mp4_video)

    assert video.count == 100
    assert len(video) == 100
    assert video.frame_rate == pytest.approx(10.0)
    assert video.duration == pytest.approx(10.0)
    assert video.size == (WIDTH, HEIGHT)
    assert video.codec == "h264"
    assert video.subsample == 1
    assert video.source_frame_count == 100
    assert len(video.lossy_steps) == 1
    assert video.lossy_steps[0].method == "ISO_14496_10"
    assert video.lossy_steps[0].ratio > 1.0


def test_read_video_frames_match_pyav(mp4_video):
    """Iterating the video yields the frames PyAV decodes, in order."""
    video = read_video(mp4_video)

    frames = np.stack(list(video.frames))

    assert frames.shape == (100, HEIGHT, WIDTH, 3)
    assert frames.dtype == np.uint8
    assert np.array_equal(frames, decoded_frames(mp4_video))


def test_video_cine_in_orthanc(tmp_path, ct_small, orthanc, mp4_video):
    """A 10-second video becomes a DV cine whose frames and timing match it."""
    source = read_source_series(ct_small)
    series = SeriesInfo(series_description="Endoscopy video")
    video = read_video(mp4_video)

    item = write_secondary_capture(source, video, tmp_path / "video.dcm", series)

    assert item.number_of_frames == 100
    assert item.transfer_syntax_uid == JPEGBaseline8Bit
    assert_dciodvfy_clean(item.path)
    dataset = pydicom.dcmread(item.path)
    assert dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7.4"
    assert dataset.Modality == source.modality
    assert dataset.StudyInstanceUID == source.study_instance_uid
    assert dataset.SeriesInstanceUID == series.series_instance_uid
    assert dataset.SeriesDescription == "Endoscopy video"
    assert "FrameOfReferenceUID" not in dataset
    assert "SourceImageSequence" not in dataset
    assert dataset.ConversionType == "DV"
    assert dataset.NumberOfFrames == 100
    assert dataset.Rows == HEIGHT
    assert dataset.Columns == WIDTH
    assert dataset.FrameIncrementPointer == 0x00181063
    assert float(dataset.FrameTime) == pytest.approx(100.0)
    assert dataset.CineRate == 10
    assert dataset.RecommendedDisplayFrameRate == 10
    assert float(dataset.EffectiveDuration) == pytest.approx(10.0)
    assert dataset.PhotometricInterpretation == "YBR_FULL_422"
    assert dataset.LossyImageCompression == "01"
    assert list(dataset.LossyImageCompressionMethod) == ["ISO_14496_10", "ISO_10918_1"]
    assert len(dataset.LossyImageCompressionRatio) == 2
    assert "PixelAspectRatio" not in dataset

    pixels = rgb_pixels(dataset)
    assert pixels.shape == (100, HEIGHT, WIDTH, 3)
    assert psnr(pixels, decoded_frames(mp4_video)) > MIN_PSNR_DB

    stored = orthanc.upload(item.path)
    assert stored["Status"] == "Success"
    tags = orthanc.get_json(f"/instances/{stored['ID']}/simplified-tags")
    assert tags["NumberOfFrames"] == "100"
    preview = orthanc.get_bytes(f"/instances/{stored['ID']}/frames/0/preview")
    with Image.open(io.BytesIO(preview)) as image:
        assert image.size == (WIDTH, HEIGHT)
    last = orthanc.get_bytes(f"/instances/{stored['ID']}/frames/99/preview")
    with Image.open(io.BytesIO(last)) as image:
        assert image.size == (WIDTH, HEIGHT)


def test_lossless_video_round_trip(tmp_path, ct_small):
    """An FFV1 video in MKV stays exact through JPEG Lossless, with no lossy step."""
    path = make_video(tmp_path / "clip.mkv", codec="ffv1", pixel_format="bgr0")
    source = read_source_series(ct_small)
    video = read_video(path)

    item = write_secondary_capture(
        source,
        video,
        tmp_path / "lossless.dcm",
        SeriesInfo(),
        transfer_syntax=JPEGLosslessSV1,
    )

    assert video.codec == "ffv1"
    assert video.lossy_steps == ()
    assert_dciodvfy_clean(item.path)
    dataset = pydicom.dcmread(item.path)
    assert "LossyImageCompression" not in dataset
    assert dataset.PhotometricInterpretation == "RGB"
    assert np.array_equal(dataset.pixel_array, decoded_frames(path))
    expected = np.stack([moving_frame(i) for i in range(100)])
    assert np.array_equal(dataset.pixel_array, expected)


@pytest.mark.parametrize(
    "suffix, codec, pixel_format, method",
    [
        (".avi", "mpeg4", "yuv420p", "MPEG4"),
        (".mov", "mjpeg", "yuvj422p", "ISO_10918_1"),
        (".mkv", "mpeg2video", "yuv420p", "ISO_13818_2"),
    ],
)
def test_containers_and_codecs(tmp_path, ct_small, suffix, codec, pixel_format, method):
    """AVI, MOV and MKV files decode, and each codec's lossy method is named."""
    path = make_video(
        tmp_path / f"clip{suffix}",
        codec=codec,
        pixel_format=pixel_format,
        frame_count=20,
    )
    source = read_source_series(ct_small)

    video = read_video(path)
    item = write_secondary_capture(
        source,
        video,
        tmp_path / "video.dcm",
        SeriesInfo(),
        transfer_syntax=ExplicitVRLittleEndian,
    )

    assert video.count == 20
    assert video.lossy_steps[0].method == method
    assert_dciodvfy_clean(item.path)
    dataset = pydicom.dcmread(item.path)
    assert dataset.NumberOfFrames == 20
    assert dataset.LossyImageCompression == "01"
    assert dataset.LossyImageCompressionMethod == method
    assert np.array_equal(dataset.pixel_array, decoded_frames(path))


def test_long_video_rejected_with_size(mp4_video):
    """A video over max_frames is rejected with its frame count and size."""
    with pytest.raises(ObjectTooLargeError) as raised:
        read_video(mp4_video, max_frames=30)

    message = str(raised.value)
    assert "100 frames of 160x120" in message
    assert "MiB uncompressed" in message
    assert "at most 30 frames" in message
    assert "step of 4" in message


def test_subsample_step(tmp_path, ct_small, mp4_video):
    """Keeping every second frame halves the count and the frame rate."""
    video = read_video(mp4_video, max_frames=60, subsample=2)

    item = write_secondary_capture(
        read_source_series(ct_small), video, tmp_path / "half.dcm", SeriesInfo()
    )

    assert video.count == 50
    assert video.frame_rate == pytest.approx(5.0)
    assert video.duration == pytest.approx(10.0)
    dataset = pydicom.dcmread(item.path)
    assert dataset.NumberOfFrames == 50
    assert float(dataset.FrameTime) == pytest.approx(200.0)
    assert psnr(rgb_pixels(dataset), decoded_frames(mp4_video)[::2]) > MIN_PSNR_DB


def test_subsample_auto_fits_max_frames(mp4_video):
    """'auto' picks the smallest step that fits max_frames."""
    video = read_video(mp4_video, max_frames=30, subsample="auto")

    assert video.subsample == 4
    assert video.count == 25
    assert video.frame_rate == pytest.approx(2.5)


def test_subsample_too_small_rejected(mp4_video):
    """A step that still leaves too many frames is rejected."""
    with pytest.raises(ObjectTooLargeError, match="50 when keeping every 2"):
        read_video(mp4_video, max_frames=30, subsample=2)


@pytest.mark.parametrize("subsample", [0, -1, 1.5, "half", True])
def test_invalid_subsample_rejected(mp4_video, subsample):
    """Subsample values other than positive integers or 'auto' are rejected."""
    with pytest.raises(ImageInputError, match="subsample"):
        read_video(mp4_video, subsample=subsample)


def test_fractional_frame_rate(tmp_path):
    """An NTSC rate of 30000/1001 frames per second is kept, not rounded."""
    path = make_video(tmp_path / "ntsc.mp4", frame_count=30, rate=Fraction(30000, 1001))

    video = read_video(path)

    assert video.frame_rate == pytest.approx(30000 / 1001, rel=1e-4)
    assert video.count == 30


def test_non_square_pixels_aspect_ratio(tmp_path, ct_small):
    """A sample aspect ratio other than 1:1 becomes Pixel Aspect Ratio."""
    # With PyAV 18, FFV1 in Matroska lost the sample aspect ratio and H.264 kept it.

    def wide_pixels(stream):
        stream.codec_context.sample_aspect_ratio = Fraction(4, 3)

    path = make_video(tmp_path / "anamorphic.mp4", frame_count=5, configure=wide_pixels)

    video = read_video(path)
    item = write_secondary_capture(
        read_source_series(ct_small), video, tmp_path / "sc.dcm", SeriesInfo()
    )

    assert video.pixel_aspect_ratio == (4, 3)
    assert_dciodvfy_clean(item.path)
    dataset = pydicom.dcmread(item.path)
    # Pixel Aspect Ratio is row spacing \ column spacing: 4:3 wide pixels are 3\4.
    assert list(dataset.PixelAspectRatio) == [3, 4]


def test_missing_video_rejected(tmp_path):
    """A missing video file is reported with its path."""
    with pytest.raises(ImageInputError, match="absent.mp4 does not exist"):
        read_video(tmp_path / "absent.mp4")


def test_non_video_file_rejected(tmp_path):
    """A file FFmpeg cannot open as video is reported with its path."""
    path = tmp_path / "notes.mp4"
    path.write_text("not a video")

    with pytest.raises(ImageInputError, match="notes.mp4"):
        read_video(path)


def test_audio_only_file_rejected(tmp_path):
    """A file without a video stream is rejected."""
    path = tmp_path / "tone.mka"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        samples = np.zeros((1, 800), dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

    with pytest.raises(ImageInputError, match="no video stream"):
        read_video(path)


def test_cli_video(tmp_path, ct_small, mp4_video, capsys):
    """The capture command writes a video as one cine object."""
    code = cli.main(
        [
            "capture",
            "--source",
            str(ct_small),
            "--video",
            str(mp4_video),
            "--max-frames",
            "40",
            "--subsample",
            "auto",
            "-o",
            str(tmp_path),
        ]
    )

    assert code == 0
    files = list(tmp_path.glob("*.dcm"))
    assert len(files) == 1
    assert_dciodvfy_clean(files[0])
    dataset = pydicom.dcmread(files[0])
    assert dataset.NumberOfFrames == 34
    assert float(dataset.FrameTime) == pytest.approx(300.0)
    assert dataset.SeriesDescription == "Video"
    assert "34 frame(s)" in capsys.readouterr().out


def test_cli_video_too_long(tmp_path, ct_small, mp4_video, capsys):
    """A video over --max-frames fails with exit code 1 and the size."""
    code = cli.main(
        [
            "capture",
            "--source",
            str(ct_small),
            "--video",
            str(mp4_video),
            "--max-frames",
            "10",
            "-o",
            str(tmp_path),
        ]
    )

    assert code == cli.EXIT_ERROR
    assert "100 frames" in capsys.readouterr().err
    assert list(tmp_path.glob("*.dcm")) == []


def test_display_rotation_applied(tmp_path, ct_small):
    """A phone-style display rotation of 90 degrees is applied to every frame."""
    frame = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    frame[:20, :40] = 255
    path = make_video(
        tmp_path / "portrait.mp4",
        frame_count=3,
        configure=lambda stream: stream.set_display_rotation(90),
        frame_of=lambda index: frame,
    )

    video = read_video(path)
    item = write_secondary_capture(
        read_source_series(ct_small),
        video,
        tmp_path / "sc.dcm",
        SeriesInfo(),
        transfer_syntax=ExplicitVRLittleEndian,
    )

    assert video.size == (HEIGHT, WIDTH)
    dataset = pydicom.dcmread(item.path)
    assert dataset.Rows == WIDTH
    assert dataset.Columns == HEIGHT
    first = dataset.pixel_array[0]
    # A counter-clockwise quarter turn moves the top-left block to bottom left.
    assert first[-40:, :20].mean() > 200
    assert first[:40, :20].mean() < 50


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tiff"])
def test_still_image_is_not_video(tmp_path, suffix):
    """A still image given as a video is rejected, not read as one frame."""
    path = tmp_path / f"still{suffix}"
    Image.new("RGB", (32, 24), (10, 200, 30)).save(path)

    with pytest.raises(ImageInputError, match="still image, not a video"):
        read_video(path)


def test_one_frame_video_valid(tmp_path, ct_small):
    """A one-frame video becomes a valid object without the cine attributes."""
    path = make_video(tmp_path / "one.mp4", frame_count=1)
    source = read_source_series(ct_small)

    written = write_secondary_capture(
        source, read_video(path), tmp_path / "one.dcm", SeriesInfo()
    )

    assert_dciodvfy_clean(written.path)
    dataset = pydicom.dcmread(written.path)
    assert int(dataset.NumberOfFrames) == 1
    assert "FrameIncrementPointer" not in dataset
    assert dataset.ConversionType == "DV"
