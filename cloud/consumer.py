"""``skinscan-cloud consume``: captures in, stored cases and results out.

Each worker joins the MQTT v5 shared subscription ``$share/<group>/<prefix>/devices/+/captures``,
so N workers (on one machine or many) split the captures between them. Per capture:

1. validate with the contract (and that the topic's device sent it, and that the image decodes);
   anything else goes to the ``dead_letters`` table with the reason and is acknowledged, so one
   bad message never stops the consumer;
2. classify with the float model and test-time augmentation (flips), then store the image
   content-addressed and the case with its result in SQL in one transaction; if the case is
   already there (a redelivery), only count it and answer with the stored result;
3. publish the contract ``Result`` to the device's results topic (and, for a new case, the same
   compact message on ``dashboard/cases``), QoS 1;
4. when the broker has acknowledged those, acknowledge the capture (paho manual ack); the next
   capture is processed meanwhile. A crash at any step before this leaves
   the capture unacknowledged in this worker's persistent session, and the broker delivers it
   again: it is stored once and answered again.

A graceful stop (SIGTERM) leaves the share group first and finishes what it already holds; a
crashed worker must come back with the same ``worker_id`` (systemd restarts it) to get the
captures it held, which wait in its session for ``mqtt.session_expiry_s``.
"""

from __future__ import annotations

import logging
import queue
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from sqlalchemy.exc import DBAPIError

from cloud.storage import Storage
from contract import Capture, ContractError, Result, Topics, decode, encode, utc_now
from device import imageio, mqttclient, preprocess
from device.inference import Classifier
from settings.schema import CloudConfig

log = logging.getLogger(__name__)

DB_RETRY_S = 2.0


def default_worker_id() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "worker"


def tta_views(pixels: np.ndarray) -> list[np.ndarray]:
    """The model input and its mirror images: a lesion has no preferred orientation."""
    return [pixels, np.ascontiguousarray(pixels[:, ::-1]), np.ascontiguousarray(pixels[::-1, :])]


@dataclass
class Outcome:
    kind: str  # "new" | "repeat" | "dead" | "unanswered"
    capture_id: str | None = None
    reason: str | None = None
    mids: list[int] = field(default_factory=list)  # result publishes to see acknowledged


@dataclass
class _Answer:
    capture_mid: int
    qos: int
    generation: int
    mids: set[int]


