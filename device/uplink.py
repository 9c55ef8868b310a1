"""The kiosk's link to the cloud: drains the outbox over MQTT and records what comes back.

One :class:`Uplink` per outbox (a file lock makes a second one fail fast, since two clients with
the same id would keep kicking each other off the broker). It owns:

* a paho MQTT v5 client with client id = ``device_id``, clean start off and a session expiry,
  so results published while the kiosk is off wait for it at the broker;
* a flusher thread that publishes queued captures (QoS 1, a bounded window in flight) and marks
  each one sent only when its PUBACK reports success. A refused publish (e.g. no cloud consumer
  subscribed yet) stays queued and is retried with a doubling backoff; paho itself reconnects
  with a doubling delay (``outbox.retry_initial_s`` .. ``retry_max_s``) and re-sends what was in
  flight. A sent capture whose result is overdue (``outbox.answer_timeout_s``) is queued again;
* the retained ``status`` topic: ``online`` with queued/sent counts and the model version on connect,
  every ``outbox.stats_interval_s`` and whenever the model changes; ``offline`` as the last will and on
  a clean stop;
* with an :class:`device.updater.Updater`, the retained ``models/current`` announcement: every payload
  is handed to ``Updater.submit`` (a worker thread downloads and swaps; this network thread never
  blocks). The broker sends the retained announcement on every (re)subscribe, so a kiosk that was
  offline when a model was promoted catches up as soon as it connects.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import threading
import time
from typing import IO, TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from contract import Capture, ContractError, DeviceStatus, Feedback, Result, Topics, decode, encode, utc_now
from device import mqttclient
from device.outbox import Outbox, OutboxError
from settings.schema import DeviceConfig

if TYPE_CHECKING:
    from device.updater import Updater

log = logging.getLogger(__name__)

WINDOW = 16  # captures in flight at once; below Mosquitto's max_inflight_messages (20)
STALE_INFLIGHT_S = 60.0  # an unacknowledged publish older than this (while connected) is sent again
_WAKE = object()


class UplinkBusy(OutboxError):
    """Another process already runs the uplink for this outbox."""


class Uplink:
    def __init__(self, cfg: DeviceConfig, updater: Updater | None = None) -> None:
        self.cfg = cfg
        self.updater = updater
        self.device_id = cfg.device_id
        self.topics = Topics(cfg.mqtt.topic_prefix)
        self.outbox = Outbox(cfg.outbox.path, cfg.outbox.max_bytes)
        self._events: queue.Queue[Any] = queue.Queue()
        self._inflight: dict[int, tuple[str, float]] = {}  # mid -> (capture_id, published at); flusher only
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._client: mqtt.Client | None = None
        self._thread: threading.Thread | None = None
        self._lock_file: IO[str] | None = None
        self._started = time.monotonic()
        self.last_error: str | None = None
        self._factory_version = None if updater is not None else self._manifest_version()
        self._announced_version: str | None = None  # the model_version last published in status (flusher)

    def _manifest_version(self) -> str | None:
        from models import manifest

        try:
            return manifest.load(self.cfg.model.manifest).version
        except manifest.ManifestError:
            return None

    @property
    def model_version(self) -> str | None:
        """The model serving now: the updater's slot, else the configured model.json's version."""
        return self.updater.slot.version if self.updater is not None else self._factory_version

    # -- the interface the kiosk calls ----------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        cfg = self.cfg.mqtt
        if cfg.username and cfg.username != self.device_id:
            # The broker's ACL names a device's topics by its username (%u): any other name is refused.
            raise mqttclient.MqttSetupError(
                f"mqtt.username is {cfg.username!r} but device_id is {self.device_id!r}; a kiosk's broker "
                f"account must be named by its device_id (leave mqtt.username empty to use it)")
        if not cfg.username:
            cfg = cfg.model_copy(update={"username": self.device_id})
        self._take_lock()
        try:
            client = mqttclient.build(cfg, client_id=self.device_id)
        except BaseException:
            self._release_lock()
            raise
        # Whatever a previous client had in flight went with it (those captures are still queued),
        # and its late acknowledgements must not be matched against the new client's message ids.
        self._inflight.clear()
        self._events = queue.Queue()
        client.will_set(self.topics.status(self.device_id), self._status("offline"), qos=1, retain=True)
        client.reconnect_delay_set(max(1, round(self.cfg.outbox.retry_initial_s)),
                                   max(1, round(self.cfg.outbox.retry_max_s)))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s, clean_start=False,
                             properties=mqttclient.connect_properties(cfg))
        self._client = client
        self._stopping.clear()
        self._started = time.monotonic()
        client.loop_start()
        self._thread = threading.Thread(target=self._flush_forever, name="outbox-flusher", daemon=True)
        self._thread.start()
        log.info("uplink for %s started (broker %s:%d)", self.device_id, cfg.host, cfg.port)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending; what is still queued stays in the outbox for next time."""
        if self._thread is None:
            return
        self._stopping.set()
        self._events.put(_WAKE)
        self._thread.join(timeout)
        client = self._client
        if client is not None:
            if self._connected.is_set():
                # A clean disconnect suppresses the will, so say "offline" ourselves.
                info = client.publish(self.topics.status(self.device_id), self._status("offline"), qos=1, retain=True)
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(min(timeout, 2.0))
            client.disconnect()
            client.loop_stop()
        self._thread = None
        self._client = None
        self._connected.clear()
        self._release_lock()

    def send(self, capture: Capture) -> str:
        """Queue a capture durably and return its capture_id; raises OutboxFull when the outbox is full."""
        if capture.device_id != self.device_id:
            raise ValueError(f"capture is for device {capture.device_id!r}, this kiosk is {self.device_id!r}")
        capture_id = self.outbox.put(capture)
        self._events.put(_WAKE)
        return capture_id

    def state(self, capture_id: str) -> dict[str, Any]:
        """``state`` ("queued"|"sent"|"answered"|"unknown"), ``result`` and ``feedback`` (contract messages or None)."""
        return self.outbox.state(str(capture_id))

    def stats(self) -> dict[str, Any]:
        counts = self.outbox.counts()
        return {**counts, "connected": self._connected.is_set(), "last_error": self.last_error}

    def close(self) -> None:
        self.stop()
        self.outbox.close()

    # -- one uplink per outbox --------------------------------------------------------------

    def _take_lock(self) -> None:
        path = self.outbox.path.with_name(self.outbox.path.name + ".lock")
        fh = open(path, "a+")  # noqa: SIM115 - held for the uplink's lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise UplinkBusy(f"another uplink (pid {holder}) is already sending from {self.outbox.path}; "
                             f"run either the kiosk or `skinscan-device uplink`, not both") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_file = fh

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # -- paho callbacks (network thread) ----------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: object, flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            log.error("%s (user %r); retrying", self.last_error, self.cfg.mqtt.username)
            return
        log.info("connected to the broker (session present: %s)", flags.session_present)
        subscriptions = [(self.topics.results(self.device_id), 1), (self.topics.feedback(self.device_id), 1)]
        if self.updater is not None:
            subscriptions.append((self.topics.model_current, 1))
        client.subscribe(subscriptions)
        client.publish(self.topics.status(self.device_id), self._status("online"), qos=1, retain=True)
        self.last_error = None
        self._connected.set()
        self._events.put(_WAKE)

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: object) -> None:
        self.last_error = f"cannot reach the broker at {self.cfg.mqtt.host}:{self.cfg.mqtt.port}"
        log.warning("%s; captures stay queued, retrying", self.last_error)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: object, _flags: Any, reason: Any, _props: Any) -> None:
        self._connected.clear()
        if not self._stopping.is_set():
            self.last_error = f"disconnected: {reason}"
            log.warning("lost the broker (%s); captures stay queued", reason)

    def _on_publish(self, _client: mqtt.Client, _userdata: object, mid: int, reason: Any, _props: Any) -> None:
        # Called under paho's lock: hand over to the flusher, which owns the in-flight map.
        self._events.put((mid, reason))

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.topics.model_current:
            if self.updater is not None:
                try:
                    self.updater.submit(msg.payload)  # queued for the updater's thread; a newer one replaces it
                except RuntimeError as exc:  # closed while stopping
                    log.info("model announcement ignored: %s", exc)
            return
        # Recorded before this returns, i.e. before paho acknowledges: a crash redelivers it.
        try:
            kind = self.topics.parse(msg.topic).kind
            reply = decode(msg.payload, Result if kind == "results" else Feedback)
            if reply.device_id != self.device_id:
                raise ContractError("device_id", f"reply is for {reply.device_id!r}")
            if isinstance(reply, Result):
                known = self.outbox.record_result(reply)
            else:
                known = self.outbox.record_feedback(reply)
        except ContractError as exc:
            log.warning("ignored a malformed reply on %s: %s", msg.topic, exc)
            return
        if not known:
            log.info("%s for capture %s, which this kiosk no longer holds", kind, reply.capture_id)

    # -- flusher thread ---------------------------------------------------------------------

    def _flush_forever(self) -> None:
        next_stats = time.monotonic() + self.cfg.outbox.stats_interval_s
        next_prune = 0.0
        next_overdue = 0.0
        while not self._stopping.is_set():
            try:
                events = [self._events.get(timeout=0.25)]
            except queue.Empty:
                events = []
            while True:
                try:
                    events.append(self._events.get_nowait())
                except queue.Empty:
                    break
            try:
                self._handle_acks([e for e in events if e is not _WAKE])
                if self._connected.is_set() and not self._stopping.is_set():
                    self._publish_due()
                now = time.monotonic()
                if (now >= next_stats or self.model_version != self._announced_version) and \
                        self._connected.is_set() and self._client is not None:
                    self._client.publish(self.topics.status(self.device_id), self._status("online"), qos=1,
                                         retain=True)
                    next_stats = now + self.cfg.outbox.stats_interval_s
                if now >= next_overdue:
                    late = self.outbox.requeue_unanswered(self.cfg.outbox.answer_timeout_s)
                    if late:
                        log.warning("no answer for %d sent capture(s); sending them again", len(late))
                    next_overdue = now + min(5.0, self.cfg.outbox.answer_timeout_s / 2)
                if now >= next_prune:
                    self.outbox.prune(self.cfg.outbox.keep_sent_days * 86400)
                    next_prune = now + 3600
            except Exception:  # the flusher must outlive any one bad moment (disk busy, etc.)
                log.exception("outbox flusher error; retrying in 1 s")
                time.sleep(1.0)

    def _handle_acks(self, acks: list[tuple[int, Any]]) -> None:
        sent = []
        for mid, reason in acks:
            entry = self._inflight.pop(mid, None)
            if entry is None:
                continue  # a status message
            capture_id = entry[0]
            if mqttclient.delivered(reason):
                sent.append(capture_id)
            else:
                cfg = self.cfg.outbox
                delay = self.outbox.mark_refused(capture_id, f"broker did not deliver: {reason}",
                                                 cfg.retry_initial_s, cfg.retry_max_s)
                self.last_error = f"capture {capture_id} not delivered ({reason}); retrying in {delay:.0f} s"
                log.warning("%s", self.last_error)
        self.outbox.mark_sent(sent)

    def _publish_due(self) -> None:
        client = self._client
        assert client is not None
        now = time.monotonic()
        for mid, (capture_id, at) in list(self._inflight.items()):
            if now - at > STALE_INFLIGHT_S:
                log.warning("no acknowledgement for capture %s after %.0f s; sending it again", capture_id, now - at)
                del self._inflight[mid]
        room = WINDOW - len(self._inflight)
        if room <= 0:
            return
        busy = {cid for cid, _ in self._inflight.values()}
        topic = self.topics.captures(self.device_id)
        for pending in self.outbox.due(room, exclude=busy):
            info = client.publish(topic, pending.payload, qos=1)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.warning("publish of %s failed locally (%s); will retry", pending.capture_id,
                            mqtt.error_string(info.rc))
                break
            self._inflight[info.mid] = (pending.capture_id, now)

    def _status(self, state: str) -> bytes:
        counts = self.outbox.counts() if state == "online" else {}
        version = self.model_version
        if state == "online":
            self._announced_version = version
        return encode(DeviceStatus(device_id=self.device_id, at=utc_now(), state=state,
                                   model_version=version, queued=counts.get("queued"),
                                   sent=counts.get("sent"),
                                   uptime_s=round(time.monotonic() - self._started, 1)))
