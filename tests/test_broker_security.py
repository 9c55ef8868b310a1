"""Broker accounts and ACL: each device reaches only its own topics; TLS with the generated certificates;
``skinscan-cloud add-device`` gives a new device its own secret without restarting the broker."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.support.broker import ROOT, Broker, free_port

PREFIX = "skinscan/v1"


class Probe:
    """A paho v5 client that records CONNACK, SUBACK and PUBACK reason codes and received messages."""

    def __init__(self, port: int, user: str | None, password: str | None, tls: dict | None = None) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if user:
            self.client.username_pw_set(user, password)
        if tls:
            self.client.tls_set(**tls, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.connack = None
        self.connected = threading.Event()
        self.subacks: dict[int, list] = {}
        self.pubacks: dict[int, object] = {}
        self.messages: list[tuple[str, bytes]] = []
        self._acked = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload))
        # A refused TLS handshake ends in a disconnect without any CONNACK: stop waiting then too.
        self.client.on_disconnect = lambda *_: self.connected.set()
        self.error: Exception | None = None
        try:
            self.client.connect("127.0.0.1", port)
        except (OSError, ssl.SSLError) as exc:
            self.error = exc
            return
        self.client.loop_start()
        self.connected.wait(5)

    def _on_connect(self, _c, _u, _f, reason, _p) -> None:
        self.connack = reason
        self.connected.set()

    def _on_subscribe(self, _c, _u, mid, reasons, _p) -> None:
        with self._acked:
            self.subacks[mid] = reasons
            self._acked.notify_all()

    def _on_publish(self, _c, _u, mid, reason, _p) -> None:
        with self._acked:
            self.pubacks[mid] = reason
            self._acked.notify_all()

    @property
    def ok(self) -> bool:
        return self.error is None and self.connack is not None and not self.connack.is_failure

    def subscribe(self, topic: str):
        _, mid = self.client.subscribe(topic, qos=1)
        with self._acked:
            self._acked.wait_for(lambda: mid in self.subacks, 5)
        return self.subacks[mid][0]

    def publish(self, topic: str, payload: bytes = b"x", retain: bool = False):
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._acked:
            self._acked.wait_for(lambda: info.mid in self.pubacks, 5)
        return self.pubacks[info.mid]

    def close(self) -> None:
        if self.error is None:
            self.client.disconnect()
            self.client.loop_stop()


def _probe(broker: Broker, user: str, **kw) -> Probe:
    return Probe(broker.port, user, broker.secret(user), **kw)


def test_device_cannot_read_or_write_another_devices_topics(broker):
    a, b, cloud = _probe(broker, "kiosk-a"), _probe(broker, "kiosk-b"), _probe(broker, "cloud")
    try:
        assert a.ok and b.ok and cloud.ok
        # Mosquitto 2 grants any SUBSCRIBE and enforces "read" per message: kiosk-a asks for
        # kiosk-b's topics (and everything) and must still receive nothing of kiosk-b's.
        for topic in (f"{PREFIX}/devices/kiosk-b/results", f"{PREFIX}/devices/kiosk-b/feedback",
                      f"{PREFIX}/devices/kiosk-b/captures", f"{PREFIX}/devices/+/captures", f"{PREFIX}/#"):
            a.subscribe(topic)
        b.subscribe(f"{PREFIX}/devices/kiosk-b/results")
        cloud.subscribe(f"{PREFIX}/devices/+/captures")
        # Publishing as another device, or forging cloud messages, is refused (PUBACK 0x87).
        for topic in (f"{PREFIX}/devices/kiosk-b/captures", f"{PREFIX}/devices/kiosk-b/status",
                      f"{PREFIX}/devices/kiosk-a/results", f"{PREFIX}/models/current", f"{PREFIX}/dashboard/cases"):
            assert a.publish(topic, b"forged").is_failure, topic
        assert not a.publish(f"{PREFIX}/devices/kiosk-a/captures", b"mine").is_failure
        assert not b.publish(f"{PREFIX}/devices/kiosk-b/captures", b"b's capture").is_failure
        for kind in ("results", "feedback"):
            assert not cloud.publish(f"{PREFIX}/devices/kiosk-b/{kind}", b"for b").is_failure
        assert not cloud.publish(f"{PREFIX}/devices/kiosk-a/results", b"for a").is_failure
        threading.Event().wait(0.5)
        assert (f"{PREFIX}/devices/kiosk-b/results", b"for b") in b.messages
        assert a.messages == [(f"{PREFIX}/devices/kiosk-a/results", b"for a")]
        assert sorted(p for t, p in cloud.messages) == [b"b's capture", b"mine"]
    finally:
        for p in (a, b, cloud):
            p.close()


def test_anonymous_wrong_password_and_other_devices_secret_refused(broker):
    for user, password in ((None, None), ("kiosk-a", "wrong"), ("kiosk-a", broker.secret("kiosk-b")),
                           ("nobody", broker.secret("kiosk-a"))):
        probe = Probe(broker.port, user, password)
        assert not probe.ok and probe.connack is not None and probe.connack.is_failure, (user, probe.connack)
        probe.close()


def test_dashboard_account_reads_only_dashboard_events(broker):
    dash = _probe(broker, "dashboard")
    try:
        assert dash.ok
        dash.subscribe(f"{PREFIX}/dashboard/cases")
        dash.subscribe(f"{PREFIX}/devices/+/captures")
        assert dash.publish(f"{PREFIX}/dashboard/cases").is_failure
        kiosk, cloud = _probe(broker, "kiosk-a"), _probe(broker, "cloud")
        assert not kiosk.publish(f"{PREFIX}/devices/kiosk-a/captures", b"capture").is_failure
        assert not cloud.publish(f"{PREFIX}/dashboard/cases", b"event").is_failure
        threading.Event().wait(0.5)
        assert dash.messages == [(f"{PREFIX}/dashboard/cases", b"event")]
        kiosk.close()
        cloud.close()
    finally:
        dash.close()


@pytest.fixture
def tls_broker(tmp_path: Path):
    b = Broker(tmp_path / "broker", devices=["kiosk-a", "kiosk-b"], tls_port=free_port())
    b.data_dir.mkdir()
    b.start()
    yield b
    b.stop()


def test_tls_listener_with_generated_certificates(tls_broker, tmp_path: Path):
    tls = tls_broker.data_dir / "tls"
    good = {"ca_certs": str(tls / "ca.crt"), "certfile": str(tls / "clients" / "kiosk-a.crt"),
            "keyfile": str(tls / "clients" / "kiosk-a.key")}
    probe = Probe(tls_broker.tls_port, "kiosk-a", tls_broker.secret("kiosk-a"), tls=good)
    try:
        assert probe.ok, (probe.error, probe.connack)
        assert not probe.subscribe(f"{PREFIX}/devices/kiosk-a/results").is_failure
        assert not probe.publish(f"{PREFIX}/devices/kiosk-a/status", b"up").is_failure
    finally:
        probe.close()
    # Without a client certificate the handshake fails (mutual TLS).
    no_cert = Probe(tls_broker.tls_port, "kiosk-a", tls_broker.secret("kiosk-a"), tls={"ca_certs": good["ca_certs"]})
    assert not no_cert.ok
    no_cert.close()
    # A client certificate from another CA is refused, and so is the server by a client trusting another CA.
    other = tmp_path / "other-ca"
    subprocess.run([str(ROOT / "broker" / "make-certs"), "--dir", str(other), "kiosk-a"], check=True,
                   capture_output=True)
    foreign = {**good, "certfile": str(other / "clients" / "kiosk-a.crt"),
               "keyfile": str(other / "clients" / "kiosk-a.key")}
    assert not Probe(tls_broker.tls_port, "kiosk-a", tls_broker.secret("kiosk-a"), tls=foreign).ok
    wrong_ca = {**good, "ca_certs": str(other / "ca.crt")}
    probe = Probe(tls_broker.tls_port, "kiosk-a", tls_broker.secret("kiosk-a"), tls=wrong_ca)
    assert isinstance(probe.error, ssl.SSLError)
    # The certificate is not a password: a right certificate with a wrong password is refused.
    probe = Probe(tls_broker.tls_port, "kiosk-a", "wrong", tls=good)
    assert not probe.ok
    probe.close()


def test_make_certs_keeps_an_existing_ca(tmp_path: Path):
    run = [str(ROOT / "broker" / "make-certs"), "--dir", str(tmp_path / "tls")]
    subprocess.run([*run, "kiosk-a"], check=True, capture_output=True)
    ca = (tmp_path / "tls" / "ca.crt").read_bytes()
    subprocess.run([*run, "kiosk-b"], check=True, capture_output=True)
    assert (tmp_path / "tls" / "ca.crt").read_bytes() == ca
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "tls" / "ca.crt"),
                             str(tmp_path / "tls" / "clients" / "kiosk-a.crt"),
                             str(tmp_path / "tls" / "clients" / "kiosk-b.crt"), str(tmp_path / "tls" / "server.crt")],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    bad = subprocess.run([*run, "Bad Name"], capture_output=True, text=True)
    assert bad.returncode == 2 and "bad client name" in bad.stderr


def _add_device(broker: Broker, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cloud.cli", "add-device", "--broker-dir", str(broker.data_dir),
                           *args], capture_output=True, text=True, cwd=ROOT)


def test_add_device_creates_its_own_secret_and_reloads_the_running_broker(broker):
    done = _add_device(broker, "kiosk-c", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["broker_reloaded"] is True and info["broker_pid"] == broker.proc.pid
    secret_file = Path(info["secret_file"])
    assert secret_file.stat().st_mode & 0o077 == 0
    secret = secret_file.read_text().strip()
    assert len(secret) >= 32 and secret not in {broker.secret(u) for u in ("kiosk-a", "kiosk-b", "cloud")}
    assert secret not in (broker.data_dir / "passwd").read_text()  # only the hash is stored
    threading.Event().wait(0.5)  # SIGHUP is asynchronous
    c = Probe(broker.port, "kiosk-c", secret)
    try:
        assert c.ok, c.connack  # no broker restart needed
        assert not c.publish(f"{PREFIX}/devices/kiosk-c/captures").is_failure
        assert c.publish(f"{PREFIX}/devices/kiosk-a/captures").is_failure
    finally:
        c.close()
    assert not Probe(broker.port, "kiosk-c", broker.secret("kiosk-a")).ok

    again = _add_device(broker, "kiosk-c")
    assert again.returncode == 1 and "already has an account; use --rotate" in again.stderr
    rotated = _add_device(broker, "kiosk-c", "--rotate")
    assert rotated.returncode == 0, rotated.stderr
    threading.Event().wait(0.5)
    assert not Probe(broker.port, "kiosk-c", secret).ok
    assert Probe(broker.port, "kiosk-c", secret_file.read_text().strip()).ok
    # The other accounts are untouched.
    assert Probe(broker.port, "kiosk-a", broker.secret("kiosk-a")).ok


@pytest.mark.parametrize(("name", "message"), [
    ("cloud", "reserved service account"),
    ("dashboard", "reserved service account"),
    ("Kiosk 9", "device_id: must be"),
])
def test_add_device_refuses_reserved_and_invalid_names(broker, name, message):
    before = (broker.data_dir / "passwd").read_text()
    done = _add_device(broker, name)
    assert done.returncode == 1 and message in done.stderr
    assert (broker.data_dir / "passwd").read_text() == before


def test_broker_run_refuses_a_device_named_like_a_service_account(tmp_path: Path):
    done = subprocess.run([str(ROOT / "broker" / "run"), "--data-dir", str(tmp_path), "--port", str(free_port()),
                           "--device", "cloud"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "reserved service account" in done.stderr
