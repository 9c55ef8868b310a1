"""`skinscan-cloud export-labelled`: doctors' reviews -> folder-per-class tree + manifest.csv."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloud.labelled import LabelledExportError, export_labelled
from cloud.storage import Storage
from contract import Capture
from models import data
from tests.support.link import synthetic_lesion

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def storage(tmp_path: Path):
    s = Storage(f"sqlite:///{tmp_path / 'cloud.sqlite3'}", tmp_path / "images")
    s.migrate()
    yield s
    s.close()


def _reviewed(storage: Storage, i: int, label: str) -> str:
    capture = Capture.from_image(synthetic_lesion(i), device_id="kiosk-a",
                                 capture_id=f"00000000-0000-4000-8000-00000000000{i}")
    storage.record_capture(capture)
    storage.add_review(str(capture.capture_id), f"dr.{i}", label, "", False,
                       given_at=datetime(2026, 11, 26, 1, i, tzinfo=UTC))
    return str(capture.capture_id)


def test_export_writes_a_tree_the_retraining_reads_and_a_manifest(storage: Storage, tmp_path: Path):
    ids = [_reviewed(storage, 1, "melanoma"), _reviewed(storage, 2, "nevus"), _reviewed(storage, 3, "melanoma")]
    _reviewed(storage, 4, "other")  # not assessable: not training data
    storage.add_review(ids[1], "dr.9", "benign_keratosis", "corrected", False,
                       given_at=datetime(2026, 11, 26, 2, 0, tzinfo=UTC))
    out = tmp_path / "labelled"
    counts = export_labelled(storage, out)
    assert dict(counts) == {"melanoma": 2, "benign_keratosis": 1}
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["capture_id"], r["label"], r["doctor"]) for r in rows] == [
        (ids[0], "melanoma", "dr.1"), (ids[2], "melanoma", "dr.3"), (ids[1], "benign_keratosis", "dr.9")]
    assert rows[0]["confirmed_at"].startswith("2026-11-26T01:01:00")
    for row in rows:
        image = (out / row["path"]).read_bytes()
        assert hashlib.sha256(image).hexdigest() == row["image_sha256"]
    split = data.scan(out, ["benign_keratosis", "melanoma"])  # what models.retrain --extra reads
    assert split.counts() == {"benign_keratosis": 1, "melanoma": 2}


def test_export_refuses_bad_input_and_leaves_nothing_behind(storage: Storage, tmp_path: Path):
    out = tmp_path / "labelled"
    with pytest.raises(LabelledExportError, match="no doctor-confirmed cases"):
        export_labelled(storage, out)
    _reviewed(storage, 1, "../escape")
    with pytest.raises(LabelledExportError, match="cannot name a class folder"):
        export_labelled(storage, out)
    _reviewed(storage, 2, "nevus")
    storage.add_review(f"00000000-0000-4000-8000-{1:012d}", "dr.1", "nevus", "", False)  # corrects case 1
    sha = storage.confirmed_cases()[0]["image_sha256"]
    storage.image_path(sha).write_bytes(b"changed")
    with pytest.raises(LabelledExportError, match="differs from its sha256"):
        export_labelled(storage, out)
    storage.image_path(sha).unlink()
    with pytest.raises(LabelledExportError, match="missing from storage"):
        export_labelled(storage, out)
    assert not out.exists() and not any(p.name.startswith(".labelled") for p in tmp_path.iterdir())


def test_cli_refuses_an_existing_folder(storage: Storage, tmp_path: Path):
    _reviewed(storage, 1, "nevus")
    out = tmp_path / "labelled"
    out.mkdir()
    env = {"SKINSCAN_DATABASE__URL": str(storage.engine.url), "SKINSCAN_STORAGE__IMAGE_DIR": str(tmp_path / "images")}
    run = subprocess.run([sys.executable, "-m", "cloud.cli", "export-labelled", str(out)], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, **env}, timeout=120)
    assert run.returncode != 0
    assert "already exists" in run.stderr
    assert "Traceback" not in run.stderr
