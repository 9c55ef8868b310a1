"""systemd's sd_notify protocol, in pure Python: readiness, status text and a health-gated watchdog.

A service started by a unit with ``Type=notify`` finds the address of systemd's notification socket in
``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket) and sends newline-separated
``KEY=VALUE`` datagrams to it. With ``WatchdogSec=`` set, systemd also exports ``$WATCHDOG_USEC`` (and
``$WATCHDOG_PID``) and kills the service when no ``WATCHDOG=1`` arrives within that time; ``Restart=``
then starts it again. Pinging from a thread proves only that the interpreter runs, so the pinger asks a
caller-supplied health check first and stays silent while it fails: a wedged camera loop or a dead
MQTT connection then ends in a restart instead of a zombie that looks alive.

Outside systemd (``make run``, tests) ``$NOTIFY_SOCKET`` is unset and every call is a cheap no-op.

    notifier = Notifier.from_environ()
    notifier.status("loading model")
    ...
    notifier.ready("serving on 127.0.0.1:8080")
    watchdog = notifier.start_watchdog(lambda: camera.last_frame_age_s() < 10)
    ...
    notifier.stopping()
    watchdog.stop()
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

log = logging.getLogger(__name__)

HealthCheck = Callable[[], bool]


class Notifier:
    """Sends sd_notify messages; a no-op when the process was not started by a notify-type unit."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        # systemd writes an abstract socket as "@name"; the kernel wants a leading NUL byte.
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self.watchdog_usec = watchdog_usec
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        return cls(address, _watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram. Returns whether it was sent; a send error is logged,
        never raised: losing a status line must not take a service down."""
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, self._address)
            except OSError as exc:
                log.warning("sd_notify to %r failed: %s", self._address.replace("\0", "@"), exc)
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([_status_line(status)] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(_status_line(text))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([_status_line(status)] if status else []))

    def ping(self) -> bool:
        return self.notify("WATCHDOG=1")

    def watchdog_interval_s(self) -> float | None:
        """Half the watchdog timeout, as sd_watchdog_enabled(3) recommends; None when no watchdog is set."""
        if not self.enabled or not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def start_watchdog(self, healthy: HealthCheck) -> Watchdog | None:
        """Start a daemon thread pinging every half watchdog period while ``healthy()`` returns true.
        Returns None (and starts nothing) when systemd asked for no watchdog."""
        interval = self.watchdog_interval_s()
        if interval is None:
            return None
        watchdog = Watchdog(self, healthy, interval)
        watchdog.start()
        return watchdog

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class Watchdog:
    """The pinger thread. ``stop()`` ends it; it is a daemon thread so it never blocks interpreter exit."""

    def __init__(self, notifier: Notifier, healthy: HealthCheck, interval_s: float) -> None:
        self._notifier = notifier
        self._healthy = healthy
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._was_healthy = True

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _check(self) -> bool:
        try:
            return bool(self._healthy())
        except Exception:
            # A health check that raises is a failed health check, not a reason to kill the pinger silently.
            log.exception("watchdog health check raised")
            return False

    def _run(self) -> None:
        # Ping at once: the first period starts when systemd sees READY=1, not when this thread starts.
        while True:
            healthy = self._check()
            if healthy:
                self._notifier.ping()
                if not self._was_healthy:
                    log.warning("health check passes again; watchdog pings resumed")
                    self._notifier.status("healthy again")
            elif self._was_healthy:
                log.error("health check failed; withholding watchdog pings so systemd restarts the service")
                self._notifier.status("unhealthy: health check failed, watchdog pings withheld")
            self._was_healthy = healthy
            if self._stop.wait(self.interval_s):
                return


def _status_line(text: str) -> str:
    # One datagram is newline-separated assignments: a newline inside STATUS would start a bogus one.
    return "STATUS=" + " ".join(text.splitlines())


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw)
        return None
    # WATCHDOG_PID names the process the watchdog is meant for; a child that inherited the
    # environment must not ping on its parent's behalf.
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    return usec if usec > 0 else None


@contextmanager
def supervised(status: str, healthy: HealthCheck = lambda: True) -> Iterator[Notifier]:
    """Around a service's main loop: READY=1 with ``status``, the watchdog fed while ``healthy()``, and
    STOPPING=1 on the way out. A no-op outside systemd."""
    notifier = Notifier.from_environ()
    notifier.ready(status)
    watchdog = notifier.start_watchdog(healthy)
    try:
        yield notifier
    finally:
        notifier.stopping()
        if watchdog is not None:
            watchdog.stop()
        notifier.close()
