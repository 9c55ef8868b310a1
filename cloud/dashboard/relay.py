"""The dashboard's MQTT side: relays doctors' feedback to devices and feeds the live-update hub.

Durable relay: a review is first stored (``reviews.relayed_at`` NULL); a flusher thread publishes
every unrelayed review as a contract ``Feedback`` to the device's ``feedback`` topic (QoS 1) and
marks it relayed only when the broker's PUBACK says it was delivered (the device's persistent
session counts as a subscriber even while the kiosk is off). A broker outage, a refused publish or
a dashboard restart leaves the review unrelayed and it is sent again later: nothing is lost, and a
duplicate is harmless (the device keeps the newest feedback per capture).

Live feed: the same client subscribes to ``dashboard/cases`` (new results from the consumers,
feedback from any dashboard process) and ``cases/+/messages`` (chat), and turns each into a hub
event. It logs in as the ``cloud`` account (``[mqtt]`` of the cloud config) with a clean session:
browsers resynchronise over HTTP whenever they reconnect, so nothing needs to be queued for it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import OrderedDict
from typing import Any

import paho.mqtt.client as mqtt

from cloud.dashboard.events import Hub
from cloud.storage import Storage
from contract import ChatMessage, ContractError, Feedback, Result, Topics, decode, encode
from device import mqttclient
from settings.schema import CloudConfig

log = logging.getLogger(__name__)

EARLY_KEEP = 1000
RETRY_S = 30.0  # unrelayed reviews (e.g. refused: no subscriber) are tried again this often


class Relay:
    def __init__(self, cfg: CloudConfig, storage: Storage, hub: Hub, client_id: str | None = None) -> None:
        self.cfg = cfg
        self.storage = storage
        self.hub = hub
        self.topics = Topics(cfg.mqtt.topic_prefix)
        self.client_id = client_id or f"dashboard-{socket.gethostname()[:30]}-{os.getpid()}"
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # mid -> review id
        self._sending: set[int] = set()  # review ids published, PUBACK pending
        self._early: OrderedDict[int, Any] = OrderedDict()  # PUBACKs seen before their mid was recorded
        self._client: mqtt.Client | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        client = mqttclient.build(self.cfg.mqtt, self.client_id)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = lambda *_: self.subscribed.set()
        client.reconnect_delay_set(1, 30)
        client.connect_async(self.cfg.mqtt.host, self.cfg.mqtt.port, keepalive=self.cfg.mqtt.keepalive_s,
                             clean_start=True)
        self._client = client
        client.loop_start()
        self._thread = threading.Thread(target=self._flush_forever, name="feedback-relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        self.connected.clear()

    # -- what the views call ----------------------------------------------------------------

    def feedback_stored(self, feedback: Feedback) -> None:
        """A review was stored: relay it now (and let every dashboard process know)."""
        self._wake.set()
        self._publish(self.topics.dashboard_cases, encode(feedback))

    def message_stored(self, message: ChatMessage) -> None:
        self._publish(self.topics.case_messages(str(message.capture_id)), encode(message))

    def _publish(self, topic: str, payload: bytes) -> None:
        client = self._client
        if client is not None and self.connected.is_set():
            client.publish(topic, payload, qos=1)

    # -- relay ------------------------------------------------------------------------------

    def _flush_forever(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(RETRY_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self.connected.is_set():
                try:
                    self._flush()
                except Exception:  # a database hiccup: try again at the next wake-up
                    log.exception("relaying feedback failed; retrying")

    def _flush(self) -> None:
        client = self._client
        for review_id, feedback in self.storage.unrelayed_feedback():
            with self._lock:
                if review_id in self._sending:
                    continue
                self._sending.add(review_id)
            # Published outside the lock (paho takes its own locks); a PUBACK that beats the
            # bookkeeping below waits in _early.
            info = client.publish(self.topics.feedback(feedback.device_id), encode(feedback), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.warning("feedback for %s not queued: %s", feedback.capture_id, mqtt.error_string(info.rc))
                with self._lock:
                    self._sending.discard(review_id)
                return
            with self._lock:
                early = self._early.pop(info.mid, None)
                if early is None:
                    self._inflight[info.mid] = review_id
            if early is not None:
                self._acknowledged(review_id, early)

    # -- paho callbacks (network thread) ------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: object, _flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the dashboard relay: %s", reason)
            return
        client.subscribe([(self.topics.dashboard_cases, 1), (self.topics.case_messages("+"), 1)])
        with self._lock:
            self._inflight.clear()
            self._sending.clear()
            self._early.clear()
        self.connected.set()
        self._wake.set()
        log.info("dashboard relay connected to %s:%d", self.cfg.mqtt.host, self.cfg.mqtt.port)

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: Any, reason: Any, _p: Any) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("dashboard relay lost the broker (%s); reviews wait in the database", reason)

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, reason: Any, _p: Any) -> None:
        with self._lock:
            review_id = self._inflight.pop(mid, None)
            if review_id is None:
                self._early[mid] = reason
                while len(self._early) > EARLY_KEEP:  # acknowledgements of other publishes
                    self._early.popitem(last=False)
                return
        self._acknowledged(review_id, reason)

    def _acknowledged(self, review_id: int, reason: Any) -> None:
        with self._lock:
            self._sending.discard(review_id)
        if mqttclient.delivered(reason):
            try:
                self.storage.mark_relayed(review_id)
            except Exception:  # stays unrelayed and is sent once more: harmless
                log.exception("could not mark review %d relayed", review_id)
        else:
            log.warning("broker did not deliver feedback (review %d): %s; retrying in %.0f s", review_id,
                        reason, RETRY_S)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            message = decode(msg.payload)
        except ContractError as exc:
            log.warning("ignoring a malformed message on %s: %s", msg.topic, exc)
            return
        kind = {Result: "case", Feedback: "feedback", ChatMessage: "message"}.get(type(message))
        if kind is not None:
            self.hub.emit(kind, str(message.capture_id))
