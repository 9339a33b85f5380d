"""Loading and normalising still images and cine frames."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from Media2DICOMLib.errors import ImageInputError
from Media2DICOMLib.images import (
    FrameSequence,
    ImageFrame,
    load_frames,
    load_image,
    natural_sort_key,
    read_image,
)

EXIF_ORIENTATION = 0x0112


def test_slicer_screenshot_rgba_loads_rgb(shared_data):
    """The RGBA 3D Slicer screenshot loads as its RGB channels."""
    path = shared_data / "screenshots" / "slicer-view.png"
    with Image.open(path) as image:
        assert image.mode == "RGBA"
        expected = np.asarray(image)[:, :, :3]

    pixels = load_image(path)

    assert pixels.dtype == np.uint8
    assert pixels.shape == (785, 879, 3)
    assert pixels.flags["C_CONTIGUOUS"]
    assert np.array_equal(pixels, expected)


def test_workstation_jpeg_records_lossy_step(shared_data):
    """A JPEG input carries its lossy step with the file's compression ratio."""
    path = shared_data / "screenshots" / "workstation-view.jpg"

    frame = read_image(path)

    assert frame.pixels.shape == (1155, 1916, 3)
    assert len(frame.lossy_steps) == 1
    assert frame.lossy_steps[0].method == "ISO_10918_1"
    expected_ratio = 1155 * 1916 * 3 / path.stat().st_size
    assert frame.lossy_steps[0].ratio == pytest.approx(expected_ratio)


def test_png_input_has_no_lossy_step(tmp_path):
    """A PNG file is lossless, so it records no lossy step."""
    path = tmp_path / "view.png"
    Image.new("RGB", (8, 6), (1, 2, 3)).save(path)

    frame = read_image(path)

    assert frame.lossy_steps == ()
    assert frame.name == str(path)


def test_alpha_flattened_onto_background():
    """Transparent, half and opaque pixels blend onto the chosen colour."""
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 0)
    rgba[0, 1] = (200, 100, 50, 255)
    rgba[0, 2] = (200, 100, 50, 128)
    background = (10, 20, 250)

    pixels = load_image(rgba, background=background)

    assert pixels.shape == (1, 3, 3)
    assert tuple(pixels[0, 0]) == background
    assert tuple(pixels[0, 1]) == (200, 100, 50)
    expected = [
        round((c * 128 + b * 127) / 255) for c, b in zip((200, 100, 50), background)
    ]
    assert list(pixels[0, 2]) == expected


def test_alpha_flatten_default_black():
    """Without a background colour transparent pixels become black."""
    rgba = np.full((2, 2, 4), 255, dtype=np.uint8)
    rgba[..., 3] = 0

    pixels = load_image(rgba)

    assert not pixels.any()


def test_alpha_flatten_logged_once(caplog):
    """A cine of transparent frames warns once, not once per frame."""
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    frames = FrameSequence([rgba] * 5)

    with caplog.at_level(logging.WARNING, logger="Media2DICOMLib.images"):
        loaded = list(frames)

    assert len(loaded) == 5
    warnings = [r for r in caplog.records if "Flattened" in r.getMessage()]
    assert len(warnings) == 1


def test_grey_alpha_on_grey_background_stays_grey():
    """Grey with alpha on a grey background stays a grey image."""
    grey_alpha = np.zeros((2, 2, 2), dtype=np.uint8)
    grey_alpha[..., 0] = 100
    grey_alpha[0, 0, 1] = 255

    pixels = load_image(grey_alpha, background=(50, 50, 50))

    assert pixels.shape == (2, 2)
    assert pixels[0, 0] == 100
    assert pixels[1, 1] == 50


def test_grey_alpha_on_colour_background_becomes_rgb():
    """Grey with alpha on a coloured background becomes RGB."""
    grey_alpha = np.zeros((1, 1, 2), dtype=np.uint8)

    pixels = load_image(grey_alpha, background=(255, 0, 0))

    assert pixels.shape == (1, 1, 3)
    assert tuple(pixels[0, 0]) == (255, 0, 0)


def test_palette_png_expanded(tmp_path):
    """A palette PNG loads as the RGB colours of its palette."""
    image = Image.new("P", (4, 2))
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    image.putpixel((1, 0), 1)
    image.putpixel((2, 1), 2)
    path = tmp_path / "palette.png"
    image.save(path)

    pixels = load_image(path)

    assert pixels.shape == (2, 4, 3)
    assert tuple(pixels[0, 1]) == (255, 0, 0)
    assert tuple(pixels[1, 2]) == (0, 255, 0)
    assert tuple(pixels[0, 0]) == (0, 0, 0)


