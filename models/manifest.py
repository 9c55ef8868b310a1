"""``model.json``: what travels with a model file so every consumer uses it the same way."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ManifestError(ValueError):
    """model.json is missing, malformed, or does not match the files beside it."""


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(gt=0)
    # Predictions whose temperature-scaled top probability is below this are "unsure".
    threshold: float = Field(ge=0, le=1)


class ModelFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(gt=0)
    kind: Literal["tflite_int8", "tflite_float32", "keras"]
    calibration: Calibration | None = None


class SelfTestCase(BaseModel):
    """One bundled reference image and what the int8 file answered for it when the bundle was built."""

    model_config = ConfigDict(extra="forbid")

    path: str  # inside the bundle, e.g. selftest/ref_0.png
    label: str
    probabilities: list[float]  # temperature-scaled, in ``labels`` order


class SelfTest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str = "int8"
    # Largest allowed difference of any probability (int8 kernels may round differently on ARM).
    tolerance: float = Field(default=0.05, gt=0, le=1)
    cases: list[SelfTestCase] = Field(min_length=1)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str
    architecture: str
    input_size: int = Field(ge=32, le=1024)
    # The models take RGB pixels 0-255 and rescale inside; output is raw logits.
    normalisation: str = "rgb_0_255_rescaled_in_model"
    output: Literal["logits"] = "logits"
    labels: list[str] = Field(min_length=2)
    dangerous: list[str] = []
    files: dict[str, ModelFile]
    seed: int
    data_manifest_sha256: str
    training: dict[str, object] = {}
    metrics: dict[str, dict[str, object]] = {}
    created_at: str
    # The version a retrained model was fine-tuned from (None for a model trained from ImageNet).
    parent: str | None = None
    # Only in over-the-air bundles (cloud.bundles): the device's self-test before switching.
    self_test: SelfTest | None = None

    def file(self, role: str) -> ModelFile:
        try:
            return self.files[role]
        except KeyError:
            raise ManifestError(f"model.json has no {role!r} file (has: {sorted(self.files)})") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load(path: str | Path) -> Manifest:
    p = Path(path)
    try:
        return Manifest.model_validate(json.loads(p.read_text("utf-8")))
    except FileNotFoundError:
        raise ManifestError(f"{p}: no such model manifest") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{p}: not valid JSON ({exc})") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ManifestError(f"{p}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def resolve(manifest_path: str | Path, role: str, verify: bool = True) -> tuple[Manifest, ModelFile, Path]:
    """The manifest, one of its files, and that file's path, with its sha256 checked."""
    manifest = load(manifest_path)
    entry = manifest.file(role)
    path = Path(manifest_path).resolve().parent / entry.path
    if not path.is_file():
        raise ManifestError(f"{path}: model file named in {manifest_path} is missing")
    if verify and sha256_file(path) != entry.sha256:
        raise ManifestError(f"{path}: sha256 does not match {manifest_path}; refusing a tampered or stale model")
    return manifest, entry, path
