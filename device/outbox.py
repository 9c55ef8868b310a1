"""Store-and-forward outbox: nothing a clinic captures is lost between the kiosk and the cloud.

Every capture is written, as its encoded contract message, to a local SQLite database in one
transaction *before* any attempt to send it. A row leaves the ``queued`` state only when the
broker has acknowledged the QoS 1 publish (PUBACK with a success code): it is then ``sent``.
The image itself is kept until the cloud's result (or a doctor's feedback) for it arrives, the
end-to-end acknowledgement (``answered``): a sent capture that stays unanswered for
``outbox.answer_timeout_s`` (doubling per resend, at most 12 h) is queued again. That covers what
a PUBACK cannot: a broker that crashes before saving its queue, or a consumer that never returns.
The cloud stores by ``capture_id``, so a resend is never a second case.

Durability: WAL journal with ``synchronous=FULL``, so a committed capture survives a power cut
(kill -9) at any moment; a half-written transaction is rolled back by SQLite on the next open.

Disk policy: the images held (queued, or sent and not yet answered) may use at most
``outbox.max_bytes``. When a new capture would exceed that, :meth:`Outbox.put` raises
:class:`OutboxFull` (the kiosk says so and keeps its offline report); nothing already held is
ever dropped to make room. Answered rows (no image, a few hundred bytes) are pruned after
``outbox.keep_sent_days``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from contract import Capture, Feedback, Result, decode, encode

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    capture_id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'sent')),
    payload BLOB,                      -- the encoded contract Capture; NULL once answered
    bytes INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    resends INTEGER NOT NULL DEFAULT 0, -- times re-queued for want of an answer
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    sent_at REAL,
    result BLOB,                       -- encoded contract Result from the cloud
    feedback BLOB,                     -- encoded contract Feedback from a dermatologist
    answered_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at, seq);
"""


class OutboxError(RuntimeError):
    """The outbox cannot take a capture; the message says why and what to do."""


class OutboxFull(OutboxError):
    """Held images would exceed ``outbox.max_bytes``; the capture was not queued."""


@dataclass(frozen=True)
class Pending:
    capture_id: str
    payload: bytes
    attempts: int


