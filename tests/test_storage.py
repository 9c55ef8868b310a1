"""Cloud storage on real SQLite and, when reachable, a real PostgreSQL (127.0.0.1:5432, user postgres)."""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from cloud.storage import SCHEMA_VERSION, Storage, StorageError
from contract import Capture, DevicePrediction, Result, utc_now
from tests.support.link import synthetic_lesion

PG_ADMIN = os.environ.get("SKINSCAN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="module")
def pg_server() -> str:
    engine = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to reach it means: not available here
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}")
    finally:
        engine.dispose()
    return PG_ADMIN


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cases.sqlite3'}"
        return
    admin_url = request.getfixturevalue("pg_server")
    name = f"skinscan_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def storage(db_url: str, tmp_path: Path):
    s = Storage(db_url, tmp_path / "images")
    s.migrate()
    yield s
    s.close()


def _capture(i: int, device: str = "kiosk-a", **kw) -> Capture:
    return Capture.from_image(synthetic_lesion(i, size=96), device_id=device, **kw)


def test_migrations_are_versioned_and_idempotent(db_url: str, tmp_path: Path):
    s = Storage(db_url, tmp_path / "images")
    assert s.version() == 0
    # Workers starting together migrate once.
    reached: list[int] = []  # a thread that raised appends nothing
    threads = [threading.Thread(target=lambda: reached.append(s.migrate())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reached == [SCHEMA_VERSION] * 3
    assert s.migrate() == SCHEMA_VERSION
    with s.engine.connect() as conn:
        versions = sorted(conn.execute(text("SELECT version FROM schema_version")).scalars())
        assert versions == list(range(1, SCHEMA_VERSION + 1))
        conn.execute(text("INSERT INTO schema_version (version, applied_at) VALUES (99, :t)"), {"t": utc_now()})
        conn.commit()
    with pytest.raises(StorageError, match="schema is version 99"):
        s.migrate()
    s.close()


def test_capture_stored_once_with_content_addressed_image(storage: Storage):
    pred = DevicePrediction(label="beta", confidence=0.7, probabilities={"alpha": 0.3, "beta": 0.7}, unsure=False,
                            model_version="dev")
    cap = _capture(1, device_prediction=pred)
    assert storage.record_capture(cap) is True
    assert storage.record_capture(cap) is False  # redelivery
    assert storage.count_cases() == 1
    case = storage.case(str(cap.capture_id))
    assert case["deliveries"] == 2 and case["label"] is None
    assert case["device_prediction"]["label"] == "beta"
    assert case["received_at"].tzinfo is not None
    path = storage.image_path(cap.image_sha256)
    assert path.read_bytes() == cap.image and path.name == hashlib.sha256(cap.image).hexdigest()
    # Same image in another capture: one file.
    other = Capture.from_image(cap.image, device_id="kiosk-b")
    storage.record_capture(other)
    files = [p for p in storage.image_dir.rglob("*") if p.is_file()]
    assert files == [path]


def test_result_round_trip_and_listing(storage: Storage):
    base = datetime(2026, 1, 1, tzinfo=UTC)
    caps = [_capture(i, device="kiosk-a" if i % 2 else "kiosk-b") for i in range(4)]
    for i, cap in enumerate(caps):
        storage.record_capture(cap, received_at=base + timedelta(minutes=i))
    result = Result(capture_id=caps[0].capture_id, device_id=caps[0].device_id, produced_at=base,
                    model_version="v1", label="gamma", confidence=0.55,
                    probabilities={"alpha": 0.2, "beta": 0.25, "gamma": 0.55}, unsure=True)
    storage.save_result(result)
    assert storage.result(str(caps[0].capture_id)) == result
    assert storage.result(str(caps[1].capture_id)) is None
    listed = storage.cases()
    assert [c["capture_id"] for c in listed] == [str(c.capture_id) for c in reversed(caps)]
    assert {c["device_id"] for c in storage.cases(device_id="kiosk-a")} == {"kiosk-a"}
    assert len(storage.cases(limit=2)) == 2


def test_dead_letters_keep_payload_and_reason(storage: Storage):
    row = storage.dead_letter("skinscan/v1/devices/kiosk-a/captures", "schema: unsupported", b"\x00\xff{bad")
    (dl,) = storage.dead_letters()
    assert dl["id"] == row and dl["reason"] == "schema: unsupported" and dl["size"] == 6
    assert dl["payload_sha256"] == hashlib.sha256(b"\x00\xff{bad").hexdigest()
    with storage.engine.connect() as conn:
        assert conn.execute(text("SELECT payload FROM dead_letters")).scalar_one() == b"\x00\xff{bad"
