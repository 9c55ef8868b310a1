"""The feedback relay and the live feed through the real broker (broker/ config, ACL, accounts)."""

from __future__ import annotations

import queue
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.dashboard import create_app
from cloud.storage import Storage
from contract import Feedback, Result, Topics, decode, encode, utc_now
from settings import load_cloud
from tests.support.dashboard import LABELS, csrf, dashboard_env, login, make_users, seed_case
from tests.support.link import wait_for

TOPICS = Topics()


class Kiosk:
    """kiosk-a's own account with a persistent session, subscribed to its feedback topic."""

    def __init__(self, broker) -> None:
        self.received: queue.Queue[Feedback] = queue.Queue()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="kiosk-a", protocol=mqtt.MQTTv5)
        self.client.username_pw_set("kiosk-a", broker.secret("kiosk-a"))
        self.client.on_connect = lambda c, *_: c.subscribe(TOPICS.feedback("kiosk-a"), qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.received.put(decode(m.payload, Feedback))
        self.client.reconnect_delay_set(1, 1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def relay_app(broker, tmp_path: Path):
    env = dashboard_env(tmp_path, SKINSCAN_MQTT__PORT=str(broker.port), SKINSCAN_MQTT__USERNAME="cloud",
                        SKINSCAN_MQTT__PASSWORD_FILE=str(broker.data_dir / "credentials" / "cloud.secret"),
                        SKINSCAN_MQTT__KEEPALIVE_S="5")
    cfg = load_cloud(environ=env)
    storage = Storage(cfg.database.url, cfg.storage.image_dir)
    app = create_app(cfg, storage=storage, labels=LABELS)
    make_users(storage)
    state = app.extensions["skinscan_dashboard"]
    assert state.relay.subscribed.wait(10), "the relay did not connect and subscribe"
    yield app, storage, state
    state.stop()
    storage.close()


def _review(app, capture_id, label="melanoma", text="Please see a dermatologist this week."):
    client = app.test_client()
    login(client, "drhana")
    resp = client.post(f"/cases/{capture_id}/review", data={"csrf_token": csrf(client), "label": label,
                                                             "recommendation": text, "urgent": "on"})
    assert resp.status_code == 303


def test_feedback_reaches_the_device_and_every_dashboard(broker, relay_app):
    app, storage, state = relay_app
    kiosk = Kiosk(broker)
    try:
        cap, _ = seed_case(storage, 1, device="kiosk-a", cloud=("nevus", 0.7, False))
        events = state.hub.subscribe()
        _review(app, cap.capture_id)
        fb = kiosk.received.get(timeout=10)
        assert (fb.capture_id, fb.device_id, fb.label, fb.doctor, fb.urgent) == (
            cap.capture_id, "kiosk-a", "melanoma", "drhana", True)
        assert fb.recommendation == "Please see a dermatologist this week."
        wait_for(lambda: storage.reviews(str(cap.capture_id))[0]["relayed_at"], 10, "the review marked relayed")
        # the local event, then the same feedback echoed back over MQTT (other dashboard processes see that one)
        seen = [events.get(timeout=5), events.get(timeout=5)]
        assert {(e.kind, e.capture_id) for e in seen} == {("feedback", str(cap.capture_id))}
        # exactly one Feedback for the one review
        with pytest.raises(queue.Empty):
            kiosk.received.get(timeout=0.5)
    finally:
        kiosk.close()


def test_a_review_made_while_the_broker_is_down_is_relayed_when_it_returns(broker, relay_app):
    app, storage, state = relay_app
    kiosk = Kiosk(broker)
    kiosk.close()  # the kiosk is off; its persistent session keeps the subscription
    cap, _ = seed_case(storage, 2, device="kiosk-a", cloud=("nevus", 0.7, False))
    broker.stop()
    wait_for(lambda: not state.relay.connected.is_set(), 10, "the relay to notice the broker is gone")
    _review(app, cap.capture_id, label="nevus", text="Harmless; watch for changes.")
    assert storage.reviews(str(cap.capture_id))[0]["relayed_at"] is None
    broker.start()
    wait_for(lambda: storage.reviews(str(cap.capture_id))[0]["relayed_at"], 30, "the review relayed after restart")
    kiosk = Kiosk(broker)  # the kiosk comes back and gets what waited for it
    try:
        fb = kiosk.received.get(timeout=10)
        assert fb.capture_id == cap.capture_id and fb.label == "nevus"
    finally:
        kiosk.close()


def test_results_and_messages_on_mqtt_become_live_events(broker, relay_app):
    _, _, state = relay_app
    events = state.hub.subscribe()
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    publisher.username_pw_set("cloud", broker.secret("cloud"))
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    try:
        capture_id = uuid.uuid4()
        result = Result(capture_id=capture_id, device_id="kiosk-b", produced_at=utc_now(), model_version="v",
                        label="nevus", confidence=0.9, probabilities={"nevus": 0.9, "eczema": 0.1}, unsure=False)
        publisher.publish(TOPICS.dashboard_cases, encode(result), qos=1).wait_for_publish(5)
        event = events.get(timeout=5)
        assert (event.kind, event.capture_id) == ("case", str(capture_id))
        publisher.publish(TOPICS.dashboard_cases, b"not json", qos=1).wait_for_publish(5)  # ignored, no crash
        publisher.publish(TOPICS.dashboard_cases, encode(result), qos=1).wait_for_publish(5)
        assert events.get(timeout=5).kind == "case"
    finally:
        publisher.disconnect()
        publisher.loop_stop()