class Outbox:
    """One SQLite file, safe to share between threads and between processes (CLI + kiosk)."""

    def __init__(self, path: str | Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE) so a capture's
        # size check and insert are one atomic step even with another process writing.
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: Iterable[object] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    # -- device side: queue and send ------------------------------------------------------

    def put(self, capture: Capture) -> str:
        """Queue one capture durably; returns its capture_id. Idempotent for the same capture_id."""
        payload = encode(capture)
        capture_id = str(capture.capture_id)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM outbox WHERE capture_id = ?", (capture_id,)).fetchone():
                return capture_id
            used = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM outbox WHERE payload IS NOT NULL").fetchone()[0]
            if used + len(payload) > self.max_bytes:
                raise OutboxFull(
                    f"outbox full: {used} bytes of captures wait to be sent or answered and this one needs "
                    f"{len(payload)} more, "
                    f"limit {self.max_bytes} (outbox.max_bytes). Nothing was queued; reconnect the kiosk so the "
                    f"queue drains, or raise the limit.")
            db.execute("INSERT INTO outbox (capture_id, created_at, state, payload, bytes) "
                       "VALUES (?, ?, 'queued', ?, ?)", (capture_id, time.time(), payload, len(payload)))
        return capture_id

    def due(self, limit: int, exclude: Iterable[str] = ()) -> list[Pending]:
        """Queued captures whose backoff has passed, oldest first, skipping those already in flight."""
        skip = set(exclude)
        rows = self._read(
            "SELECT capture_id, payload, attempts FROM outbox WHERE state = 'queued' AND next_attempt_at <= ? "
            "ORDER BY seq LIMIT ?", (time.time(), limit + len(skip)))
        return [Pending(cid, payload, attempts) for cid, payload, attempts in rows if cid not in skip][:limit]

    def mark_sent(self, capture_ids: Iterable[str]) -> None:
        """The broker acknowledged these publishes (the image stays until the answer comes)."""
        ids = [(time.time(), cid) for cid in capture_ids]
        if ids:
            with self._tx() as db:
                db.executemany("UPDATE outbox SET state = 'sent', sent_at = ?, last_error = NULL "
                               "WHERE capture_id = ? AND state = 'queued'", ids)

    def requeue_unanswered(self, timeout_s: float, max_s: float = 12 * 3600) -> list[str]:
        """Queue again the sent captures whose answer is overdue; their capture ids."""
        now = time.time()
        with self._tx() as db:
            rows = db.execute("SELECT capture_id, sent_at, resends FROM outbox WHERE state = 'sent' "
                              "AND payload IS NOT NULL").fetchall()
            late = [cid for cid, sent_at, resends in rows if now - sent_at > min(max_s, timeout_s * 2 ** resends)]
            db.executemany("UPDATE outbox SET state = 'queued', resends = resends + 1, next_attempt_at = 0, "
                           "last_error = 'no answer from the cloud in time; sending again' WHERE capture_id = ?",
                           [(cid,) for cid in late])
        return late

    def mark_refused(self, capture_id: str, reason: str, initial_s: float, max_s: float) -> float:
        """The broker refused the publish: keep the capture and retry later (doubling backoff)."""
        with self._tx() as db:
            row = db.execute("SELECT attempts FROM outbox WHERE capture_id = ?", (capture_id,)).fetchone()
            attempts = (row[0] if row else 0) + 1
            delay = min(max_s, initial_s * 2 ** (attempts - 1))
            db.execute("UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE capture_id = ?",
                       (attempts, time.time() + delay, reason, capture_id))
        return delay

    # -- replies from the cloud -----------------------------------------------------------

    def record_result(self, result: Result) -> bool:
        return self._record("result", str(result.capture_id), encode(result))

    def record_feedback(self, feedback: Feedback) -> bool:
        return self._record("feedback", str(feedback.capture_id), encode(feedback))

    def _record(self, column: str, capture_id: str, message: bytes) -> bool:
        """Store a reply; the cloud has the capture now, so its image is no longer needed here.

        A reply to a capture waiting for a resend also counts as its acknowledgement."""
        with self._tx() as db:
            cur = db.execute(f"UPDATE outbox SET {column} = ?, answered_at = ?, payload = NULL, state = 'sent', "
                             "sent_at = COALESCE(sent_at, ?), last_error = NULL WHERE capture_id = ?",
                             (message, time.time(), time.time(), capture_id))
            return cur.rowcount > 0

    # -- reading --------------------------------------------------------------------------

    def state(self, capture_id: str) -> dict[str, object]:
        rows = self._read("SELECT state, result, feedback FROM outbox WHERE capture_id = ?", (capture_id,))
        if not rows:
            return {"state": "unknown", "result": None, "feedback": None}
        state, result, feedback = rows[0]
        result_msg = decode(result, Result) if result else None
        feedback_msg = decode(feedback, Feedback) if feedback else None
        if result_msg or feedback_msg:
            state = "answered"
        return {"state": state, "result": result_msg, "feedback": feedback_msg}

    def counts(self) -> dict[str, int]:
        rows = self._read(
            "SELECT SUM(state = 'queued'), SUM(state = 'sent'), "
            "SUM(result IS NOT NULL OR feedback IS NOT NULL), COALESCE(SUM(CASE WHEN payload IS NOT NULL "
            "THEN bytes END), 0) FROM outbox")
        queued, sent, answered, used = (v or 0 for v in rows[0])
        return {"queued": queued, "sent": sent, "answered": answered, "held_bytes": used,
                "max_bytes": self.max_bytes}

    def list(self, limit: int = 1000) -> list[dict[str, object]]:
        rows = self._read(
            "SELECT capture_id, state, bytes, attempts, created_at, sent_at, last_error, "
            "result IS NOT NULL, feedback IS NOT NULL FROM outbox ORDER BY seq DESC LIMIT ?", (limit,))
        out = []
        for cid, state, size, attempts, created, sent, error, has_result, has_feedback in rows:
            out.append({"capture_id": cid, "state": "answered" if has_result or has_feedback else state,
                        "bytes": size, "attempts": attempts, "created_at": created, "sent_at": sent,
                        "last_error": error})
        return out

    def prune(self, keep_sent_s: float) -> int:
        """Forget answered captures older than ``keep_sent_s`` (they hold no image)."""
        with self._tx() as db:
            cur = db.execute("DELETE FROM outbox WHERE payload IS NULL AND answered_at < ?",
                             (time.time() - keep_sent_s,))
            return cur.rowcount
