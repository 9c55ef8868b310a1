"""Live updates: an in-process hub that fans events out to server-sent-event streams.

Events are small notices (``kind``: ``case`` | ``feedback`` | ``message``, and the ``capture_id``);
a browser that gets one fetches the fresh state over plain HTTP, so a lost or duplicated notice
costs one extra fetch and never shows stale or partial data. The hub is fed by the relay's MQTT
subscription (events from every dashboard process and the consumers) and directly by this
process's own views (so the sender's browsers update even while the broker is unreachable).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from flask import Response, stream_with_context

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
QUEUE_SIZE = 256


@dataclass(frozen=True)
class Event:
    kind: str
    capture_id: str

    def sse(self) -> str:
        return f"event: {self.kind}\ndata: {json.dumps({'kind': self.kind, 'capture_id': self.capture_id})}\n\n"


_HEARTBEAT = Event("heartbeat", "")


class Hub:
    def __init__(self) -> None:
        self._subscribers: set[queue.Queue[Event | None]] = set()
        self._lock = threading.Lock()

    def subscribe(self) -> queue.Queue[Event | None]:
        q: queue.Queue[Event | None] = queue.Queue(QUEUE_SIZE)
        with self._lock:
            self._subscribers.add(q)
        return q

    def unsubscribe(self, q: queue.Queue[Event | None]) -> None:
        with self._lock:
            self._subscribers.discard(q)

    def emit(self, kind: str, capture_id: str) -> None:
        event = Event(kind, str(capture_id))
        with self._lock:
            subscribers = list(self._subscribers)
        for q in subscribers:
            try:
                q.put_nowait(event)
            except queue.Full:  # a stalled browser; it resynchronises when it reconnects
                log.debug("dropping an event for a slow subscriber")

    def close(self) -> None:
        """End every open stream (server shutdown)."""
        with self._lock:
            subscribers = list(self._subscribers)
        for q in subscribers:
            with contextlib.suppress(queue.Full):
                q.put_nowait(None)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)


def stream(hub: Hub, accept: Callable[[Event], bool], still_valid: Callable[[], bool] | None = None,
           heartbeat_s: float = HEARTBEAT_S) -> Response:
    """A ``text/event-stream`` response of the hub's events that ``accept`` lets through.

    ``still_valid`` is checked at every event and heartbeat: a phone link revoked or expired while
    the page is open stops streaming (the page then reloads and shows why)."""
    q = hub.subscribe()

    def generate() -> Iterator[str]:
        try:
            yield "retry: 3000\nevent: hello\ndata: {}\n\n"
            while True:
                try:
                    event = q.get(timeout=heartbeat_s)
                except queue.Empty:
                    event = _HEARTBEAT
                if event is None:
                    return
                if event is not _HEARTBEAT and not accept(event):
                    continue
                # Checked only for this stream's own events and at heartbeats, so other cases' traffic
                # costs no database reads (a revocation sends an event for its own case).
                if still_valid is not None and not still_valid():
                    yield "event: gone\ndata: {}\n\n"
                    return
                # A heartbeat comment also detects a browser that went away.
                yield ": ping\n\n" if event is _HEARTBEAT else event.sse()
        finally:
            hub.unsubscribe(q)

    return Response(stream_with_context(generate()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
