"""Synthetic skin photos and videos, made from code so no dataset image is ever committed.

Used by the tests and by ``scripts/make_stream_fixture.py`` (the demo stream of ``make run``):
a skin-toned, textured background with a dark, irregular lesion and a few hairs.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SKIN = np.array([224, 172, 140], dtype=np.float32)  # RGB
LESION = np.array([96, 58, 40], dtype=np.float32)


def skin_photo(width: int = 640, height: int = 480, seed: int = 0, centre: tuple[float, float] = (0.5, 0.5),
               radius: float = 0.16, hairs: int = 4) -> np.ndarray:
    """One RGB uint8 photo; ``centre`` and ``radius`` are fractions of the frame (radius of the short side)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    # Gentle shading plus pore-scale texture, so the blur gate sees a sharp photo.
    shade = 1.0 + 0.06 * np.sin(xx / width * 3.1 + seed) * np.cos(yy / height * 2.3)
    texture = cv2.GaussianBlur(rng.normal(0, 9, (height, width)).astype(np.float32), (0, 0), 1.2)
    img = SKIN[None, None, :] * shade[..., None] + texture[..., None]
    cx, cy = centre[0] * width, centre[1] * height
    r = radius * min(width, height)
    angle = np.arctan2(yy - cy, xx - cx)
    wobble = 1.0 + sum(rng.uniform(0.03, 0.10) * np.sin(k * angle + rng.uniform(0, 6.3)) for k in (2, 3, 5))
    dist = np.hypot(xx - cx, yy - cy) / (r * wobble)
    inside = np.clip((1.15 - dist) / 0.3, 0.0, 1.0)  # soft border
    mottling = cv2.GaussianBlur(rng.normal(0, 14, (height, width)).astype(np.float32), (0, 0), 4)
    lesion = LESION[None, None, :] + mottling[..., None]
    img = img * (1 - inside[..., None]) + lesion * inside[..., None]
    for _ in range(hairs):
        p0 = rng.uniform(0, 1, 2) * (width, height)
        p1 = p0 + rng.normal(0, 0.5, 2) * (width, height)
        mid = (p0 + p1) / 2 + rng.normal(0, 0.08, 2) * (width, height)
        pts = np.array([(1 - t) ** 2 * p0 + 2 * (1 - t) * t * mid + t**2 * p1 for t in np.linspace(0, 1, 40)])
        cv2.polylines(img, [pts.astype(np.int32)], False, (40, 28, 22), thickness=2, lineType=cv2.LINE_AA)
    return np.clip(img, 0, 255).astype(np.uint8)


def stream_frames(count: int = 24, width: int = 640, height: int = 480) -> list[np.ndarray]:
    """A short hand-held sequence: one lesion drifting a little, with fresh sensor noise in every frame."""
    frames = []
    for i in range(count):
        t = i / max(1, count) * 2 * np.pi
        centre = (0.5 + 0.04 * np.sin(t), 0.5 + 0.03 * np.cos(t))
        noise = np.random.default_rng(1000 + i).normal(0, 3, (height, width, 1))
        frames.append(np.clip(skin_photo(width, height, seed=0, centre=centre) + noise, 0, 255).astype(np.uint8))
    return frames


def write_folder(folder: Path, count: int = 24, width: int = 640, height: int = 480) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, rgb in enumerate(stream_frames(count, width, height)):
        path = folder / f"frame_{i:03d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def write_video(path: Path, count: int = 50, width: int = 640, height: int = 480, fps: float = 25.0) -> Path:
    """Motion-JPEG in AVI: OpenCV's wheels always write it, with no external codec."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    base = stream_frames(min(count, 12), width, height)
    for i in range(count):
        writer.write(cv2.cvtColor(base[i % len(base)], cv2.COLOR_RGB2BGR))
    writer.release()
    return path
