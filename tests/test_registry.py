"""Model registry on real SQLite and, when reachable, real PostgreSQL."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from cloud.registry import Registry, RegistryError

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def write_model(folder: Path, version: str, parent: str | None = None, ece: float = 0.05) -> Path:
    """A model.json with two small files beside it (the registry reads only the manifest and hashes)."""
    import hashlib

    folder.mkdir(parents=True)
    files = {}
    for role, name, kind in (("int8", "skin_int8.tflite", "tflite_int8"), ("keras", "skin_float.keras", "keras")):
        blob = f"{version}-{role}".encode()
        (folder / name).write_bytes(blob)
        files[role] = {"path": name, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob), "kind": kind}
    manifest = {"version": version, "architecture": "mobilenet_v2_1.0", "input_size": 64, "labels": ["a", "b"],
                "files": files, "seed": 1, "data_manifest_sha256": "d" * 64, "created_at": "2026-11-26T00:00:00+00:00",
                "metrics": {"val_int8": {"balanced_accuracy": 0.8, "ece": ece}}, "parent": parent}
    (folder / "model.json").write_text(json.dumps(manifest))
    return folder / "model.json"


def _postgres_url() -> str:
    try:
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            name = f"skinscan_registry_{uuid.uuid4().hex[:10]}"
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as exc:  # any failure to reach or use the server means: skip, saying why
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 not usable: {exc.__class__.__name__}: {str(exc)[:200]}")
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def _drop_postgres(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request, tmp_path: Path):
    if request.param == "sqlite":
        reg = Registry.connect(f"sqlite:///{tmp_path / 'registry.sqlite3'}")
        yield reg
        reg.engine.dispose()
    else:
        url = _postgres_url()
        reg = Registry.connect(url)
        yield reg
        reg.engine.dispose()
        _drop_postgres(url)


def test_lineage_promotion_and_rejection(registry: Registry, tmp_path: Path):
    v1 = write_model(tmp_path / "v1", "v1", ece=float("nan"))
    v2 = write_model(tmp_path / "v2", "v2", parent="v1")
    v3 = write_model(tmp_path / "v3", "v3", parent="v2")
    assert registry.current() is None

    rec = registry.register(v1, actor="trainer")
    assert rec.status == "candidate" and rec.parent is None and rec.registered_by == "trainer"
    assert rec.metrics["val_int8"]["ece"] is None  # NaN stored as null (PostgreSQL rejects NaN in JSON)
    assert {f.role: f.sha256 for f in rec.files} == {
        "int8": json.loads(v1.read_text())["files"]["int8"]["sha256"],
        "keras": json.loads(v1.read_text())["files"]["keras"]["sha256"]}
    registry.promote("v1", actor="admin@clinic")

    decision = {"promote": True, "per_class_recall": {"a": {"delta": 0.01}}}
    registry.register(v2, actor="retrain", decision=decision)
    rec = registry.promote("v2", actor="dr.amal")
    assert rec.status == "promoted" and rec.promoted_by == "dr.amal" and rec.promoted_at.tzinfo is not None
    assert rec.decision == decision and rec.parent == "v1"
    assert registry.current().version == "v2"

    registry.register(v3, actor="retrain")
    rec = registry.reject("v3", actor="retrain", reason="recall of a drops 0.9 -> 0.7")
    assert rec.status == "rejected" and rec.reason.startswith("recall of a")
    assert registry.current().version == "v2"

    registry.set_bundle("v2", sha256="e" * 64, url="http://x/models/v2/bundle.zip")
    assert registry.get("v2").bundle_sha256 == "e" * 64

    # Rolling back: promoting the older version again makes it current; nothing is deleted.
    registry.promote("v1", actor="admin@clinic", reason="rollback")
    assert registry.current().version == "v1"
    assert [r.version for r in registry.all()] == ["v3", "v2", "v1"]
    assert [(e["version"], e["action"]) for e in registry.events()] == [
        ("v1", "registered"), ("v1", "promoted"), ("v2", "registered"), ("v2", "promoted"),
        ("v3", "registered"), ("v3", "rejected"), ("v1", "promoted")]
    json.dumps(registry.get("v2").as_json())  # the dashboard can serve it as is


def test_refusals(registry: Registry, tmp_path: Path):
    v1 = write_model(tmp_path / "v1", "v1")
    registry.register(v1, actor="t")
    with pytest.raises(RegistryError, match="already registered"):
        registry.register(v1, actor="t")
    with pytest.raises(RegistryError, match="not in the registry"):
        registry.promote("nope", actor="t")
    registry.promote("v1", actor="t")
    with pytest.raises(RegistryError, match="is promoted"):
        registry.reject("v1", actor="t", reason="x")
    v2 = write_model(tmp_path / "v2", "v2", parent="v1")
    (tmp_path / "v2" / "skin_int8.tflite").write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="sha256"):
        registry.register(v2, actor="t")
    assert registry.get("v2") is None


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path):
    """An empty database: a SQLite file, or a fresh PostgreSQL database (skipped with the reason)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cloud.sqlite3'}"
    else:
        url = _postgres_url()
        yield url
        _drop_postgres(url)


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_registry_tables_come_from_the_cloud_migrations(db_url: str, tmp_path: Path):
    from cloud.storage import SCHEMA_VERSION, Storage

    registry = Registry.connect(db_url, migrate=False)
    assert "model_versions" not in _tables(db_url)  # the registry no longer creates tables itself
    registry.engine.dispose()

    storage = Storage(db_url, tmp_path / "images")
    assert storage.migrate() == SCHEMA_VERSION >= 2
    assert {"cases", "dead_letters", "schema_version", "model_versions", "model_files",
            "model_events"} <= _tables(db_url)
    registry = Registry.connect(db_url)  # migrating again is a no-op
    registry.register(write_model(tmp_path / "v1", "v1"), actor="t")
    assert registry.get("v1").status == "candidate"
    with storage.engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT version FROM schema_version ORDER BY version")).scalars().all()
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    registry.engine.dispose()
    storage.close()


def test_an_existing_database_is_upgraded_and_registry_tables_it_already_had_are_adopted(db_url: str,
                                                                                       tmp_path: Path):
    """A cloud at schema 1 whose registry had created its own tables (before migration 2): its cases and
    model versions survive the upgrade to the current schema."""
    from cloud import registry as registry_mod
    from cloud.storage import MIGRATIONS, SCHEMA_VERSION, Storage, schema_version
    from contract import utc_now

    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        schema_version.create(conn)
        dict(MIGRATIONS)[1](conn)
        conn.execute(schema_version.insert().values(version=1, applied_at=utc_now()))
        conn.execute(sa.text("INSERT INTO dead_letters (received_at, topic, reason, size, payload_sha256, payload) "
                             "VALUES (:at, 't', 'old', 1, :sha, :payload)"),
                     {"at": utc_now(), "sha": "0" * 64, "payload": b"x"})
    registry_mod.metadata.create_all(engine)  # what Registry.connect used to do
    Registry(engine).register(write_model(tmp_path / "v1", "v1"), actor="before")
    engine.dispose()

    registry = Registry.connect(db_url)
    assert registry.get("v1").registered_by == "before"
    registry.register(write_model(tmp_path / "v2", "v2", parent="v1"), actor="after")
    assert [r.version for r in registry.all()] == ["v2", "v1"]
    registry.engine.dispose()
    storage = Storage(db_url, tmp_path / "images")
    assert storage.version() == SCHEMA_VERSION
    assert [d["reason"] for d in storage.dead_letters()] == ["old"]
    storage.close()
