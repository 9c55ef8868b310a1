"""Folder-per-class image trees: scanning, the data manifest hash, and decoded crops."""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from device import imageio
from device.preprocess import crop_to_lesion, model_input

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class Split:
    root: Path
    classes: list[str]
    paths: list[Path]
    labels: np.ndarray  # int64 indices into classes

    def counts(self) -> dict[str, int]:
        return {c: int((self.labels == i).sum()) for i, c in enumerate(self.classes)}


def class_names(root: Path) -> list[str]:
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) < 2:
        raise ValueError(f"{root}: needs at least two class folders, found {names}")
    return names


def scan(root: str | Path, classes: list[str] | None = None) -> Split:
    """Every image under ``root/<class>/``; ``classes`` fixes the label order (from training)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such data folder")
    classes = classes or class_names(root)
    paths: list[Path] = []
    labels: list[int] = []
    for i, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            log.warning("%s: no folder for class %s", root, name)
            continue
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                paths.append(p)
                labels.append(i)
    unknown = sorted({p.name for p in root.iterdir() if p.is_dir()} - set(classes))
    if unknown:
        raise ValueError(f"{root}: classes {unknown} are not in the model's label list {classes}")
    return Split(root, classes, paths, np.asarray(labels, dtype=np.int64))


def manifest_sha256(*splits: Split) -> str:
    """Hash of (relative path, class, file sha256) over every image: names the exact data used."""
    digest = hashlib.sha256()
    rows = []
    for split in splits:
        base = split.root.parent
        for path, label in zip(split.paths, split.labels, strict=True):
            rows.append(f"{path.relative_to(base).as_posix()},{split.classes[label]},"
                        f"{hashlib.sha256(path.read_bytes()).hexdigest()}\n")
    for row in sorted(rows):
        digest.update(row.encode())
    return digest.hexdigest()


def _parallel(fn, items, desc: str, workers: int) -> list:
    with ThreadPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, unit="img", leave=False))


def load_crops(split: Split, side: int, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Lesion-centred crops resized to ``side`` (training augments from these). Unreadable files
    are logged and dropped; returns (images, labels)."""

    def one(path: Path) -> np.ndarray | None:
        try:
            region = crop_to_lesion(imageio.read(path))
        except imageio.ImageError as exc:
            log.warning("skipping %s", exc)
            return None
        return cv2.resize(region, (side, side), interpolation=cv2.INTER_AREA)

    return _stack(_parallel(one, split.paths, f"crops {split.root.name}", workers), split.labels)


def load_inputs(split: Split, size: int, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Exactly the device's model input for every image (evaluation)."""

    def one(path: Path) -> np.ndarray | None:
        try:
            return model_input(imageio.read(path), size)
        except imageio.ImageError as exc:
            log.warning("skipping %s", exc)
            return None

    return _stack(_parallel(one, split.paths, f"inputs {split.root.name}", workers), split.labels)


def _stack(items: list[np.ndarray | None], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = [i for i, x in enumerate(items) if x is not None]
    if not keep:
        raise ValueError("no readable images")
    return np.stack([items[i] for i in keep]), labels[keep]