def test_palette_transparency_flattened(tmp_path):
    """A palette entry marked transparent is flattened onto the background."""
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 255, 255, 0, 0] + [0] * (256 * 3 - 6))
    image.putpixel((1, 0), 1)
    path = tmp_path / "transparent.png"
    image.save(path, transparency=0)

    pixels = load_image(path, background=(0, 255, 0))

    assert tuple(pixels[0, 0]) == (0, 255, 0)
    assert tuple(pixels[0, 1]) == (255, 0, 0)


def test_16bit_png_scaled_with_warning(tmp_path, caplog):
    """A 16-bit grey PNG of 8-bit values times 257 loads as those values."""
    values = np.arange(256, dtype=np.uint16).reshape(16, 16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values * 257).save(path)

    with caplog.at_level(logging.WARNING, logger="Media2DICOMLib.images"):
        pixels = load_image(path)

    assert pixels.dtype == np.uint8
    assert pixels.shape == (16, 16)
    assert np.array_equal(pixels, values.astype(np.uint8))
    assert any("16-bit" in r.getMessage() for r in caplog.records)


def test_12bit_array_keeps_brightness():
    """Values up to 4095 scale by 255/4095, so white stays white."""
    values = np.array([[0, 2048, 4095]], dtype=np.uint16)

    pixels = load_image(values)

    assert list(pixels[0]) == [0, 128, 255]


def test_8bit_values_in_wide_type_unchanged():
    """A uint16 array whose values fit in 8 bits keeps them."""
    values = np.array([[0, 17, 255]], dtype=np.uint16)

    assert list(load_image(values)[0]) == [0, 17, 255]


def test_signed_values_stretched():
    """Negative values stretch the range from the minimum to 0-255."""
    values = np.array([[-1000, 0, 1000]], dtype=np.int16)

    assert list(load_image(values)[0]) == [0, 128, 255]


def test_float_unit_range_scaled():
    """Floats from 0 to 1 scale to 0-255."""
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)

    assert list(load_image(values)[0]) == [0, 128, 255]


def test_float_out_of_range_rejected():
    """Floats outside 0 to 1 are rejected with the range found."""
    with pytest.raises(ImageInputError, match="values from 0.0 to 2.0"):
        load_image(np.array([[0.0, 2.0]]))


def test_bool_array_black_and_white():
    """A boolean mask becomes 0 and 255."""
    mask = np.array([[False, True]])

    assert list(load_image(mask)[0]) == [0, 255]


def test_single_channel_array_becomes_grey():
    """An array with one sample per pixel becomes a 2-D grey image."""
    pixels = load_image(np.full((3, 4, 1), 7, dtype=np.uint8))

    assert pixels.shape == (3, 4)


@pytest.mark.parametrize("shape", [(4,), (2, 2, 5), (2, 2, 3, 1), (0, 4)])
def test_bad_array_shape_rejected(shape):
    """Arrays that are not images are rejected with their shape."""
    with pytest.raises(ImageInputError, match="shape"):
        load_image(np.zeros(shape, dtype=np.uint8))


def test_pillow_image_input():
    """A Pillow image in memory loads without a file."""
    image = Image.new("RGB", (5, 3), (9, 8, 7))

    pixels = load_image(image)

    assert pixels.shape == (3, 5, 3)
    assert tuple(pixels[2, 4]) == (9, 8, 7)


def test_grey_pillow_image_stays_grey():
    """A mode L image loads as a 2-D array."""
    pixels = load_image(Image.new("L", (5, 3), 77))

    assert pixels.shape == (3, 5)
    assert pixels[0, 0] == 77


def test_exif_orientation_applied(tmp_path):
    """A photograph tagged as rotated 90 degrees loads upright."""
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :10] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[EXIF_ORIENTATION] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)

    loaded = load_image(path)

    assert loaded.shape == (40, 20, 3)
    # Orientation 6 means the stored image is displayed turned 90 degrees
    # clockwise, so the white left columns end up at the top.
    assert loaded[:8].mean() > 200
    assert loaded[-8:].mean() < 50


