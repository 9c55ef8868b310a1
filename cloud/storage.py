"""Cloud storage: images content-addressed on disk, cases and dead letters in SQL.

One schema for SQLite (the default) and PostgreSQL (by URL), written with SQLAlchemy Core.
Versioned migrations: ``MIGRATIONS`` is an append-only list; ``schema_version`` records which
have run, and :meth:`Storage.migrate` applies the rest in order under a lock, so several
workers starting at once migrate once. Add a migration by appending ``(N + 1, function)``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from contract import Capture, Result, utc_now

log = logging.getLogger(__name__)

metadata = MetaData()

schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

cases = Table(
    "cases", metadata,
    Column("capture_id", String(36), primary_key=True),
    Column("device_id", String(63), nullable=False, index=True),
    Column("captured_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, index=True),
    Column("deliveries", Integer, nullable=False, default=1),
    Column("image_sha256", String(64), nullable=False),
    Column("content_type", String(32), nullable=False),
    Column("image_bytes", Integer, nullable=False),
    Column("locale", String(8), nullable=False),
    Column("pairing_token_sha256", String(64)),
    Column("device_prediction", Text),  # JSON of contract.DevicePrediction, or NULL
    # The cloud's classification (NULL until the float model has run).
    Column("label", String(64)),
    Column("confidence", Float),
    Column("probabilities", Text),  # JSON {label: probability}
    Column("unsure", Boolean),
    Column("model_version", String(64)),
    Column("result_at", DateTime(timezone=True)),
)

dead_letters = Table(
    "dead_letters", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("received_at", DateTime(timezone=True), nullable=False, index=True),
    Column("topic", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("payload_sha256", String(64), nullable=False),
    # The whole payload (the broker caps packets at 4 MiB), so nothing is lost for later inspection.
    Column("payload", LargeBinary, nullable=False),
)


def _v1(conn: Connection) -> None:
    for table in (cases, dead_letters):
        table.create(conn)


def _v2(conn: Connection) -> None:
    """The model registry (cloud.registry): versions, their files, and the promotion log.

    ``checkfirst``: databases from before this migration may already hold these tables, made by the
    registry itself with the same definitions; they are adopted as they are."""
    from cloud import registry

    for table in (registry.model_versions, registry.model_files, registry.model_events):
        table.create(conn, checkfirst=True)


MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _v1),
    (2, _v2),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything stored is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class StorageError(RuntimeError):
    pass


def make_engine(url: str) -> Engine:
    """The engine every cloud component uses for ``database.url`` (SQLite: folder made, WAL, busy timeout)."""
    # No pre-ping (a round trip per query): a dropped connection raises, the consumer retries,
    # and SQLAlchemy replaces the connection.
    engine = create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        db = engine.url.database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


@contextmanager
def _sqlite_lock(engine: Engine) -> Iterator[None]:
    """SQLite: a file lock held until the migration transaction has committed."""
    db = engine.url.database
    if engine.dialect.name != "sqlite" or db in (None, "", ":memory:"):
        yield
        return
    with open(f"{db}.migrate.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def schema_version_of(engine: Engine) -> int:
    with engine.connect() as conn:
        if not engine.dialect.has_table(conn, "schema_version"):
            return 0
        return conn.execute(select(func.coalesce(func.max(schema_version.c.version), 0))).scalar_one()


def migrate(engine: Engine) -> int:
    """Bring the schema at ``engine`` up to date under a lock; returns the version reached."""
    with _sqlite_lock(engine), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(727271)"))  # held until this transaction ends
        schema_version.create(conn, checkfirst=True)
        done = set(conn.execute(select(schema_version.c.version)).scalars())
        for number, step in MIGRATIONS:
            if number in done:
                continue
            log.info("applying schema migration %d", number)
            step(conn)
            conn.execute(schema_version.insert().values(version=number, applied_at=utc_now()))
    current = schema_version_of(engine)
    if current > SCHEMA_VERSION:
        raise StorageError(f"database schema is version {current}, this code knows up to {SCHEMA_VERSION}; "
                           f"upgrade SkinScan before using this database")
    return current


class Storage:
    def __init__(self, url: str, image_dir: str | Path) -> None:
        self.url = url
        self.image_dir = Path(image_dir)
        self.engine: Engine = make_engine(url)

    def close(self) -> None:
        self.engine.dispose()

    # -- migrations ---------------------------------------------------------------------

    def version(self) -> int:
        return schema_version_of(self.engine)

    def migrate(self) -> int:
        """Bring the schema up to date; returns the version reached."""
        return migrate(self.engine)

    # -- images -------------------------------------------------------------------------

    def image_path(self, sha256: str) -> Path:
        return self.image_dir / sha256[:2] / sha256

    def put_image(self, data: bytes) -> tuple[str, Path]:
        """Store bytes under their sha256, atomically (temp file, fsync, rename); same bytes, same file."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.image_path(digest)
        if path.is_file() and path.stat().st_size == len(data):
            return digest, path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)
        return digest, path

    def read_image(self, sha256: str) -> bytes:
        return self.image_path(sha256).read_bytes()

    # -- cases --------------------------------------------------------------------------

    def record_capture(self, capture: Capture, result: Result | None = None,
                       received_at: datetime | None = None) -> bool:
        """Store a capture's image and case (with its result, in the same transaction) once.

        A redelivery only counts (and fills in the result if the case had none). True when new."""
        self.put_image(capture.image)
        pred = capture.device_prediction
        row = {
            "capture_id": str(capture.capture_id),
            "device_id": capture.device_id,
            "captured_at": capture.captured_at,
            "received_at": received_at or utc_now(),
            "deliveries": 1,
            "image_sha256": capture.image_sha256,
            "content_type": capture.content_type,
            "image_bytes": len(capture.image),
            "locale": capture.locale,
            "pairing_token_sha256": capture.pairing_token_sha256,
            "device_prediction": pred.model_dump_json() if pred else None,
            **_result_columns(result),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(cases.insert().values(**row))
            return True
        except IntegrityError:
            pass
        with self.engine.begin() as conn:
            key = cases.c.capture_id == row["capture_id"]
            conn.execute(update(cases).where(key).values(deliveries=cases.c.deliveries + 1))
            if result is not None:
                conn.execute(update(cases).where(key, cases.c.label.is_(None)).values(**_result_columns(result)))
        return False

    def save_result(self, result: Result) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(cases).where(cases.c.capture_id == str(result.capture_id))
                         .values(**_result_columns(result)))

    def result(self, capture_id: str) -> Result | None:
        """The stored cloud classification of a case, as the contract message (None if not yet)."""
        case = self.case(capture_id)
        if case is None or case["label"] is None:
            return None
        return Result(capture_id=case["capture_id"], device_id=case["device_id"], produced_at=case["result_at"],
                      model_version=case["model_version"], label=case["label"], confidence=case["confidence"],
                      probabilities=case["probabilities"], unsure=case["unsure"])

    def case(self, capture_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(cases).where(cases.c.capture_id == str(capture_id))).mappings().first()
        return _case(row) if row else None

    def cases(self, limit: int | None = None, device_id: str | None = None) -> list[dict[str, Any]]:
        query = select(cases).order_by(cases.c.received_at.desc(), cases.c.capture_id)
        if device_id:
            query = query.where(cases.c.device_id == device_id)
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [_case(r) for r in conn.execute(query).mappings()]

    def count_cases(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(cases)).scalar_one()

    # -- dead letters -------------------------------------------------------------------

    def dead_letter(self, topic: str, reason: str, payload: bytes) -> int:
        with self.engine.begin() as conn:
            res = conn.execute(dead_letters.insert().values(
                received_at=utc_now(), topic=topic, reason=reason[:2000], size=len(payload),
                payload_sha256=hashlib.sha256(payload).hexdigest(), payload=payload))
            return int(res.inserted_primary_key[0])

    def dead_letters(self, limit: int | None = None) -> list[dict[str, Any]]:
        query = select(dead_letters.c.id, dead_letters.c.received_at, dead_letters.c.topic, dead_letters.c.reason,
                       dead_letters.c.size, dead_letters.c.payload_sha256).order_by(dead_letters.c.id)
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [{**r, "received_at": _aware(r["received_at"])} for r in conn.execute(query).mappings()]


def _result_columns(result: Result | None) -> dict[str, Any]:
    if result is None:
        return {}
    return {"label": result.label, "confidence": result.confidence, "probabilities": json.dumps(result.probabilities),
            "unsure": result.unsure, "model_version": result.model_version, "result_at": result.produced_at}


def _case(row: Any) -> dict[str, Any]:
    out = dict(row)
    for key in ("captured_at", "received_at", "result_at"):
        out[key] = _aware(out[key])
    for key in ("device_prediction", "probabilities"):
        if out[key] is not None:
            out[key] = json.loads(out[key])
    return out


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Several consumer processes may share one SQLite file: WAL lets readers and one writer
    # proceed together, and the busy timeout makes writers queue instead of failing.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
