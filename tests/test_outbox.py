"""The SQLite outbox: durable before sending, bounded with a clear refusal, intact after kill -9."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contract import Capture, Result, decode, utc_now
from device.outbox import Outbox, OutboxFull
from tests.support.broker import ROOT
from tests.support.link import synthetic_lesion


def _capture(i: int, device: str = "kiosk-a") -> Capture:
    return Capture.from_image(synthetic_lesion(i, size=128), device_id=device)


def test_put_is_durable_and_idempotent(tmp_path: Path):
    box = Outbox(tmp_path / "o.sqlite3", max_bytes=10 * 2**20)
    cap = _capture(1)
    cid = box.put(cap)
    assert cid == str(cap.capture_id)
    assert box.put(cap) == cid  # same capture again: still one row
    box.close()
    box = Outbox(tmp_path / "o.sqlite3", max_bytes=10 * 2**20)  # reopened: still there
    assert box.counts()["queued"] == 1
    (pending,) = box.due(10)
    assert decode(pending.payload, Capture) == cap
    assert box.state(cid)["state"] == "queued"
    assert box.state("00000000-0000-0000-0000-000000000000") == {"state": "unknown", "result": None, "feedback": None}


def _result(capture_id: str) -> Result:
    return Result(capture_id=capture_id, device_id="kiosk-a", produced_at=utc_now(), model_version="1", label="alpha",
                  confidence=0.9, probabilities={"alpha": 0.9, "beta": 0.1}, unsure=False)


def _payload(box: Outbox, capture_id: str) -> bytes | None:
    db = sqlite3.connect(box.path)
    try:
        return db.execute("SELECT payload FROM outbox WHERE capture_id = ?", (capture_id,)).fetchone()[0]
    finally:
        db.close()


def test_sent_then_answered(tmp_path: Path):
    box = Outbox(tmp_path / "o.sqlite3", max_bytes=10 * 2**20)
    cid = box.put(_capture(2))
    assert [p.capture_id for p in box.due(10, exclude=[cid])] == []
    box.mark_sent([cid])
    assert box.state(cid)["state"] == "sent" and box.due(10) == []
    assert _payload(box, cid) is not None  # kept until the cloud has answered
    result = _result(cid)
    assert box.record_result(result)
    assert _payload(box, cid) is None  # the end-to-end acknowledgement frees the image
    state = box.state(cid)
    assert state["state"] == "answered" and state["result"] == result and state["feedback"] is None
    assert box.counts() == {"queued": 0, "sent": 1, "answered": 1, "held_bytes": 0, "max_bytes": 10 * 2**20}
    assert box.prune(keep_sent_s=3600) == 0 and box.prune(keep_sent_s=-1) == 1


def test_unanswered_capture_is_sent_again_with_growing_patience(tmp_path: Path):
    box = Outbox(tmp_path / "o.sqlite3", max_bytes=10 * 2**20)
    cid = box.put(_capture(7))
    box.mark_sent([cid])
    assert box.requeue_unanswered(timeout_s=3600) == []
    assert box.requeue_unanswered(timeout_s=0) == [cid]
    assert box.state(cid)["state"] == "queued" and [p.capture_id for p in box.due(10)] == [cid]
    assert "no answer" in box.list()[0]["last_error"]
    box.mark_sent([cid])
    time.sleep(0.3)
    assert box.requeue_unanswered(timeout_s=0.2) == []  # second wait is doubled: 0.4 s
    time.sleep(0.2)
    assert box.requeue_unanswered(timeout_s=0.2) == [cid]
    box.record_result(_result(cid))  # the answer to an earlier copy settles it
    assert box.state(cid)["state"] == "answered" and box.due(10) == []
    assert box.requeue_unanswered(timeout_s=0) == []


def test_refused_publish_backs_off_and_stays_queued(tmp_path: Path):
    box = Outbox(tmp_path / "o.sqlite3", max_bytes=10 * 2**20)
    cid = box.put(_capture(3))
    assert box.mark_refused(cid, "No matching subscribers", 1.0, 60.0) == 1.0
    assert box.due(10) == []  # waiting out its backoff
    assert box.mark_refused(cid, "No matching subscribers", 1.0, 60.0) == 2.0
    assert box.mark_refused(cid, "No matching subscribers", 1.0, 3.0) == 3.0  # capped
    row = box.list()[0]
    assert row["state"] == "queued" and row["attempts"] == 3 and "No matching" in row["last_error"]


def test_full_outbox_refuses_with_a_clear_error_and_drops_nothing(tmp_path: Path):
    first = _capture(4)
    size = len(first.model_dump_json(by_alias=True))
    box = Outbox(tmp_path / "o.sqlite3", max_bytes=1024 * 1024)
    box.max_bytes = int(size * 2.5)  # room for two captures
    ids = [box.put(first), box.put(_capture(5))]
    with pytest.raises(OutboxFull, match=r"outbox full: .* Nothing was queued"):
        box.put(_capture(6))
    assert [p.capture_id for p in box.due(10)] == ids
    box.mark_sent(ids[:1])  # sent but not answered: its image is still held
    with pytest.raises(OutboxFull):
        box.put(_capture(6))
    box.record_result(_result(ids[0]))  # answered: room again
    box.put(_capture(6))
    assert box.counts()["queued"] == 2


WRITER = """
import sys
from contract import Capture
from device.outbox import Outbox
from tests.support.link import synthetic_lesion
box = Outbox(sys.argv[1], max_bytes=1 << 30)
images = [synthetic_lesion(i, size=96) for i in range(8)]
i = 0
while True:
    cid = box.put(Capture.from_image(images[i % 8] + i.to_bytes(4, "big"), device_id="kiosk-a"))
    print(cid, flush=True)  # printed only after the commit returned
    i += 1
"""


def test_kill_9_mid_write_loses_no_committed_capture(tmp_path: Path):
    path = tmp_path / "o.sqlite3"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    committed = []
    deadline = time.monotonic() + 60
    while len(committed) < 40 and time.monotonic() < deadline:
        committed.append(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGKILL)
    committed += [line.strip() for line in proc.stdout.read().splitlines() if line.strip()]
    proc.wait()
    assert len(committed) >= 40
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    box = Outbox(path, max_bytes=1 << 30)
    pending = box.due(10_000)
    assert set(committed) <= {p.capture_id for p in pending}
    for p in pending:  # every row whole: decodes and its image matches its hash
        assert str(decode(p.payload, Capture).capture_id) == p.capture_id
