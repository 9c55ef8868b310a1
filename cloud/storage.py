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

from contract import Capture, ChatMessage, Feedback, Result, utc_now
from runtime.files import atomic_write

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


# -- version 2: the dashboard (users, doctors' reviews, phone pairings, chat, audit log) ----------

users = Table(
    "users", metadata,
    Column("username", String(64), primary_key=True),
    Column("password_hash", String(256), nullable=False),  # werkzeug scrypt; never the password
    Column("role", String(16), nullable=False),  # dermatologist | admin
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
)

# Every review is kept (a correction is a new row); the newest one per case is the current diagnosis.
reviews = Table(
    "reviews", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("capture_id", String(36), nullable=False, index=True),
    Column("doctor", String(64), nullable=False),
    Column("label", String(64), nullable=False),  # a model label, or OTHER_LABEL
    Column("recommendation", Text, nullable=False),
    Column("urgent", Boolean, nullable=False),
    Column("given_at", DateTime(timezone=True), nullable=False, index=True),
    # When the broker acknowledged the Feedback to the device (NULL: still to relay).
    Column("relayed_at", DateTime(timezone=True)),
)

# State of a phone-pairing token (the token itself never reaches the cloud, only its SHA-256,
# which cases.pairing_token_sha256 holds). A row exists once the token is revoked.
pairings = Table(
    "pairings", metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column("revoked_at", DateTime(timezone=True), nullable=False),
    Column("revoked_by", String(64), nullable=False),
)

chat_messages = Table(
    "chat_messages", metadata,
    Column("message_id", String(36), primary_key=True),
    Column("capture_id", String(36), nullable=False, index=True),
    Column("sender", String(8), nullable=False),  # patient | staff
    Column("author", String(120), nullable=False),
    Column("text", Text, nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=False, index=True),
)

audit_log = Table(
    "audit_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("actor", String(120), nullable=False),  # a username, or "patient:<first 12 hex of the token hash>"
    Column("action", String(64), nullable=False),
    Column("target", String(120), nullable=False, default=""),
    Column("detail", Text, nullable=False, default=""),
    Column("ip", String(64), nullable=False, default=""),
)

# A doctor's label for "none of the model's classes / cannot be assessed from this photo".
OTHER_LABEL = "other"


def _v1(conn: Connection) -> None:
    for table in (cases, dead_letters):
        table.create(conn)


def _v2(conn: Connection) -> None:
    for table in (users, reviews, pairings, chat_messages, audit_log):
        table.create(conn)
    # The phone page finds its case by the token's hash.
    conn.execute(text("CREATE INDEX ix_cases_pairing_token_sha256 ON cases (pairing_token_sha256)"))


def _v3(conn: Connection) -> None:
    """The model registry (cloud.registry): versions, their files, and the promotion log.

    ``checkfirst``: databases from before this migration may already hold these tables, made by the
    registry itself with the same definitions; they are adopted as they are."""
    from cloud import registry

    for table in (registry.model_versions, registry.model_files, registry.model_events):
        table.create(conn, checkfirst=True)


MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _v1),
    (2, _v2),
    (3, _v3),
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
        atomic_write(path, data)
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


    # -- users --------------------------------------------------------------------------

    def add_user(self, username: str, password_hash: str, role: str, *, replace: bool = False) -> bool:
        """Create a dashboard account (or with ``replace``, set its password and role). True when new."""
        row = {"password_hash": password_hash, "role": role, "disabled": False}
        try:
            with self.engine.begin() as conn:
                conn.execute(users.insert().values(username=username, created_at=utc_now(), **row))
            return True
        except IntegrityError:
            if not replace:
                raise StorageError(f"user {username!r} already exists") from None
        with self.engine.begin() as conn:
            conn.execute(update(users).where(users.c.username == username).values(**row))
        return False

    def user(self, username: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.username == username)).mappings().first()
        return {**row, "created_at": _aware(row["created_at"])} if row else None

    def users(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(users.c.username, users.c.role, users.c.created_at, users.c.disabled)
                                .order_by(users.c.username)).mappings()
            return [{**r, "created_at": _aware(r["created_at"])} for r in rows]

    # -- reviews (the doctor's diagnosis) -----------------------------------------------

    def add_review(self, capture_id: str, doctor: str, label: str, recommendation: str, urgent: bool,
                   given_at: datetime | None = None) -> Feedback:
        """Store a doctor's review and return it as the contract ``Feedback`` to relay."""
        case = self.case(capture_id)
        if case is None:
            raise StorageError(f"no case {capture_id}")
        feedback = Feedback(capture_id=capture_id, device_id=case["device_id"], given_at=given_at or utc_now(),
                            doctor=doctor, label=label, recommendation=recommendation, urgent=urgent)
        with self.engine.begin() as conn:
            conn.execute(reviews.insert().values(
                capture_id=str(capture_id), doctor=doctor, label=label, recommendation=recommendation,
                urgent=urgent, given_at=feedback.given_at))
        return feedback

    def reviews(self, capture_id: str) -> list[dict[str, Any]]:
        """Every review of a case, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(reviews).where(reviews.c.capture_id == str(capture_id))
                                .order_by(reviews.c.given_at, reviews.c.id)).mappings()
            return [_review(r) for r in rows]

    def latest_reviews(self, capture_ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """capture_id -> its newest review (all reviewed cases, or only those given)."""
        newest = (select(reviews.c.capture_id, func.max(reviews.c.id).label("id"))
                  .group_by(reviews.c.capture_id))
        if capture_ids is not None:
            if not capture_ids:
                return {}
            newest = newest.where(reviews.c.capture_id.in_([str(c) for c in capture_ids]))
        newest = newest.subquery()
        query = select(reviews).join(newest, reviews.c.id == newest.c.id)
        with self.engine.connect() as conn:
            return {r["capture_id"]: _review(r) for r in conn.execute(query).mappings()}

    def disagreement_by_model(self) -> dict[str, dict[str, int]]:
        """Per model version: reviewed cases, and how many the doctor labelled differently from that model.

        Both sides count: the kiosk's int8 model (``device_prediction.model_version``) and the cloud's
        float model (``cases.model_version``). "other / not assessable" reviews are left out."""
        reviewed = {k: v for k, v in self.latest_reviews().items() if v["label"] != OTHER_LABEL}
        out: dict[str, dict[str, int]] = {}

        def count(version: str | None, model_label: str | None, doctor_label: str) -> None:
            if version and model_label:
                row = out.setdefault(version, {"reviewed": 0, "disagreed": 0})
                row["reviewed"] += 1
                row["disagreed"] += model_label != doctor_label

        if not reviewed:
            return out
        with self.engine.connect() as conn:
            rows = conn.execute(select(cases.c.capture_id, cases.c.label, cases.c.model_version,
                                       cases.c.device_prediction)
                                .where(cases.c.capture_id.in_(list(reviewed)))).mappings().all()
        for row in rows:
            doctor_label = reviewed[row["capture_id"]]["label"]
            count(row["model_version"], row["label"], doctor_label)
            if row["device_prediction"]:
                device = json.loads(row["device_prediction"])
                count(device.get("model_version"), device.get("label"), doctor_label)
        return out

    def feedback(self, capture_id: str) -> Feedback | None:
        """The newest review of a case as the contract message (what the device and the phone show)."""
        latest = self.latest_reviews([capture_id]).get(str(capture_id))
        return _feedback(latest, self.case(capture_id)["device_id"]) if latest else None

    def unrelayed_feedback(self, limit: int = 100) -> list[tuple[int, Feedback]]:
        """(review id, Feedback) not yet acknowledged by the broker, oldest first."""
        query = (select(reviews, cases.c.device_id).join(cases, cases.c.capture_id == reviews.c.capture_id)
                 .where(reviews.c.relayed_at.is_(None)).order_by(reviews.c.id).limit(limit))
        with self.engine.connect() as conn:
            return [(r["id"], _feedback(_review(r), r["device_id"])) for r in conn.execute(query).mappings()]

    def mark_relayed(self, review_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(reviews).where(reviews.c.id == review_id).values(relayed_at=utc_now()))

    def confirmed_cases(self, include_other: bool = False) -> list[dict[str, Any]]:
        """Doctor-labelled cases for retraining: the newest review of each case, oldest case first.

        Each row: ``capture_id``, ``label`` (the doctor's), ``doctor``, ``given_at``, ``image_sha256``,
        ``content_type``, ``device_id``, ``model_label`` (the cloud model's). ``other`` (not assessable)
        is left out unless asked for."""
        reviewed = self.latest_reviews()
        if not reviewed:
            return []
        with self.engine.connect() as conn:
            rows = conn.execute(select(cases.c.capture_id, cases.c.image_sha256, cases.c.content_type,
                                       cases.c.device_id, cases.c.label)
                                .where(cases.c.capture_id.in_(list(reviewed)))).mappings()
            found = {r["capture_id"]: r for r in rows}
        out = []
        for capture_id, review in sorted(reviewed.items(), key=lambda kv: (kv[1]["given_at"], kv[1]["id"])):
            if review["label"] == OTHER_LABEL and not include_other:
                continue
            case = found[capture_id]
            out.append({"capture_id": capture_id, "label": review["label"], "doctor": review["doctor"],
                        "given_at": review["given_at"], "image_sha256": case["image_sha256"],
                        "content_type": case["content_type"], "device_id": case["device_id"],
                        "model_label": case["label"]})
        return out

    # -- phone pairing ------------------------------------------------------------------

    def case_by_token_hash(self, token_sha256: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(cases).where(cases.c.pairing_token_sha256 == token_sha256)
                               .order_by(cases.c.received_at).limit(1)).mappings().first()
        return _case(row) if row else None

    def cases_by_token_hash(self, token_sha256: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(cases).where(cases.c.pairing_token_sha256 == token_sha256)
                                .order_by(cases.c.received_at.desc())).mappings()
            return [_case(r) for r in rows]

    def revoke_pairing(self, token_sha256: str, by: str) -> bool:
        """Revoke a phone link for good. True when it was not revoked before."""
        try:
            with self.engine.begin() as conn:
                conn.execute(pairings.insert().values(token_sha256=token_sha256, revoked_at=utc_now(), revoked_by=by))
            return True
        except IntegrityError:
            return False

    def pairing_revocation(self, token_sha256: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(pairings).where(pairings.c.token_sha256 == token_sha256)).mappings().first()
        return {**row, "revoked_at": _aware(row["revoked_at"])} if row else None

    # -- chat ---------------------------------------------------------------------------

    def add_message(self, message: ChatMessage) -> None:
        with self.engine.begin() as conn:
            conn.execute(chat_messages.insert().values(
                message_id=str(message.message_id), capture_id=str(message.capture_id), sender=message.sender,
                author=message.author, text=message.text, sent_at=message.sent_at))

    def messages(self, capture_id: str) -> list[ChatMessage]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(chat_messages).where(chat_messages.c.capture_id == str(capture_id))
                                .order_by(chat_messages.c.sent_at, chat_messages.c.message_id)).mappings()
            return [ChatMessage(**{**r, "sent_at": _aware(r["sent_at"])}) for r in rows]

    def count_messages(self, capture_id: str, sender: str, since: datetime) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(chat_messages).where(
                chat_messages.c.capture_id == str(capture_id), chat_messages.c.sender == sender,
                chat_messages.c.sent_at >= since)).scalar_one()

    # -- audit log ----------------------------------------------------------------------

    def audit(self, actor: str, action: str, target: str = "", detail: str = "", ip: str = "") -> None:
        with self.engine.begin() as conn:
            conn.execute(audit_log.insert().values(at=utc_now(), actor=actor[:120], action=action[:64],
                                                   target=target[:120], detail=detail[:4000], ip=ip[:64]))

    def count_audit(self, action: str, target: str, since: datetime) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(audit_log).where(
                audit_log.c.action == action, audit_log.c.target == target[:120],
                audit_log.c.at >= since)).scalar_one()

    def audit_entries(self, limit: int = 200, offset: int = 0, actor: str | None = None,
                      action: str | None = None) -> list[dict[str, Any]]:
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit).offset(offset)
        if actor:
            query = query.where(audit_log.c.actor == actor)
        if action:
            query = query.where(audit_log.c.action == action)
        with self.engine.connect() as conn:
            return [{**r, "at": _aware(r["at"])} for r in conn.execute(query).mappings()]


def _review(row: Any) -> dict[str, Any]:
    out = {k: row[k] for k in ("id", "capture_id", "doctor", "label", "recommendation", "urgent", "given_at",
                               "relayed_at")}
    out["given_at"] = _aware(out["given_at"])
    out["relayed_at"] = _aware(out["relayed_at"])
    return out


def _feedback(review: dict[str, Any], device_id: str) -> Feedback:
    return Feedback(capture_id=review["capture_id"], device_id=device_id, given_at=review["given_at"],
                    doctor=review["doctor"], label=review["label"], recommendation=review["recommendation"],
                    urgent=review["urgent"])


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
