"""Device <-> cloud over the real broker: results come back, bad input is dead-lettered, outages lose nothing."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cloud.consumer import Consumer
from contract import MAX_MESSAGE_BYTES, Capture, DeviceStatus, Feedback, Result, decode, encode, utc_now
from device.outbox import OutboxFull
from device.uplink import Uplink, UplinkBusy
from tests.support.broker import ROOT
from tests.support.link import (
    cloud_config,
    cloud_env,
    device_config,
    device_env,
    manifest_path,
    sample_images,
    wait_for,
)
from tests.test_broker_security import Probe

PREFIX = "skinscan/v1"


class RunningConsumer:
    def __init__(self, broker, tmp_path: Path) -> None:
        self.cfg = cloud_config(broker, tmp_path)
        self.consumer = Consumer(self.cfg, worker_id="test")
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.consumer.run, args=(self.stop_event,), daemon=True)

    def start(self) -> Consumer:
        self.thread.start()
        assert self.consumer.ready.wait(30), "consumer did not subscribe"
        return self.consumer

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(15)


@pytest.fixture
def consumer(broker, tmp_path: Path):
    running = RunningConsumer(broker, tmp_path)
    yield running.start()
    running.stop()


@pytest.fixture
def uplink(broker, tmp_path: Path):
    up = Uplink(device_config(broker, "kiosk-a", tmp_path))
    up.start()
    yield up
    up.close()


def _answered(up: Uplink, ids: list[str]) -> bool:
    return all(up.state(i)["state"] == "answered" for i in ids)


def test_capture_goes_to_the_cloud_and_the_result_comes_back(broker, consumer, uplink):
    dashboard = Probe(broker.port, "dashboard", broker.secret("dashboard"))
    dashboard.subscribe(f"{PREFIX}/dashboard/cases")
    images = sample_images(3)
    ids = [uplink.send(Capture.from_image(img, device_id="kiosk-a")) for img in images]
    assert all(uplink.state(i)["state"] in {"queued", "sent", "answered"} for i in ids)
    wait_for(lambda: _answered(uplink, ids), 30, "three results")
    labels = consumer.classifier.labels
    for capture_id, image in zip(ids, images, strict=True):
        state = uplink.state(capture_id)
        result = state["result"]
        assert isinstance(result, Result) and str(result.capture_id) == capture_id
        assert result.label in labels and set(result.probabilities) == set(labels)
        case = consumer.storage.case(capture_id)
        assert case["device_id"] == "kiosk-a" and case["label"] == result.label
        assert consumer.storage.read_image(case["image_sha256"]) == image
    stats = uplink.stats()
    assert stats["connected"] is True and stats["queued"] == 0 and stats["sent"] == 3 and stats["answered"] == 3
    wait_for(lambda: len(dashboard.messages) == 3, 5, "three dashboard events")
    events = [decode(p, Result) for _, p in dashboard.messages]
    assert {str(e.capture_id) for e in events} == set(ids)
    dashboard.close()
    # A doctor's feedback reaches the device too.
    cloud = Probe(broker.port, "cloud", broker.secret("cloud"))
    feedback = Feedback(capture_id=ids[0], device_id="kiosk-a", given_at=utc_now(), doctor="Dr. Amal",
                        label=labels[0], recommendation="Benign-looking; recheck in 6 months.")
    assert not cloud.publish(f"{PREFIX}/devices/kiosk-a/feedback", encode(feedback)).is_failure
    wait_for(lambda: uplink.state(ids[0])["feedback"], 10, "the feedback on the device")
    assert uplink.state(ids[0])["feedback"] == feedback
    cloud.close()


def test_redelivered_capture_is_stored_once_and_answered_again(broker, consumer):
    device = Probe(broker.port, "kiosk-a", broker.secret("kiosk-a"))
    device.subscribe(f"{PREFIX}/devices/kiosk-a/results")
    capture = Capture.from_image(sample_images(1)[0], device_id="kiosk-a")
    for _ in range(2):
        assert not device.publish(f"{PREFIX}/devices/kiosk-a/captures", encode(capture)).is_failure
    wait_for(lambda: len(device.messages) == 2, 30, "two answers")
    first, second = (decode(p, Result) for _, p in device.messages)
    assert first == second  # the stored result, not a second classification
    assert consumer.storage.count_cases() == 1
    assert consumer.storage.case(str(capture.capture_id))["deliveries"] == 2
    assert consumer.counts["new"] == 1 and consumer.counts["repeat"] == 1
    device.close()


def _bad_messages() -> dict[str, tuple[bytes, str]]:
    good = Capture.from_image(sample_images(1)[0], device_id="kiosk-a")
    data = json.loads(encode(good))
    not_image = b"this is not a picture at all" * 10
    return {
        "malformed": (b"{not json", "not valid UTF-8 JSON"),
        "binary": (b"\x00\xff\xfe" * 50, "not valid UTF-8 JSON"),
        "oversize": (b'{"schema": 1, "pad": "' + b"x" * (MAX_MESSAGE_BYTES + 10) + b'"}', "limit 3145728"),
        "wrong schema": (json.dumps({**data, "schema": 2}).encode(), "unsupported schema version 2"),
        "wrong type": (json.dumps({**data, "type": "result"}).encode(), "expected 'capture'"),
        "spoofed device": (json.dumps({**data, "device_id": "kiosk-b"}).encode(), "came on"),
        "bad hash": (json.dumps({**data, "image_sha256": "0" * 64}).encode(), "does not match the image"),
        "not an image": (json.dumps({**data, "image": base64.b64encode(not_image).decode(),
                                     "image_sha256": hashlib.sha256(not_image).hexdigest()}).encode(),
                         "not a recognised image format"),
    }


def test_bad_messages_go_to_dead_letters_and_the_consumer_keeps_running(broker, consumer):
    device = Probe(broker.port, "kiosk-a", broker.secret("kiosk-a"))
    device.subscribe(f"{PREFIX}/devices/kiosk-a/results")
    bad = _bad_messages()
    for payload, _ in bad.values():
        assert not device.publish(f"{PREFIX}/devices/kiosk-a/captures", payload).is_failure
    good = Capture.from_image(sample_images(1)[0], device_id="kiosk-a")
    device.publish(f"{PREFIX}/devices/kiosk-a/captures", encode(good))
    wait_for(lambda: device.messages, 30, "the good capture's result")
    assert str(decode(device.messages[0][1], Result).capture_id) == str(good.capture_id)
    letters = consumer.storage.dead_letters()
    assert len(letters) == len(bad)
    for letter, (name, (payload, reason)) in zip(letters, bad.items(), strict=True):
        assert reason in letter["reason"], (name, letter["reason"])
        assert letter["size"] == len(payload) and letter["topic"] == f"{PREFIX}/devices/kiosk-a/captures"
    assert consumer.storage.count_cases() == 1 and consumer.counts["dead"] == len(bad)
    device.close()
    env = {**os.environ, **cloud_env(broker, Path(consumer.cfg.data_dir).parent)}
    out = subprocess.run([sys.executable, "-m", "cloud.cli", "dead-letters", "--json"], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert [json.loads(line)["reason"] for line in out.splitlines()] == [le["reason"] for le in letters]


def test_captures_wait_out_a_broker_outage(broker, consumer, uplink):
    wait_for(lambda: uplink.stats()["connected"], 10, "the uplink to connect")
    broker.stop()
    wait_for(lambda: not uplink.stats()["connected"], 10, "the uplink to notice")
    ids = [uplink.send(Capture.from_image(img, device_id="kiosk-a")) for img in sample_images(4)]
    threading.Event().wait(1.0)
    assert [uplink.state(i)["state"] for i in ids] == ["queued"] * 4
    assert uplink.stats()["queued"] == 4
    broker.start()
    wait_for(lambda: _answered(uplink, ids), 45, "results after the outage")
    assert consumer.storage.count_cases() == 4


def test_no_consumer_yet_keeps_the_capture_queued(broker, tmp_path: Path, uplink):
    # Nobody subscribed: the broker would drop the message (PUBACK "no matching subscribers"),
    # so the outbox keeps it and retries until a consumer is there.
    capture_id = uplink.send(Capture.from_image(sample_images(1)[0], device_id="kiosk-a"))
    wait_for(lambda: uplink.stats()["last_error"] and "No matching subscribers" in uplink.stats()["last_error"],
             10, "the refusal")
    assert uplink.state(capture_id)["state"] == "queued"
    running = RunningConsumer(broker, tmp_path)
    running.start()
    try:
        wait_for(lambda: uplink.state(capture_id)["state"] == "answered", 30, "the result once a consumer runs")
    finally:
        running.stop()


def test_a_sent_capture_without_an_answer_is_sent_again(broker, tmp_path: Path):
    # A subscriber that takes captures but never answers stands for a broker that lost its queue
    # or a consumer that died holding it: the PUBACK came, the result never does.
    sink = Probe(broker.port, "cloud", broker.secret("cloud"))
    sink.subscribe(f"{PREFIX}/devices/+/captures")
    up = Uplink(device_config(broker, "kiosk-a", tmp_path, SKINSCAN_OUTBOX__ANSWER_TIMEOUT_S="1.0"))
    up.start()
    try:
        capture = Capture.from_image(sample_images(1)[0], device_id="kiosk-a")
        capture_id = up.send(capture)
        wait_for(lambda: len(sink.messages) >= 2, 20, "the capture to be sent again")
        assert {m for _, m in sink.messages} == {encode(capture)}
        assert up.stats()["held_bytes"] > 0  # still held: nobody has answered
        running = RunningConsumer(broker, tmp_path)
        running.start()
        try:
            wait_for(lambda: up.state(capture_id)["state"] == "answered", 30, "the answer")
            assert up.stats()["held_bytes"] == 0
            assert running.consumer.storage.count_cases() == 1
        finally:
            running.stop()
    finally:
        up.close()
        sink.close()


def test_uplink_refuses_a_username_other_than_its_device_id(broker, tmp_path: Path):
    from device.mqttclient import MqttSetupError

    cfg = device_config(broker, "kiosk-a", tmp_path, SKINSCAN_MQTT__USERNAME="kiosk-b")
    with pytest.raises(MqttSetupError, match="must be named by its device_id"):
        Uplink(cfg).start()


def test_one_uplink_per_outbox_and_bounded_send(broker, tmp_path: Path, uplink):
    second = Uplink(device_config(broker, "kiosk-a", tmp_path))
    with pytest.raises(UplinkBusy, match="already sending from"):
        second.start()
    second.outbox.close()
    with pytest.raises(ValueError, match="this kiosk is 'kiosk-a'"):
        uplink.send(Capture.from_image(sample_images(1)[0], device_id="kiosk-b"))
    broker.stop()  # nothing drains while we fill it
    uplink.outbox.max_bytes = 1
    with pytest.raises(OutboxFull, match="outbox full"):
        uplink.send(Capture.from_image(sample_images(1)[0], device_id="kiosk-a"))
    assert uplink.stats()["queued"] == 0


def test_status_is_retained_online_and_the_last_will_says_offline(broker, tmp_path: Path):
    images = tmp_path / "none"
    images.mkdir()
    env = {**os.environ, **device_env(broker, "kiosk-b", tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.device_proc", str(images), "0"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watcher = Probe(broker.port, "cloud", broker.secret("cloud"))
    try:
        watcher.subscribe(f"{PREFIX}/devices/+/status")

        def states() -> list[str]:
            return [decode(p, DeviceStatus).state for _, p in watcher.messages]

        wait_for(lambda: "online" in states(), 30, "online status")
        online = decode(watcher.messages[-1][1], DeviceStatus)
        assert online.device_id == "kiosk-b" and online.queued == 0 and online.sent == 0
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        wait_for(lambda: states()[-1] == "offline", 20, "the last will")
        late = Probe(broker.port, "cloud", broker.secret("cloud"))  # retained: a newcomer sees it too
        late.subscribe(f"{PREFIX}/devices/kiosk-b/status")
        wait_for(lambda: late.messages, 5, "the retained status")
        assert decode(late.messages[0][1], DeviceStatus).state == "offline"
        late.close()
    finally:
        watcher.close()
        if proc.poll() is None:
            proc.kill()


def test_cli_send_outbox_and_cases(broker, consumer, tmp_path: Path):
    files = []
    for i, data in enumerate(sample_images(2)):
        files.append(tmp_path / f"photo{i}.jpg")
        files[-1].write_bytes(data)
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not an image")
    env = {**os.environ, **device_env(broker, "kiosk-a", tmp_path)}
    done = subprocess.run([sys.executable, "-m", "device.cli", "send", "--json", *map(str, files), str(bogus)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr  # one file was refused
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line.get("state") for line in lines[:2]] == ["queued", "queued"]
    assert "not a recognised image format" in lines[2]["error"]
    assert "2 sent to the broker" in done.stderr
    ids = [line["capture_id"] for line in lines[:2]]
    wait_for(lambda: all(consumer.storage.result(i) for i in ids), 30, "both cases classified")
    case = consumer.storage.case(ids[0])
    assert case["device_prediction"] is not None  # the kiosk's own int8 prediction travelled along
    assert set(case["device_prediction"]["probabilities"]) == set(consumer.classifier.labels)

    shown = subprocess.run([sys.executable, "-m", "device.cli", "outbox", "--json"], env=env, cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    rows = {r["capture_id"]: r for r in map(json.loads, shown.splitlines())}
    assert set(rows) == set(ids) and all(r["state"] in {"sent", "answered"} for r in rows.values())

    cenv = {**os.environ, **cloud_env(broker, tmp_path)}
    listed = subprocess.run([sys.executable, "-m", "cloud.cli", "cases", "--json"], env=cenv, cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    cases = [json.loads(line) for line in listed.splitlines()]
    assert {c["capture_id"] for c in cases} == set(ids)
    for c in cases:
        assert c["device_id"] == "kiosk-a" and c["label"] in consumer.classifier.labels and c["received_at"]


def test_make_run_starts_a_consumer_that_answers(tmp_path: Path):
    from tests.support.broker import free_port

    manifest_path()
    port = free_port()
    var = tmp_path / "var"
    env = {**os.environ, "SKINSCAN_MQTT__PORT": str(port), "SKINSCAN_BROKER_WS_PORT": str(free_port()),
           "SKINSCAN_RUN_DIR": str(var), "SKINSCAN_MODEL__MANIFEST": str(manifest_path()), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run_local.py")], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while "Press Ctrl-C" not in (line := proc.stdout.readline()):
            assert line, "run_local exited early"
        kiosk = Probe(port, "kiosk-01", (var / "broker" / "credentials" / "kiosk-01.secret").read_text().strip())
        kiosk.subscribe(f"{PREFIX}/devices/kiosk-01/results")
        capture = Capture.from_image(sample_images(1)[0], device_id="kiosk-01")
        # Until the consumer has subscribed the broker answers "no matching subscribers": try again.
        wait_for(lambda: kiosk.publish(f"{PREFIX}/devices/kiosk-01/captures", encode(capture)).value == 0, 60,
                 "the consumer to subscribe", interval=0.5)
        wait_for(lambda: kiosk.messages, 30, "the result")
        assert str(decode(kiosk.messages[0][1], Result).capture_id) == str(capture.capture_id)
        kiosk.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_uplink_restarts_in_the_same_process(broker, consumer, tmp_path: Path):
    up = Uplink(device_config(broker, "kiosk-a", tmp_path))
    up.start()
    first = up.send(Capture.from_image(sample_images(1)[0], device_id="kiosk-a"))
    wait_for(lambda: up.state(first)["state"] == "answered", 30, "the first answer")
    up.stop()
    assert up.stats()["connected"] is False
    second = up.send(Capture.from_image(sample_images(2)[1], device_id="kiosk-a"))  # queued while stopped
    assert up.state(second)["state"] == "queued"
    up.start()
    wait_for(lambda: up.state(second)["state"] == "answered", 30, "the second answer")
    up.close()
