"""One way to build a paho MQTT v5 client from ``[mqtt]`` settings (device and cloud alike)."""

from __future__ import annotations

import contextlib
import socket
import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from settings.schema import MqttConfig

# PUBACK reason 0x10: the broker took the message but nobody was subscribed, so it was dropped.
# For captures that means "not delivered": the outbox keeps the capture and retries.
NO_MATCHING_SUBSCRIBERS = 0x10


class MqttSetupError(RuntimeError):
    """Settings that cannot make a connection (missing secret or certificate file)."""


def password(cfg: MqttConfig) -> str:
    try:
        return cfg.resolved_password()
    except FileNotFoundError:
        raise MqttSetupError(
            f"mqtt.password_file {cfg.password_file} does not exist; create this account with "
            f"`skinscan-cloud add-device {cfg.username}` (or broker/run) and copy its secret here") from None


def build(cfg: MqttConfig, client_id: str, *, manual_ack: bool = False) -> mqtt.Client:
    """A client with a fixed id for a persistent session (clean start off), credentials and TLS."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         manual_ack=manual_ack)
    client.on_socket_open = _no_delay
    if cfg.username:
        client.username_pw_set(cfg.username, password(cfg))
    if cfg.tls:
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(cfg, name)
            if path is not None and not path.is_file():
                raise MqttSetupError(f"mqtt.{name} {path} does not exist")
        client.tls_set(ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                       certfile=str(cfg.cert_file) if cfg.cert_file else None,
                       keyfile=str(cfg.key_file) if cfg.key_file else None,
                       tls_version=ssl.PROTOCOL_TLS_CLIENT)
    return client


def _no_delay(_client: mqtt.Client, _userdata: object, sock: object) -> None:
    # paho leaves Nagle's algorithm on: a PUBACK or a small result would then wait for the
    # peer's delayed ACK (about 40 ms on Linux) behind an unacknowledged capture.
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect_properties(cfg: MqttConfig, receive_maximum: int | None = None) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = cfg.session_expiry_s
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    return props


def delivered(reason_code: object) -> bool:
    """Whether a PUBACK means the broker accepted the message for at least one subscriber."""
    value = getattr(reason_code, "value", reason_code)
    return isinstance(value, int) and value < 0x80 and value != NO_MATCHING_SUBSCRIBERS
