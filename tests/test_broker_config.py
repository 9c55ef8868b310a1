"""The test broker runs the project's broker/ config: authentication and per-device ACL."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode


def _client(broker, user: str | None, password: str | None) -> tuple[mqtt.Client, ReasonCode | None]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if user:
        client.username_pw_set(user, password)
    result: dict[str, ReasonCode] = {}
    done = threading.Event()

    def on_connect(_c, _u, _f, reason, _p):
        result["rc"] = reason
        done.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    done.wait(5)
    return client, result.get("rc")


def test_anonymous_and_wrong_password_refused(broker):
    for user, pw in ((None, None), ("kiosk-a", "wrong")):
        client, rc = _client(broker, user, pw)
        client.loop_stop()
        assert rc is not None and rc.is_failure, rc


def test_device_reaches_cloud_on_its_own_topic(broker):
    received: list[bytes] = []
    got = threading.Event()
    cloud, rc = _client(broker, "cloud", broker.secret("cloud"))
    assert not rc.is_failure

    def on_message(_c, _u, msg):
        received.append(msg.payload)
        got.set()

    cloud.on_message = on_message
    cloud.subscribe("skinscan/v1/devices/+/captures", qos=1)
    device, rc = _client(broker, "kiosk-a", broker.secret("kiosk-a"))
    assert not rc.is_failure
    threading.Event().wait(0.3)
    device.publish("skinscan/v1/devices/kiosk-b/captures", b"spoofed", qos=1).wait_for_publish(5)
    device.publish("skinscan/v1/devices/kiosk-a/captures", b"mine", qos=1).wait_for_publish(5)
    assert got.wait(5)
    threading.Event().wait(0.3)
    assert received == [b"mine"]
    for c in (device, cloud):
        c.disconnect()
        c.loop_stop()
