"""Benchmark the dashboard's live paths on loopback and print the figures.

    python bench/dashboard.py [--cases 30] [--backlog 500]

1. Capture -> queue: from ``Uplink.send`` at a kiosk to the staff event stream (``/events``, what an
   open triage queue listens to) announcing the case; plus the ``/api/queue`` fetch that follows.
2. Review -> kiosk and review -> phone: from the doctor's review POST to the ``Feedback`` recorded by
   the kiosk's uplink, and to the phone page's event stream (``/p/<token>/events``) announcing it.
3. ``/api/queue`` and ``/queue`` with a backlog of stored cases (the queue is sorted per request).

Real Mosquitto (broker/ config), the model named by models/model.json in the consumer (in this
process), SQLite, the dashboard on Werkzeug's threaded server; all in a temporary directory.
"""

from __future__ import annotations

import argparse
import hashlib
import http.cookiejar
import logging
import queue
import re
import secrets
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from werkzeug.serving import make_server  # noqa: E402

from cloud.consumer import Consumer  # noqa: E402
from cloud.dashboard import create_app  # noqa: E402
from cloud.dashboard.auth import add_user  # noqa: E402
from contract import Capture  # noqa: E402
from device.uplink import Uplink  # noqa: E402
from tests.support.broker import Broker, free_port  # noqa: E402
from tests.support.dashboard import seed_case  # noqa: E402
from tests.support.link import cloud_config, device_config, sample_images, wait_for  # noqa: E402

PASSWORD = "benchmark password"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def show(name: str, values_s: list[float]) -> None:
    ms = [v * 1000 for v in values_s]
    print(f"{name:<34} n={len(ms):<4} p50={statistics.median(ms):7.1f} ms  p95={percentile(ms, 95):7.1f} ms  "
          f"max={max(ms):7.1f} ms", flush=True)


class Browser:
    """A cookie-keeping HTTP client (one session) with the page's CSRF token."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.csrf = ""

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=30) as resp:
            body = resp.read().decode()
        found = re.search(r'(?:data-csrf="|name="csrf_token" value=")([^"]+)"', body)
        if found:
            self.csrf = found[1]
        return body

    def post(self, path: str, fields: dict[str, str]) -> int:
        data = urllib.parse.urlencode({**fields, "csrf_token": self.csrf}).encode()
        with self.opener.open(self.base + path, data=data, timeout=30) as resp:
            resp.read()
            return resp.status

    def events(self, path: str) -> queue.Queue[tuple[float, str]]:
        """Event stream lines, each with the time it arrived, read by a thread."""
        out: queue.Queue[tuple[float, str]] = queue.Queue()
        resp = self.opener.open(self.base + path, timeout=300)

        def read() -> None:
            for raw in resp:
                line = raw.decode().strip()
                if line.startswith("data:"):
                    out.put((time.perf_counter(), line))

        threading.Thread(target=read, daemon=True).start()
        return out


def wait_event(events: queue.Queue[tuple[float, str]], capture_id: str, timeout: float = 30) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        at, line = events.get(timeout=max(0.01, deadline - time.monotonic()))
        if capture_id in line:
            return at
    raise TimeoutError(f"no event for {capture_id}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=30)
    parser.add_argument("--backlog", type=int, default=500)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    with tempfile.TemporaryDirectory(prefix="skinscan-bench-dash-") as tmpdir:
        tmp = Path(tmpdir)
        broker = Broker(tmp / "broker", devices=["kiosk-a"])
        broker.data_dir.mkdir()
        broker.start()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cfg = cloud_config(broker, tmp, SKINSCAN_DASHBOARD__SECRET_KEY_FILE=str(tmp / "secret_key"),
                           SKINSCAN_DASHBOARD__PUBLIC_URL=base, SKINSCAN_UPDATES__BUNDLE_DIR=str(tmp / "bundles"))
        consumer = Consumer(cfg, worker_id="bench")
        stop = threading.Event()
        threading.Thread(target=consumer.run, args=(stop,), daemon=True).start()
        assert consumer.ready.wait(60)
        app = create_app(cfg)
        state = app.extensions["skinscan_dashboard"]
        add_user(state.storage, "drbench", PASSWORD, "dermatologist")
        server = make_server("127.0.0.1", port, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        assert state.relay.subscribed.wait(10)
        uplink = Uplink(device_config(broker, "kiosk-a", tmp))
        uplink.start()
        try:
            doctor = Browser(base)
            doctor.get("/login")
            doctor.post("/login", {"username": "drbench", "password": PASSWORD})
            doctor.get("/queue")
            staff_events = doctor.events("/events")
            images = sample_images(args.cases)
            label = state.labels.labels[0]
            to_queue, fetch, to_kiosk, to_phone = [], [], [], []
            for image in images:
                token = secrets.token_urlsafe(24)
                capture = Capture.from_image(image, device_id="kiosk-a",
                                             pairing_token_sha256=hashlib.sha256(token.encode()).hexdigest())
                cid = str(capture.capture_id)
                t0 = time.perf_counter()
                uplink.send(capture)
                to_queue.append(wait_event(staff_events, cid) - t0)
                t1 = time.perf_counter()
                doctor.get("/api/queue")
                fetch.append(time.perf_counter() - t1)

                phone = Browser(base)
                phone.get(f"/p/{token}")
                phone_events = phone.events(f"/p/{token}/events")
                phone_events.get(timeout=10)  # hello
                t2 = time.perf_counter()
                doctor.post(f"/cases/{cid}/review", {"label": label, "recommendation": "Benchmark advice."})
                to_phone.append(wait_event(phone_events, cid) - t2)
                wait_for(lambda c=cid: uplink.state(c)["feedback"] is not None, 30, "feedback at the kiosk",
                         interval=0.002)
                to_kiosk.append(time.perf_counter() - t2)
            print(f"dashboard live paths, {args.cases} captures (model {state.labels.labels} from "
                  f"{cfg.model.manifest}):")
            show("capture -> staff queue event", to_queue)
            show("/api/queue fetch after the event", fetch)
            show("review POST -> phone page event", to_phone)
            show("review POST -> Feedback at kiosk", to_kiosk)

            for i in range(args.backlog):
                seed_case(state.storage, 10_000 + i, cloud=(label, 0.8, i % 7 == 0))
            api, page = [], []
            for _ in range(10):
                t = time.perf_counter()
                doctor.get("/api/queue?status=all")
                api.append(time.perf_counter() - t)
                t = time.perf_counter()
                doctor.get("/queue?status=all")
                page.append(time.perf_counter() - t)
            print(f"with {args.backlog + args.cases} stored cases:")
            show("/api/queue?status=all", api)
            show("/queue?status=all (HTML)", page)
        finally:
            uplink.close()
            state.stop()
            server.shutdown()
            stop.set()
            broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