class Consumer:
    def __init__(self, cfg: CloudConfig, *, worker_id: str | None = None, storage: Storage | None = None,
                 classifier: Classifier | None = None) -> None:
        self.cfg = cfg
        self.topics = Topics(cfg.mqtt.topic_prefix)
        self.worker_id = worker_id or cfg.consumer.worker_id or default_worker_id()
        self.storage = storage or Storage(cfg.database.url, cfg.storage.image_dir)
        self.classifier = classifier or Classifier(cfg.model.manifest, role="float", threads=cfg.model.threads)
        self.subscription = self.topics.shared(cfg.consumer.share_group, self.topics.all_devices("captures"))
        self.ready = threading.Event()  # subscribed: captures will arrive
        self.counts = {"new": 0, "repeat": 0, "dead": 0, "unanswered": 0}
        # Captures in, and PUBACKs for our results: one queue, one processing thread.
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._generation = 0  # bumped per connection: an ack is only valid on the connection that delivered
        # Result publish mid -> the capture it answers; the capture is acknowledged when all its
        # results are. Not waiting in line for each PUBACK lets the next capture start meanwhile.
        self._awaiting: dict[int, _Answer] = {}
        self._client: mqtt.Client | None = None

    # -- connection -------------------------------------------------------------------------

    def start(self) -> None:
        self.storage.migrate()
        cfg = self.cfg.mqtt
        client = mqttclient.build(cfg, client_id=f"consumer-{self.worker_id}", manual_ack=True)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        # Clean start off + session expiry: captures delivered but not acknowledged when this worker
        # stops, and captures for its share while it is away, wait for it at the broker.
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s, clean_start=False,
                             properties=mqttclient.connect_properties(cfg, self.cfg.consumer.max_in_flight))
        self._client = client
        client.loop_start()
        log.info("consumer %s connecting to %s:%d for %s", self.worker_id, cfg.host, cfg.port, self.subscription)

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        self.ready.clear()

    def run(self, stop: threading.Event) -> None:
        """Process captures until ``stop`` is set."""
        self.start()
        try:
            while not stop.is_set():
                self._step(stop, timeout=0.5)
            self._drain()
        finally:
            self.stop()
            self.storage.close()

    def _step(self, stop: threading.Event, timeout: float) -> bool:
        """Handle one event (a capture, or the broker's acknowledgement of a result); False if none came."""
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            return False
        if event[0] == "message":
            self._handle(event[1], event[2], stop)
        elif event[0] == "published":
            self._published(event[1])
        else:  # reconnected
            self._awaiting = {m: a for m, a in self._awaiting.items() if a.generation == self._generation}
        return True

    def _drain(self, quiet_s: float = 1.0, limit_s: float = 30.0) -> None:
        """Graceful stop: leave the share group, then finish what the broker already handed us.

        Without this, a stopped worker's persistent session would stay in the group and keep
        receiving its share of captures until it came back."""
        client = self._client
        if client is None or not client.is_connected():
            return
        client.unsubscribe(self.subscription)
        give_up = threading.Event()
        timer = threading.Timer(limit_s, give_up.set)
        timer.start()
        last = time.monotonic()
        try:
            while not give_up.is_set() and client.is_connected() and (
                    self._awaiting or time.monotonic() - last < quiet_s):
                if self._step(give_up, timeout=0.1):
                    last = time.monotonic()
        finally:
            timer.cancel()

    def _on_connect(self, client: mqtt.Client, _u: object, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker refused consumer %s: %s (user %r); retrying", self.worker_id, reason,
                      self.cfg.mqtt.username)
            return
        self._generation += 1
        # Results published on the old connection are re-sent by paho, but the captures they
        # answer will be redelivered and answered again: stop waiting to acknowledge those.
        self._events.put(("reconnected",))
        client.subscribe(self.subscription, qos=1)
        log.info("consumer %s connected (session present: %s)", self.worker_id, flags.session_present)

    def _on_subscribe(self, _c: mqtt.Client, _u: object, _mid: int, reasons: list[Any], _p: Any) -> None:
        if any(r.is_failure for r in reasons):
            log.error("subscription to %s refused: %s", self.subscription, reasons)
            return
        log.info("consumer %s ready on %s", self.worker_id, self.subscription)
        self.ready.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: Any, reason: Any, _p: Any) -> None:
        self.ready.clear()
        log.warning("consumer %s lost the broker (%s)", self.worker_id, reason)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        self._events.put(("message", self._generation, msg))

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, _reason: Any, _p: Any) -> None:
        # Under paho's lock: hand over to the processing thread, which owns ``_awaiting``.
        self._events.put(("published", mid))

    # -- one capture --------------------------------------------------------------------------

    def _handle(self, generation: int, msg: mqtt.MQTTMessage, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                outcome = self.process(msg.topic, msg.payload)
                break
            except DBAPIError as exc:
                # The database is down or locked: keep the capture unacknowledged and try again.
                log.error("database error on a capture from %s (%s); retrying in %.0f s", msg.topic,
                          exc.__class__.__name__, DB_RETRY_S)
                stop.wait(DB_RETRY_S)
        else:
            return
        self.counts[outcome.kind] += 1
        if outcome.kind == "unanswered" or msg.qos == 0:
            return
        answer = _Answer(msg.mid, msg.qos, generation, set(outcome.mids))
        if not answer.mids:  # dead letter: nothing to wait for
            self._ack(answer)
        for mid in answer.mids:
            self._awaiting[mid] = answer

    def _published(self, mid: int) -> None:
        answer = self._awaiting.pop(mid, None)
        if answer is None:
            return
        answer.mids.discard(mid)
        if not answer.mids:
            self._ack(answer)

    def _ack(self, answer: _Answer) -> None:
        client = self._client
        if client is not None and answer.generation == self._generation:
            client.ack(answer.capture_mid, answer.qos)

    def process(self, topic: str, payload: bytes) -> Outcome:
        """Validate, store, classify, answer. Returns how it went; DB errors propagate (retry)."""
        try:
            capture, rgb = self._validate(topic, payload)
        except (ContractError, imageio.ImageError) as exc:
            reason = str(exc)
            row = self.storage.dead_letter(topic, reason, payload)
            log.warning("dead letter %d from %s: %s", row, topic, reason)
            return Outcome("dead", reason=reason)
        capture_id = str(capture.capture_id)
        try:
            result = self.classify(capture, rgb)
        except (ValueError, RuntimeError) as exc:
            reason = f"classification failed: {exc}"
            self.storage.dead_letter(topic, reason, payload)
            log.exception("capture %s: %s", capture_id, reason)
            return Outcome("dead", capture_id, reason)
        # One transaction for the case and its result. A redelivery (or another worker that got
        # there first) only counts, and the device is answered with the stored result, so it never
        # sees two different answers. Classifying first saves a read per capture; redeliveries are rare.
        new = self.storage.record_capture(capture, result)
        if not new:
            result = self.storage.result(capture_id) or result
        mids = self._answer(result, to_dashboard=new)
        if mids is None:
            return Outcome("unanswered", capture_id)  # not acknowledged: the broker delivers it again
        log.info("capture %s from %s: %s (%.2f)%s", capture_id, capture.device_id, result.label, result.confidence,
                 "" if new else " [redelivered]")
        return Outcome("new" if new else "repeat", capture_id, mids=mids)

    def _validate(self, topic: str, payload: bytes) -> tuple[Capture, np.ndarray]:
        parsed = self.topics.parse(topic)
        if parsed.kind != "captures":
            raise ContractError("topic", f"{topic!r} is not a captures topic")
        capture = decode(payload, Capture)
        if capture.device_id != parsed.device_id:
            raise ContractError("device_id", f"capture says {capture.device_id!r} but came on {topic!r}")
        rgb = imageio.decode(capture.image, name=f"image of capture {capture.capture_id}")
        return capture, rgb

    def classify(self, capture: Capture, rgb: np.ndarray) -> Result:
        pixels = preprocess.model_input(rgb, self.classifier.input_size)
        views = tta_views(pixels) if self.cfg.consumer.tta else [pixels]
        p = self.classifier.predict_pixels(views)
        return Result(capture_id=capture.capture_id, device_id=capture.device_id, produced_at=utc_now(),
                      model_version=p.model_version, label=p.label, confidence=p.confidence,
                      probabilities=p.probabilities, unsure=p.unsure)

    def _answer(self, result: Result, to_dashboard: bool) -> list[int] | None:
        """Publish the result (QoS 1); the message ids to wait for, or None if it could not be queued."""
        client = self._client
        if client is None:
            return None
        payload = encode(result)
        infos = [client.publish(self.topics.results(result.device_id), payload, qos=1)]
        if to_dashboard:
            infos.append(client.publish(self.topics.dashboard_cases, payload, qos=1))
        if any(info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN) for info in infos):
            log.warning("result for %s not queued (%s); the capture will be redelivered", result.capture_id,
                        [mqtt.error_string(i.rc) for i in infos])
            return None
        return [info.mid for info in infos]
