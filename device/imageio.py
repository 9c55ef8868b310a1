"""Safe image decoding: every bad input becomes one clear :class:`ImageError`.

Handles EXIF orientation, grayscale / 16-bit / CMYK / palette / alpha images and refuses
decompression bombs *before* decoding pixels (Pillow reads the size from the header).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000  # a 12 MP phone photo is fine; a 20000x20000 bomb is not
MAX_FILE_BYTES = 50 * 1024 * 1024
MIN_SIDE = 32


class ImageError(ValueError):
    """An image the system cannot use, with a message fit to show a user."""


def _open(data: bytes, name: str) -> Image.Image:
    if not data:
        raise ImageError(f"{name}: file is empty")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"{name}: file is {len(data)} bytes, limit {MAX_FILE_BYTES}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ImageError(
                    f"{name}: image is {width}x{height} ({width * height} pixels), limit {MAX_PIXELS}"
                )
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a recognised image format") from None
    except Exception as exc:  # Pillow's decoders raise many types on malformed data
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from None
    return img


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> HxWx3 uint8 RGB, upright per EXIF, alpha composited on white."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block should not lose a usable photo
        log.warning("ignoring unreadable EXIF orientation")
    if img.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        # 16-bit (and 32-bit) samples: scale the full 16-bit range to 8 bits so brightness is kept;
        # only values beyond 16 bits (rare float/int TIFFs) are stretched by their maximum.
        arr = np.asarray(img, dtype=np.float64)
        top = max(65535.0, float(arr.max()))
        img = Image.fromarray((arr * (255.0 / top)).round().clip(0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in {"RGBA", "LA", "PA"}:
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise ImageError(f"image is {rgb.shape[1]}x{rgb.shape[0]}, needs at least {MIN_SIDE} px a side")
    return rgb


def decode(data: bytes, name: str = "image") -> np.ndarray:
    """Decode image bytes to an upright RGB array, or raise :class:`ImageError`."""
    img = _open(data, name)
    try:
        return to_rgb(img)
    except ImageError as exc:
        raise ImageError(f"{name}: {exc}") from None
    except Exception as exc:  # mode conversion of a malformed file
        raise ImageError(f"{name}: cannot convert image ({exc})") from None


def read(path: str | os.PathLike[str]) -> np.ndarray:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImageError(f"{p}: file is {size} bytes, limit {MAX_FILE_BYTES}")
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{p}: is a directory") from None
    except PermissionError:
        raise ImageError(f"{p}: permission denied") from None
    return decode(data, str(p))


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
