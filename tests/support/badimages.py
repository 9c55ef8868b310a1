"""Every bad or awkward image file the issue lists, generated from code (no fixture files to rot)."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from tests.support.samples import skin_photo


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def good_rgb(width: int = 160, height: int = 120) -> np.ndarray:
    return skin_photo(width, height, seed=7)


def unusable() -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, a phrase the error must contain). Suffixes are in the name."""
    rgb = good_rgb()
    jpg = _save(Image.fromarray(rgb), "JPEG", quality=90)
    png = _save(Image.fromarray(rgb), "PNG")
    corrupt_png = bytearray(png)
    corrupt_png[60:260] = b"\xff" * 200  # inside the first IDAT chunk: CRC and zlib stream broken
    return {
        "empty.jpg": (b"", "empty"),
        "truncated.jpg": (jpg[: len(jpg) // 3], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "corrupt.jpg": (jpg[:2] + bytes(range(256)) * 8, "not a recognised image"),
        "corrupt.png": (bytes(corrupt_png), "corrupt"),
        "text.jpg": (b"this is a text file, not a photo\n" * 20, "not a recognised image"),
        "bomb.png": (_save(Image.new("1", (20000, 20000)), "PNG"), "decompression bomb"),
        # Below Pillow's own bomb check, above the kiosk's pixel limit: refused before decoding.
        "huge.png": (_save(Image.new("1", (8000, 8000)), "PNG"), "8000x8000"),
        "tiny.png": (_save(Image.new("RGB", (1, 1), (200, 150, 120)), "PNG"), "1x1"),
    }


def awkward() -> dict[str, bytes]:
    """Odd but valid files that must decode to upright 8-bit RGB."""
    rgb = good_rgb()
    gray16 = (np.linspace(0, 65535, 160 * 120).reshape(120, 160)).astype(np.uint16)
    rgb16 = np.ascontiguousarray(rgb[..., ::-1]).astype(np.uint16) * 257  # BGR order for OpenCV
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    return {
        "gray.png": _save(Image.fromarray(rgb).convert("L"), "PNG"),
        "gray16.png": _save(Image.fromarray(gray16), "PNG"),
        "rgb16.png": cv2.imencode(".png", rgb16)[1].tobytes(),  # 48-bit colour: Pillow cannot write it
        "rgb16.tif": cv2.imencode(".tiff", rgb16)[1].tobytes(),
        "cmyk.jpg": _save(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95),
        "palette.png": _save(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "palette_transparent.gif": _save(Image.fromarray(rgb).convert("P"), "GIF", transparency=0),
        "alpha.png": _save(Image.fromarray(rgb).convert("RGBA"), "PNG"),
        "gray_alpha.png": _save(Image.fromarray(rgb).convert("LA"), "PNG"),
        "exif_rotated.jpg": _save(Image.fromarray(rgb), "JPEG", quality=95, exif=exif),
    }


def write_all(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    bad = {}
    for name, (data, _) in unusable().items():
        (folder / name).write_bytes(data)
        bad[name] = folder / name
    odd = {}
    for name, data in awkward().items():
        (folder / name).write_bytes(data)
        odd[name] = folder / name
    return bad, odd
