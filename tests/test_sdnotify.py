"""runtime.sdnotify against a real unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from runtime.sdnotify import Notifier


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: collects datagrams with their arrival times."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def pings(self) -> list[float]:
        return [t for t, m in self.messages if m == "WATCHDOG=1"]

    def texts(self) -> list[str]:
        return [m for _, m in self.messages]


@pytest.fixture
def systemd(tmp_path: Path):
    fake = FakeSystemd(str(tmp_path / "notify"))
    yield fake
    fake.close()


def _env(systemd: FakeSystemd, **extra: str) -> dict[str, str]:
    return {"NOTIFY_SOCKET": systemd.sock.getsockname(), **extra}


def _wait_for(cond, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_ready_and_status_reach_the_socket(systemd):
    notifier = Notifier.from_environ(_env(systemd))
    assert notifier.enabled
    assert notifier.status("loading model")
    assert notifier.ready("serving on 127.0.0.1:8080")
    assert notifier.stopping()
    assert _wait_for(lambda: len(systemd.messages) == 3)
    assert systemd.texts() == ["STATUS=loading model", "READY=1\nSTATUS=serving on 127.0.0.1:8080", "STOPPING=1"]
    notifier.close()


def test_status_newlines_cannot_inject_assignments(systemd):
    notifier = Notifier.from_environ(_env(systemd))
    notifier.status("camera lost\nREADY=1")
    assert _wait_for(lambda: systemd.messages)
    assert systemd.texts() == ["STATUS=camera lost READY=1"]


def test_abstract_socket_address():
    name = f"@skinscan-test-{uuid.uuid4().hex}"
    fake = FakeSystemd(name)
    try:
        assert Notifier.from_environ({"NOTIFY_SOCKET": name}).ready()
        assert _wait_for(lambda: fake.texts() == ["READY=1"])
    finally:
        fake.close()


def test_noop_without_notify_socket():
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog_interval_s() is None
    assert notifier.start_watchdog(lambda: True) is None


def test_send_failure_is_logged_not_raised(tmp_path, caplog):
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.ready() is False
    assert "sd_notify" in caplog.text


def test_watchdog_pings_at_half_the_period_while_healthy(systemd):
    notifier = Notifier.from_environ(_env(systemd, WATCHDOG_USEC="200000", WATCHDOG_PID=str(os.getpid())))
    assert notifier.watchdog_interval_s() == pytest.approx(0.1)
    watchdog = notifier.start_watchdog(lambda: True)
    assert watchdog is not None
    assert _wait_for(lambda: len(systemd.pings()) >= 6)
    watchdog.stop()
    assert not watchdog.running
    pings = systemd.pings()
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    # Half of 200 ms; generous bounds because the test machine is shared with a training job.
    assert 0.05 < sorted(gaps)[len(gaps) // 2] < 0.2, gaps
    settled = len(systemd.pings())
    time.sleep(0.3)
    assert len(systemd.pings()) == settled, "pings after stop()"


def test_watchdog_withholds_pings_while_unhealthy(systemd):
    healthy = threading.Event()
    healthy.set()
    notifier = Notifier.from_environ(_env(systemd, WATCHDOG_USEC="100000"))
    watchdog = notifier.start_watchdog(healthy.is_set)
    assert _wait_for(lambda: len(systemd.pings()) >= 2)
    healthy.clear()
    assert _wait_for(lambda: any(t.startswith("STATUS=unhealthy") for t in systemd.texts()))
    time.sleep(0.1)  # one in-flight ping may land after the flag flips
    withheld = len(systemd.pings())
    time.sleep(0.4)  # eight periods
    assert len(systemd.pings()) == withheld
    healthy.set()
    assert _wait_for(lambda: len(systemd.pings()) > withheld)
    watchdog.stop()


def test_health_check_that_raises_counts_as_unhealthy(systemd):
    def broken() -> bool:
        raise RuntimeError("camera handle gone")

    watchdog = Notifier.from_environ(_env(systemd, WATCHDOG_USEC="100000")).start_watchdog(broken)
    assert _wait_for(lambda: any(t.startswith("STATUS=unhealthy") for t in systemd.texts()))
    time.sleep(0.3)
    assert systemd.pings() == []
    assert watchdog.running
    watchdog.stop()


def test_watchdog_meant_for_another_process_is_ignored(systemd):
    notifier = Notifier.from_environ(_env(systemd, WATCHDOG_USEC="100000", WATCHDOG_PID=str(os.getpid() + 1)))
    assert notifier.watchdog_interval_s() is None
    assert notifier.start_watchdog(lambda: True) is None
    assert Notifier.from_environ(_env(systemd, WATCHDOG_USEC="soon")).watchdog_interval_s() is None


def test_a_real_service_reports_ready_feeds_the_watchdog_and_says_stopping(tmp_path: Path):
    """`skinscan-cloud dashboard` under a notify socket, as systemd would start it (Type=notify)."""
    import signal
    import subprocess
    import sys

    from tests.support.broker import free_port

    root = Path(__file__).resolve().parent.parent
    address = str(tmp_path / "notify")
    systemd = FakeSystemd(address)
    (tmp_path / "cloud.secret").write_text("not-needed: no broker runs in this test\n")
    env = dict(os.environ, NOTIFY_SOCKET=address, WATCHDOG_USEC="400000",
               SKINSCAN_MQTT__PASSWORD_FILE=str(tmp_path / "cloud.secret"),
               SKINSCAN_DATABASE__URL=f"sqlite:///{tmp_path / 'cloud.sqlite3'}",
               SKINSCAN_STORAGE__IMAGE_DIR=str(tmp_path / "images"),
               SKINSCAN_DASHBOARD__SECRET_KEY_FILE=str(tmp_path / "secret"),
               SKINSCAN_MQTT__PORT=str(free_port()))
    proc = subprocess.Popen([sys.executable, "-m", "cloud.cli", "dashboard", "--port", str(free_port())],
                            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(systemd.pings()) < 2:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        assert any(m.startswith("READY=1") for m in systemd.texts())
        assert len(systemd.pings()) >= 2
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        systemd.close()
    assert proc.returncode == 0
    assert any(m.startswith("STOPPING=1") for m in systemd.texts())