def test_cmyk_tiff_converted(tmp_path):
    """A CMYK TIFF is converted to RGB."""
    path = tmp_path / "print.tif"
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(path)

    pixels = load_image(path)

    assert pixels.shape == (4, 4, 3)
    assert tuple(pixels[0, 0]) == (255, 0, 0)


@pytest.mark.parametrize("suffix", [".bmp", ".tif", ".png"])
def test_lossless_formats_exact(tmp_path, suffix):
    """BMP, TIFF and PNG files give back their pixels exactly."""
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    path = tmp_path / f"image{suffix}"
    Image.fromarray(pixels).save(path)

    assert np.array_equal(load_image(path), pixels)


def test_missing_file_rejected(tmp_path):
    """A missing file is reported with its path."""
    path = tmp_path / "absent.png"

    with pytest.raises(ImageInputError, match="absent.png does not exist"):
        load_image(path)


def test_non_image_file_rejected(tmp_path):
    """A file Pillow cannot read is reported with its path."""
    path = tmp_path / "notes.png"
    path.write_text("not an image")

    with pytest.raises(ImageInputError, match="notes.png"):
        load_image(path)


def test_unsupported_input_type_rejected():
    """Inputs other than a path, image or array are rejected."""
    with pytest.raises(ImageInputError, match="dict"):
        load_image({})


def test_bad_background_rejected():
    """A background that is not three values 0-255 is rejected."""
    with pytest.raises(ImageInputError, match="background"):
        load_image(np.zeros((2, 2), np.uint8), background=(0, 0, 256))


def test_natural_sort_numbers():
    """Numbered names sort by number, so frame_2 comes before frame_10."""
    names = ["frame_10.png", "frame_2.png", "frame_1.png", "frame_100.png"]

    ordered = sorted(names, key=natural_sort_key)

    assert ordered == ["frame_1.png", "frame_2.png", "frame_10.png", "frame_100.png"]


def test_load_frames_folder_numeric_order(tmp_path):
    """A folder of numbered PNG frames loads in numeric order."""
    for number in (1, 2, 10, 11, 3):
        Image.new("L", (4, 4), number).save(tmp_path / f"Capture_{number}.png")
    (tmp_path / "notes.txt").write_text("skipped")

    frames = load_frames(tmp_path)

    assert len(frames) == 5
    values = [int(frame.pixels[0, 0]) for frame in frames]
    assert values == [1, 2, 3, 10, 11]


def test_load_frames_list_keeps_order(tmp_path):
    """A list of images keeps its order and mixes paths and arrays."""
    path = tmp_path / "first.png"
    Image.new("L", (2, 2), 9).save(path)

    frames = load_frames([path, np.full((2, 2), 4, np.uint8)])

    assert [int(frame.pixels[0, 0]) for frame in frames] == [9, 4]
    assert frames[1].name == "frame 2"


def test_load_frames_empty_folder_rejected(tmp_path):
    """A folder with no image files is reported."""
    with pytest.raises(ImageInputError, match="No image files"):
        load_frames(tmp_path)


def test_load_frames_missing_path_rejected(tmp_path):
    """A frame path that does not exist is reported."""
    with pytest.raises(ImageInputError, match="does not exist"):
        load_frames([tmp_path / "missing.png"])


def test_frame_sequence_loaders_lazy(tmp_path):
    """Loaders read a frame only when called."""
    path = tmp_path / "late.png"
    Image.new("L", (2, 2)).save(path)
    frames = load_frames([path])
    loaders = list(frames.loaders())
    path.unlink()

    with pytest.raises(ImageInputError):
        loaders[0]()


@settings(max_examples=60, deadline=None)
@given(
    rgba=arrays(np.uint8, st.tuples(st.integers(1, 6), st.integers(1, 6), st.just(4))),
    background=st.tuples(*[st.integers(0, 255)] * 3),
)
def test_flatten_bounds_property(rgba, background):
    """Each flattened value lies between the pixel's colour and the background."""
    frame = read_image(rgba, background)

    assert isinstance(frame, ImageFrame)
    colors = rgba[..., :3].astype(int)
    fill = np.asarray(background).reshape(1, 1, 3)
    low = np.minimum(colors, fill)
    high = np.maximum(colors, fill)
    assert (frame.pixels >= low).all()
    assert (frame.pixels <= high).all()
    opaque = rgba[..., 3] == 255
    assert np.array_equal(frame.pixels[opaque], rgba[..., :3][opaque])
