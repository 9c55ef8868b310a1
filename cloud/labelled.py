"""``skinscan-cloud export-labelled DIR``: doctor-confirmed cases as training data.

Writes a folder-per-class tree (``DIR/<label>/<capture_id>.jpg``, the stored image itself, checked
against its sha256) and ``DIR/manifest.csv`` (capture_id, label, doctor, confirmed_at, image_sha256,
path), the layout ``skinscan-cloud retrain --labelled`` and ``models.retrain --extra`` read.

The cases come from ``Storage.confirmed_cases()``: the newest dermatologist review of each case
("other / not assessable" left out). The tree is built in a staging folder and renamed into place,
so DIR is either complete or absent.
"""

from __future__ import annotations

import csv
import hashlib
import re
import shutil
import tempfile
from collections import Counter
from datetime import datetime
from pathlib import Path

from cloud.storage import Storage

LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
COLUMNS = ("capture_id", "label", "doctor", "confirmed_at", "image_sha256", "path")


class LabelledExportError(RuntimeError):
    """Nothing was written; the message says why."""


def _suffix(image: bytes) -> str:
    return ".png" if image.startswith(b"\x89PNG") else ".jpg"


def export_labelled(storage: Storage, out: str | Path) -> Counter[str]:
    """Write the tree and manifest to ``out`` (which must not exist yet); returns cases per label."""
    out = Path(out)
    if out.exists():
        raise LabelledExportError(f"{out} already exists; export into a new folder")
    cases = sorted(storage.confirmed_cases(), key=lambda c: (str(c["given_at"]), str(c["capture_id"])))
    if not cases:
        raise LabelledExportError("no doctor-confirmed cases to export")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    counts: Counter[str] = Counter()
    try:
        rows = []
        for case in cases:
            label, sha = str(case["label"]), str(case["image_sha256"])
            if not re.fullmatch(LABEL_PATTERN, label):
                raise LabelledExportError(f"case {case['capture_id']}: label {label!r} cannot name a class folder")
            try:
                image = storage.read_image(sha)
            except FileNotFoundError:
                raise LabelledExportError(f"case {case['capture_id']}: image {sha} is missing from storage") from None
            if hashlib.sha256(image).hexdigest() != sha:
                raise LabelledExportError(f"case {case['capture_id']}: stored image differs from its sha256 {sha}")
            rel = Path(label) / f"{case['capture_id']}{_suffix(image)}"
            (staging / label).mkdir(exist_ok=True)
            (staging / rel).write_bytes(image)
            at = case["given_at"]
            rows.append({"capture_id": case["capture_id"], "label": label, "doctor": case["doctor"],
                         "confirmed_at": at.isoformat() if isinstance(at, datetime) else str(at),
                         "image_sha256": sha, "path": rel.as_posix()})
            counts[label] += 1
        with open(staging / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts
