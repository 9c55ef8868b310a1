"""Bad and awkward image files: a clear ImageError, or upright 8-bit RGB; never a crash."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from device import imageio
from tests.support import badimages

UNUSABLE = badimages.unusable()
AWKWARD = badimages.awkward()


@pytest.mark.parametrize("name", sorted(UNUSABLE))
def test_unusable_files_raise_a_clear_error_naming_the_file(name):
    data, phrase = UNUSABLE[name]
    with pytest.raises(imageio.ImageError) as info:
        imageio.decode(data, name)
    message = str(info.value)
    assert message.startswith(f"{name}: ")
    assert phrase in message


@pytest.mark.parametrize("name", sorted(AWKWARD))
def test_awkward_files_decode_to_upright_rgb(name):
    rgb = imageio.decode(AWKWARD[name], name)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    expected_hw = (160, 120) if name == "exif_rotated.jpg" else (120, 160)
    assert rgb.shape[:2] == expected_hw


def test_colour_survives_cmyk_palette_and_alpha():
    reference = badimages.good_rgb().reshape(-1, 3).mean(axis=0)
    for name in ("cmyk.jpg", "palette.png", "alpha.png", "rgb16.png", "rgb16.tif"):
        mean = imageio.decode(AWKWARD[name], name).reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - reference).max() < 6, (name, mean, reference)


def test_sixteen_bit_keeps_brightness_instead_of_truncating():
    rgb = imageio.decode(AWKWARD["gray16.png"])
    # a 0..65535 ramp -> 0..255; a naive 16->8 bit cast would clip everything above 255 to white
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255
    assert 120 <= rgb.mean() <= 135


def test_transparent_pixels_become_white():
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[:, :20] = (255, 0, 0, 255)  # left half opaque red, right half fully transparent
    rgb = imageio.decode(_png(rgba))
    assert tuple(rgb[20, 5]) == (255, 0, 0)
    assert tuple(rgb[20, 35]) == (255, 255, 255)


def test_exif_orientation_is_honoured():
    img = np.zeros((40, 80, 3), dtype=np.uint8)
    img[:, :40] = (255, 0, 0)  # red left half as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise: stored left becomes displayed top
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=95, exif=exif)
    rgb = imageio.decode(buf.getvalue())
    assert rgb.shape[:2] == (80, 40)
    assert rgb[10, 20, 0] > 200 and rgb[10, 20, 2] < 60  # top is red
    assert rgb[70, 20, 0] < 60  # bottom is black


def test_read_reports_missing_files_and_directories(tmp_path):
    with pytest.raises(imageio.ImageError, match="no such file"):
        imageio.read(tmp_path / "nope.jpg")
    with pytest.raises(imageio.ImageError, match="is a directory"):
        imageio.read(tmp_path)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()
