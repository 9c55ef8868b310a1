"""Over-the-air model bundles: what the cloud ships to devices, and the signed announcement.

A bundle is one zip, ``BUNDLE_DIR/<version>/bundle.zip``, holding

- ``model.json``: the model's manifest reduced to the int8 file, plus a ``self_test`` block;
- the int8 ``.tflite`` file it names;
- ``selftest/ref_<i>.png``: small reference images generated here in code (no dataset images),
  already at the model's input size.

The ``self_test`` block records what this very int8 file answered for each reference image,
so a device can check that the model it loaded behaves as the cloud saw it before switching.
The zip's sha256 is signed with the cloud's Ed25519 key (:mod:`contract.signing`) and travels in
the retained :class:`contract.ModelAnnouncement` on ``Topics.model_current``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image

from contract import ModelAnnouncement, signing, utc_now
from contract.messages import MODEL_VERSION_PATTERN
from models.manifest import load, resolve
from runtime.files import atomic_write

log = logging.getLogger(__name__)

BUNDLE_NAME = "bundle.zip"
SELFTEST_DIR = "selftest"
SELFTEST_IMAGES = 6
SELFTEST_TOLERANCE = 0.05
# Fixed zip timestamps: the same model always gives the same bytes, hence the same sha256.
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


class BundleError(ValueError):
    """A model that cannot be bundled, or a version whose bundle already exists with other content."""


@dataclass(frozen=True)
class Bundle:
    version: str
    path: Path
    sha256: str
    bytes: int


def reference_images(size: int, count: int = SELFTEST_IMAGES, seed: int = 20261126) -> list[np.ndarray]:
    """Synthetic ``size``x``size`` RGB patches: skin-toned background with noise and a blob of varying
    colour, size and place, plus one plain patch. Enough to exercise every layer of the network."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = []
    for i in range(count):
        skin = rng.uniform([170, 120, 100], [235, 195, 175])
        img = np.empty((size, size, 3), np.float64)
        img[...] = skin
        if i < count - 1:
            colour = rng.uniform(10, 160, 3)
            cy, cx = rng.uniform(0.35, 0.65, 2) * size
            ry, rx = rng.uniform(0.12, 0.35, 2) * size
            img[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = colour
        img += rng.normal(0, 6, img.shape)
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    return images


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, members[name])
    return buf.getvalue()


def bundle_members(model_json: str | Path, role: str = "int8", tolerance: float = SELFTEST_TOLERANCE,
                   expectations: list[dict[str, object]] | None = None) -> dict[str, bytes]:
    """The files of a bundle, by name. ``expectations`` replaces the measured self-test answers
    (tests use it to ship a model that must fail its self-test)."""
    from device.inference import Classifier

    manifest, entry, model_path = resolve(model_json, role)
    classifier = Classifier(model_json, role=role, threads=1)
    members: dict[str, bytes] = {entry.path: model_path.read_bytes()}
    cases = []
    for i, pixels in enumerate(reference_images(manifest.input_size)):
        name = f"{SELFTEST_DIR}/ref_{i}.png"
        members[name] = _png(pixels)
        prediction = classifier.predict_pixels(pixels)
        cases.append({"path": name, "label": prediction.label,
                      "probabilities": [prediction.probabilities[label] for label in manifest.labels]})
    if expectations is not None:
        cases = [{**case, **override} for case, override in zip(cases, expectations, strict=False)]
    bundled = manifest.model_dump(mode="json")
    bundled["files"] = {role: entry.model_dump(mode="json")}
    bundled["self_test"] = {"role": role, "tolerance": tolerance, "cases": cases}
    members["model.json"] = (json.dumps(bundled, indent=2) + "\n").encode()
    return members


def write_bundle(members: dict[str, bytes], version: str, bundle_dir: Path) -> Bundle:
    """Write ``bundle_dir/<version>/bundle.zip`` atomically. A version's bundle never changes once
    written: the same bytes again are fine, different ones are refused."""
    blob = _zip_bytes(members)
    digest = hashlib.sha256(blob).hexdigest()
    folder = bundle_dir / version
    target = folder / BUNDLE_NAME
    if target.exists():
        existing = hashlib.sha256(target.read_bytes()).hexdigest()
        if existing != digest:
            raise BundleError(f"{target} already exists with other content (sha256 {existing}); "
                              "a published version never changes: train a new version")
        return Bundle(version, target, digest, len(blob))
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(target, blob)
    log.info("bundle %s: %s (%d bytes, sha256 %s)", version, target, len(blob), digest)
    return Bundle(version, target, digest, len(blob))


def build_bundle(model_json: str | Path, bundle_dir: str | Path, role: str = "int8",
                 tolerance: float = SELFTEST_TOLERANCE) -> Bundle:
    """Bundle the model described by ``model_json`` (its int8 file is checked against its sha256)."""
    version = load(model_json).version
    check_version(version)
    return write_bundle(bundle_members(model_json, role, tolerance), version, Path(bundle_dir))


def check_version(version: str) -> None:
    """Versions name folders and URLs: the contract's pattern keeps them to one safe path segment."""
    if not re.fullmatch(MODEL_VERSION_PATTERN, version):
        raise BundleError(f"model version {version!r} must match {MODEL_VERSION_PATTERN} to be shipped")


def bundle_url(base_url: str, version: str) -> str:
    """Where :mod:`cloud.model_files` serves the bundle of ``version`` under ``base_url``."""
    return f"{base_url.rstrip('/')}/models/{version}/{BUNDLE_NAME}"


def announce(bundle: Bundle, url: str, private_key_pem: bytes,
             published_at: datetime | None = None) -> ModelAnnouncement:
    """The signed announcement to publish retained on ``Topics(prefix).model_current``."""
    return ModelAnnouncement(version=bundle.version, url=url, sha256=bundle.sha256,
                             signature=signing.sign(private_key_pem, bundle.version, bundle.sha256),
                             published_at=published_at or utc_now())
