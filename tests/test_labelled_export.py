"""`skinscan-cloud export-labelled`: confirmed cases -> folder-per-class tree + manifest.csv.

The doctors' reviews (``Storage.confirmed_cases``) come with the dashboard; until then the cases are
given by a small class over the real Storage and real stored images, in the agreed shape."""

from __future__ import annotations

import csv
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloud.labelled import LabelledExportError, export_labelled
from cloud.storage import Storage
from models import data
from tests.support.link import synthetic_lesion


class Reviewed:
    """Real storage plus the confirmed cases the dashboard will provide."""

    def __init__(self, storage: Storage, cases: list[dict]) -> None:
        self.storage = storage
        self.cases = cases

    def confirmed_cases(self) -> list[dict]:
        return self.cases

    def read_image(self, sha256: str) -> bytes:
        return self.storage.read_image(sha256)


@pytest.fixture
def storage(tmp_path: Path):
    s = Storage(f"sqlite:///{tmp_path / 'cloud.sqlite3'}", tmp_path / "images")
    s.migrate()
    yield s
    s.close()


def _case(storage: Storage, i: int, label: str) -> dict:
    sha, _ = storage.put_image(synthetic_lesion(i))
    return {"capture_id": f"00000000-0000-4000-8000-00000000000{i}", "label": label, "doctor": f"dr.{i}",
            "confirmed_at": datetime(2026, 11, 26, 1, i, tzinfo=UTC), "image_sha256": sha}


def test_export_writes_a_tree_the_retraining_reads_and_a_manifest(storage: Storage, tmp_path: Path):
    cases = [_case(storage, 1, "melanoma"), _case(storage, 2, "nevus"), _case(storage, 3, "melanoma")]
    out = tmp_path / "labelled"
    counts = export_labelled(Reviewed(storage, cases), out)
    assert dict(counts) == {"melanoma": 2, "nevus": 1}
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["capture_id"], r["label"], r["doctor"]) for r in rows] == [
        (c["capture_id"], c["label"], c["doctor"]) for c in cases]
    assert rows[0]["confirmed_at"] == "2026-11-26T01:01:00+00:00"
    for row in rows:
        image = (out / row["path"]).read_bytes()
        assert hashlib.sha256(image).hexdigest() == row["image_sha256"]
    split = data.scan(out, ["melanoma", "nevus"])  # what models.retrain --extra reads
    assert split.counts() == {"melanoma": 2, "nevus": 1}


def test_export_refuses_bad_input_and_leaves_nothing_behind(storage: Storage, tmp_path: Path):
    out = tmp_path / "labelled"
    with pytest.raises(LabelledExportError, match="dashboard"):
        export_labelled(storage, out)  # the reviews are not in this storage yet
    with pytest.raises(LabelledExportError, match="no doctor-confirmed cases"):
        export_labelled(Reviewed(storage, []), out)
    bad_label = [_case(storage, 1, "melanoma"), {**_case(storage, 2, "x"), "label": "../escape"}]
    with pytest.raises(LabelledExportError, match="cannot name a class folder"):
        export_labelled(Reviewed(storage, bad_label), out)
    damaged = _case(storage, 3, "nevus")
    storage.image_path(damaged["image_sha256"]).write_bytes(b"changed")
    with pytest.raises(LabelledExportError, match="differs from its sha256"):
        export_labelled(Reviewed(storage, [damaged]), out)
    missing = {**_case(storage, 4, "nevus"), "image_sha256": "f" * 64}
    with pytest.raises(LabelledExportError, match="missing from storage"):
        export_labelled(Reviewed(storage, [missing]), out)
    assert not out.exists() and not any(p.name.startswith(".labelled") for p in tmp_path.iterdir())
    out.mkdir()
    with pytest.raises(LabelledExportError, match="already exists"):
        export_labelled(Reviewed(storage, [_case(storage, 5, "nevus")]), out)
