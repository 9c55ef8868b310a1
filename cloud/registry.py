"""Model registry: every model version ever trained, with its lineage, data, metrics and files.

SQLAlchemy Core (SQLite or PostgreSQL). The tables are created by the cloud's versioned
migrations (``cloud.storage.MIGRATIONS``, migration 2), in the same database as the cases.
A version is registered as a ``candidate`` and later ``promoted`` or ``rejected`` (by whom,
when, why); nothing is ever deleted. The current model is
the most recently promoted one; promoting an older version again is how the cloud rolls back.
Every status change is also appended to ``model_events``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import sqlalchemy as sa

from models.manifest import Manifest, load, sha256_file

log = logging.getLogger(__name__)

Status = Literal["candidate", "promoted", "rejected"]
STATUSES = ("candidate", "promoted", "rejected")

metadata = sa.MetaData()

model_versions = sa.Table(
    "model_versions", metadata,
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("parent", sa.String(64), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("architecture", sa.String(64), nullable=False),
    sa.Column("input_size", sa.Integer, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("data_manifest_sha256", sa.String(64), nullable=False),
    # Val metrics from model.json, and the promotion decision (test-set comparison) when there is one.
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("decision", sa.JSON, nullable=True),
    sa.Column("bundle_sha256", sa.String(64), nullable=True),
    sa.Column("bundle_url", sa.String(2000), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("registered_by", sa.String(120), nullable=False),
    sa.Column("promoted_by", sa.String(120), nullable=True),
    sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("rejected_by", sa.String(120), nullable=True),
    sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.CheckConstraint("status IN ('candidate', 'promoted', 'rejected')", name="ck_model_versions_status"),
)

model_files = sa.Table(
    "model_files", metadata,
    sa.Column("version", sa.String(64), sa.ForeignKey("model_versions.version"), primary_key=True),
    sa.Column("role", sa.String(16), primary_key=True),
    sa.Column("path", sa.String(255), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
)

model_events = sa.Table(
    "model_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("version", sa.String(64), sa.ForeignKey("model_versions.version"), nullable=False, index=True),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("actor", sa.String(120), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("detail", sa.Text, nullable=True),
)


class RegistryError(ValueError):
    """An unknown version, a duplicate one, or a status change that is not allowed."""


@dataclass(frozen=True)
class ModelFileRecord:
    role: str
    path: str
    kind: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class ModelRecord:
    version: str
    parent: str | None
    status: Status
    architecture: str
    input_size: int
    labels: list[str]
    data_manifest_sha256: str
    metrics: dict
    decision: dict | None
    bundle_sha256: str | None
    bundle_url: str | None
    created_at: datetime
    registered_by: str
    promoted_by: str | None
    promoted_at: datetime | None
    rejected_by: str | None
    rejected_at: datetime | None
    reason: str | None
    files: tuple[ModelFileRecord, ...]

    def as_json(self) -> dict[str, object]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "files"}
        for key in ("created_at", "promoted_at", "rejected_at"):
            out[key] = out[key].isoformat() if out[key] else None
        out["files"] = [f.__dict__ for f in self.files]
        return out


def _finite(value):
    """JSON as PostgreSQL accepts it: NaN and infinities (an undefined metric) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every stored time is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class Registry:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    @classmethod
    def connect(cls, url: str, migrate: bool = True) -> Registry:
        """Open the registry at a SQLAlchemy URL (``database.url``); ``migrate`` first brings the whole
        cloud schema up to date, as every cloud command does at start."""
        from cloud import storage

        engine = storage.make_engine(url)
        if migrate:
            storage.migrate(engine)
        return cls(engine)

    def register(self, model_json: str | Path, *, actor: str, decision: dict | None = None,
                 verify: bool = True) -> ModelRecord:
        """Record the model described by ``model_json`` as a candidate. With ``verify`` every file
        named there must be present beside it with the recorded sha256."""
        path = Path(model_json)
        manifest: Manifest = load(path)
        if verify:
            for entry in manifest.files.values():
                actual = sha256_file(path.parent / entry.path)
                if actual != entry.sha256:
                    raise RegistryError(f"{path.parent / entry.path}: sha256 {actual} differs from model.json")
        now = _now()
        with self.engine.begin() as conn:
            if conn.execute(sa.select(model_versions.c.version)
                            .where(model_versions.c.version == manifest.version)).first():
                raise RegistryError(f"model {manifest.version} is already registered")
            if manifest.parent and not conn.execute(
                    sa.select(model_versions.c.version).where(model_versions.c.version == manifest.parent)).first():
                log.warning("model %s: parent %s is not in the registry", manifest.version, manifest.parent)
            conn.execute(model_versions.insert().values(
                version=manifest.version, parent=manifest.parent, status="candidate",
                architecture=manifest.architecture, input_size=manifest.input_size, labels=manifest.labels,
                data_manifest_sha256=manifest.data_manifest_sha256, metrics=_finite(manifest.metrics),
                decision=_finite(decision),
                created_at=now, registered_by=actor))
            conn.execute(model_files.insert(), [
                {"version": manifest.version, "role": role, "path": f.path, "kind": f.kind, "sha256": f.sha256,
                 "bytes": f.bytes} for role, f in manifest.files.items()])
            self._event(conn, manifest.version, "registered", actor, None, now)
        log.info("registered model %s (parent %s) by %s", manifest.version, manifest.parent, actor)
        return self.get(manifest.version)

    def promote(self, version: str, *, actor: str, reason: str | None = None) -> ModelRecord:
        """Make ``version`` the current model. A rejected version can be promoted only by a person
        overriding the decision, which the reason must say; re-promoting an older one rolls back."""
        now = _now()
        with self.engine.begin() as conn:
            self._require(conn, version)
            conn.execute(model_versions.update().where(model_versions.c.version == version).values(
                status="promoted", promoted_by=actor, promoted_at=now, reason=reason))
            self._event(conn, version, "promoted", actor, reason, now)
        log.info("promoted model %s by %s", version, actor)
        return self.get(version)

    def reject(self, version: str, *, actor: str, reason: str) -> ModelRecord:
        now = _now()
        with self.engine.begin() as conn:
            row = self._require(conn, version)
            if row.status == "promoted":
                raise RegistryError(f"model {version} is promoted; promote another version instead of rejecting")
            conn.execute(model_versions.update().where(model_versions.c.version == version).values(
                status="rejected", rejected_by=actor, rejected_at=now, reason=reason))
            self._event(conn, version, "rejected", actor, reason, now)
        log.info("rejected model %s by %s: %s", version, actor, reason)
        return self.get(version)

    def set_bundle(self, version: str, *, sha256: str, url: str) -> ModelRecord:
        with self.engine.begin() as conn:
            self._require(conn, version)
            conn.execute(model_versions.update().where(model_versions.c.version == version)
                         .values(bundle_sha256=sha256, bundle_url=url))
        return self.get(version)

    def get(self, version: str) -> ModelRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(model_versions).where(model_versions.c.version == version)).first()
            return self._record(conn, row) if row else None

    def all(self) -> list[ModelRecord]:
        """Every version, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(model_versions).order_by(model_versions.c.created_at.desc(),
                                                                    model_versions.c.version.desc())).all()
            return [self._record(conn, r) for r in rows]

    def current(self) -> ModelRecord | None:
        """The most recently promoted version (None before the first promotion)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(model_versions).where(model_versions.c.status == "promoted")
                               .order_by(model_versions.c.promoted_at.desc()).limit(1)).first()
            return self._record(conn, row) if row else None

    def events(self, version: str | None = None) -> list[dict[str, object]]:
        query = sa.select(model_events).order_by(model_events.c.id)
        if version is not None:
            query = query.where(model_events.c.version == version)
        with self.engine.connect() as conn:
            return [{**r._asdict(), "at": _aware(r.at)} for r in conn.execute(query)]

    @staticmethod
    def _event(conn: sa.Connection, version: str, action: str, actor: str, detail: str | None,
               at: datetime) -> None:
        conn.execute(model_events.insert().values(version=version, action=action, actor=actor, at=at, detail=detail))

    @staticmethod
    def _require(conn: sa.Connection, version: str) -> sa.Row:
        row = conn.execute(sa.select(model_versions).where(model_versions.c.version == version)).first()
        if row is None:
            raise RegistryError(f"model {version} is not in the registry")
        return row

    @staticmethod
    def _record(conn: sa.Connection, row: sa.Row) -> ModelRecord:
        files = conn.execute(sa.select(model_files).where(model_files.c.version == row.version)
                             .order_by(model_files.c.role)).all()
        return ModelRecord(
            version=row.version, parent=row.parent, status=row.status, architecture=row.architecture,
            input_size=row.input_size, labels=list(row.labels), data_manifest_sha256=row.data_manifest_sha256,
            metrics=row.metrics, decision=row.decision, bundle_sha256=row.bundle_sha256, bundle_url=row.bundle_url,
            created_at=_aware(row.created_at), registered_by=row.registered_by, promoted_by=row.promoted_by,
            promoted_at=_aware(row.promoted_at), rejected_by=row.rejected_by, rejected_at=_aware(row.rejected_at),
            reason=row.reason,
            files=tuple(ModelFileRecord(f.role, f.path, f.kind, f.sha256, int(f.bytes)) for f in files))
