"""Small generated image trees (no dataset images are committed): coloured blobs on skin tones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

BLOBS = {"alpha": (120, 60, 40), "beta": (60, 30, 90), "gamma": (30, 30, 30)}
# A class none of the tiny models knows yet (retraining tests: a new class among confirmed cases).
NEW_BLOBS = {"delta": (40, 110, 60)}


def blob_image(rng: np.random.Generator, colour: tuple[int, int, int], radius: int,
               size: tuple[int, int] = (160, 120)) -> np.ndarray:
    w, h = size
    img = np.empty((h, w, 3), np.float64)
    img[...] = (205, 170, 150)
    cy, cx = h // 2 + rng.integers(-10, 10), w // 2 + rng.integers(-10, 10)
    yy, xx = np.ogrid[:h, :w]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < radius * radius] = colour
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


def make_tree(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """root/<class>/<i>.jpg for each class in BLOBS (and NEW_BLOBS), with distinguishable blobs."""
    rng = np.random.default_rng(seed)
    for k, (name, colour) in enumerate((BLOBS | NEW_BLOBS).items()):
        if name in NEW_BLOBS and name not in per_class:
            continue
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class.get(name, 0)):
            Image.fromarray(blob_image(rng, colour, 18 + 8 * k)).save(folder / f"{name}_{i}.jpg", quality=92)
    return root


def make_dataset(root: Path, train: int = 12, val: int = 4, seed: int = 0) -> Path:
    make_tree(root / "train", dict.fromkeys(BLOBS, train), seed)
    make_tree(root / "val", dict.fromkeys(BLOBS, val), seed + 1)
    return root
