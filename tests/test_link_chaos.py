"""Nothing is lost: 200 captures flow while the broker restarts three times (once by a crash that loses
what it had not saved yet) and the kiosk is killed -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cloud.storage import Storage
from tests.support.broker import ROOT
from tests.support.device_proc import capture_id_for
from tests.support.link import cloud_env, device_env, sample_images, wait_for

N = 200


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(argv, env=full, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def _rows(outbox: Path) -> int:
    db = sqlite3.connect(outbox, timeout=30)
    try:
        return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    finally:
        db.close()


def _answered(outbox: Path) -> int:
    db = sqlite3.connect(outbox, timeout=30)
    try:
        return db.execute("SELECT COUNT(*) FROM outbox WHERE result IS NOT NULL").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


@pytest.mark.slow
def test_200_captures_survive_broker_restarts_and_device_kill(broker, tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    for i, data in enumerate(sample_images(N)):
        # Distinct bytes per capture even when the image set is small.
        (images / f"{i:04d}.jpg").write_bytes(data + i.to_bytes(4, "big"))
    expected = {capture_id_for(f"{i:04d}.jpg") for i in range(N)}

    cenv = cloud_env(broker, tmp_path)
    consumer_log = tmp_path / "consumer.log"
    consumer = _spawn([sys.executable, "-m", "cloud.cli", "consume", "--worker-id", "chaos"], cenv, consumer_log)
    # A short answer timeout so captures the crashed broker forgot are sent again within the test.
    denv = device_env(broker, "kiosk-a", tmp_path, SKINSCAN_OUTBOX__ANSWER_TIMEOUT_S="3.0")
    outbox = Path(denv["SKINSCAN_OUTBOX__PATH"])
    device_log = tmp_path / "device.log"
    device_argv = [sys.executable, "-m", "tests.support.device_proc", str(images), "0.05"]
    device = None
    try:
        wait_for(lambda: "ready on" in consumer_log.read_text(), 60, "the consumer to subscribe")
        device = _spawn(device_argv, denv, device_log)
        storage = Storage(cenv["SKINSCAN_DATABASE__URL"], cenv["SKINSCAN_STORAGE__IMAGE_DIR"])

        def stored() -> int:
            try:
                return storage.count_cases()
            except Exception:  # table not there yet
                return 0

        # Disruptions spread over the run, each once some captures have made it through.
        for threshold, action in ((20, "broker"), (60, "kill"), (100, "broker crash"), (150, "broker")):
            wait_for(lambda t=threshold: stored() >= t, 60, f"{threshold} stored cases")
            if action.startswith("broker"):
                broker.restart(kill=action == "broker crash")
            else:
                device.send_signal(signal.SIGKILL)
                device.wait()
                held = _rows(outbox)
                assert held < N, "the kiosk had queued everything before the kill; the test proves nothing"
                device = _spawn(device_argv, denv, device_log)
        wait_for(lambda: stored() >= N, 90, f"all {N} cases stored")
        wait_for(lambda: _answered(outbox) >= N, 60, f"all {N} results back on the device")

        cases = storage.cases()
        assert len(cases) == N
        assert {c["capture_id"] for c in cases} == expected
        assert all(c["label"] for c in cases)
        assert storage.dead_letters() == []
        db = sqlite3.connect(outbox)
        rows = db.execute("SELECT capture_id, state, result IS NOT NULL FROM outbox").fetchall()
        db.close()
        assert {r[0] for r in rows} == expected
        assert all(state == "sent" and has_result for _, state, has_result in rows)
        images_stored = [p for p in Path(cenv["SKINSCAN_STORAGE__IMAGE_DIR"]).rglob("*") if p.is_file()]
        assert len(images_stored) == N and not [p for p in images_stored if p.name.startswith(".tmp")]
        redelivered = sum(c["deliveries"] - 1 for c in cases)
        print(f"{N} cases stored once each; {redelivered} redeliveries absorbed; kiosk killed holding {held}")
        storage.close()
    finally:
        for proc in (device, consumer):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.mark.slow
def test_consumer_killed_mid_way_gets_the_unacknowledged_captures_again(broker, tmp_path: Path):
    """The consumer acknowledges a capture only after storing and answering it: kill -9 it while it
    holds some, and the restarted worker (same session) receives them again."""
    n = 40
    images = tmp_path / "images"
    images.mkdir()
    for i, data in enumerate(sample_images(n)):
        (images / f"{i:04d}.jpg").write_bytes(data + i.to_bytes(4, "big"))
    cenv = cloud_env(broker, tmp_path)
    log = tmp_path / "consumer.log"
    argv = [sys.executable, "-m", "cloud.cli", "consume", "--worker-id", "crashy"]
    consumer = _spawn(argv, cenv, log)
    denv = device_env(broker, "kiosk-a", tmp_path)
    device = None
    storage = Storage(cenv["SKINSCAN_DATABASE__URL"], cenv["SKINSCAN_STORAGE__IMAGE_DIR"])
    try:
        wait_for(lambda: "ready on" in log.read_text(), 60, "the consumer to subscribe")
        device = _spawn([sys.executable, "-m", "tests.support.device_proc", str(images), "0"], denv,
                        tmp_path / "device.log")
        wait_for(lambda: storage.count_cases() >= 5, 60, "the first cases")
        consumer.send_signal(signal.SIGKILL)
        consumer.wait()
        killed_at = storage.count_cases()
        assert killed_at < n, "the consumer finished before it could be killed; the test proves nothing"
        consumer = _spawn(argv, cenv, log)
        wait_for(lambda: storage.count_cases() >= n, 60, f"all {n} cases")
        wait_for(lambda: _answered(Path(denv["SKINSCAN_OUTBOX__PATH"])) >= n, 60, "every result on the device")
        assert len({c["capture_id"] for c in storage.cases()}) == n
        assert storage.dead_letters() == []
    finally:
        storage.close()
        for proc in (device, consumer):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(15)
