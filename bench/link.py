"""Benchmark the device <-> cloud link on loopback and print the figures.

    python bench/link.py [--captures 500] [--burst 300] [--workers 1,2]

1. Latency: one kiosk (``Uplink``, in this process) sends captures one at a time to one consumer
   worker (``skinscan-cloud consume``, its own process); each is timed from ``Uplink.send`` (which
   includes the fsync'd outbox write) to the result being recorded on the device.
   Targets: p50 <= 100 ms, p99 <= 300 ms.
2. Throughput: a burst of captures is published at once and drained by 1 worker, then by 2 (MQTT v5
   shared subscription); images stored per second from the first publish to the last case stored.
   Targets: >= 40 images/s per worker and >= 1.7x with 2 workers.

A real Mosquitto with the broker/ config, the model named by models/model.json (float + flips for
the cloud) and SQLite are used, all in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402

from cloud.storage import Storage  # noqa: E402
from contract import Capture, Topics, encode  # noqa: E402
from device.uplink import Uplink  # noqa: E402
from settings import load_cloud, load_device  # noqa: E402
from tests.support.broker import Broker  # noqa: E402
from tests.support.link import cloud_env, device_env, sample_images, wait_for  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def start_workers(broker: Broker, tmp: Path, n: int, tag: str,
                  db_url: str | None = None) -> tuple[list[subprocess.Popen], dict[str, str]]:
    env = cloud_env(broker, tmp, db_url, SKINSCAN_CONSUMER__WORKER_ID=tag)
    full = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / f"consumer-{tag}.log"
    procs = []
    for i in range(n):
        with open(log, "ab") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "cloud.cli", "consume", "--worker-id", f"{tag}-{i}"],
                                          env=full, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))
    wait_for(lambda: log.read_text().count("ready on") >= n, 120, f"{n} workers to subscribe")
    return procs, env


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)


def latency(broker: Broker, tmp: Path, images: list[bytes], count: int) -> list[float]:
    procs, _ = start_workers(broker, tmp / "lat", 1, "lat")
    try:
        uplink = Uplink(load_device(environ=device_env(broker, "kiosk-a", tmp / "lat")))
        arrived: dict[str, float] = {}
        done = threading.Event()
        record = uplink.outbox.record_result

        def timed_record(result):  # the device's own callback path, timed where the result lands
            ok = record(result)
            arrived[str(result.capture_id)] = time.perf_counter()
            done.set()
            return ok

        uplink.outbox.record_result = timed_record
        uplink.start()
        wait_for(lambda: uplink.stats()["connected"], 10, "the uplink to connect")
        for i in range(10):  # warm-up: interpreter, caches, connections
            done.clear()
            uplink.send(Capture.from_image(images[i % len(images)], device_id="kiosk-a"))
            done.wait(10)
        samples = []
        for i in range(count):
            capture = Capture.from_image(images[i % len(images)], device_id="kiosk-a")
            done.clear()
            sent = time.perf_counter()
            capture_id = uplink.send(capture)
            if not done.wait(10) or capture_id not in arrived:
                raise RuntimeError(f"no result for capture {i} within 10 s")
            samples.append((arrived[capture_id] - sent) * 1000)
        uplink.close()
        return samples
    finally:
        stop_workers(procs)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(broker: Broker, tmp: Path, images: list[bytes], burst: int, workers: int,
               db_url: str | None = None) -> tuple[float, float]:
    """Images per second (wall clock), and the workers' CPU milliseconds per image."""
    procs, env = start_workers(broker, tmp, workers, tmp.name, db_url)
    storage = Storage(env["SKINSCAN_DATABASE__URL"], env["SKINSCAN_STORAGE__IMAGE_DIR"])
    before = storage.count_cases()
    # Distinct bytes per capture (a JPEG decoder ignores bytes after the end marker), so every
    # capture costs a real image write, as in the field.
    payloads = [encode(Capture.from_image(images[i % len(images)] + i.to_bytes(4, "big"), device_id="kiosk-b"))
                for i in range(burst)]
    topic = Topics(load_cloud(environ=env).mqtt.topic_prefix).captures("kiosk-b")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{tmp.name}", protocol=mqtt.MQTTv5)
    client.username_pw_set("kiosk-b", broker.secret("kiosk-b"))
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        cpu_before = sum(cpu_seconds(p.pid) for p in procs)
        start = time.perf_counter()
        infos = [client.publish(topic, p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(60)
        wait_for(lambda: storage.count_cases() - before >= burst, 600, f"{burst} cases", interval=0.02)
        rate = burst / (time.perf_counter() - start)
        return rate, (sum(cpu_seconds(p.pid) for p in procs) - cpu_before) / burst * 1000
    finally:
        client.disconnect()
        client.loop_stop()
        storage.close()
        stop_workers(procs)


def scratch_database(admin_url: str) -> str:
    from sqlalchemy import create_engine, text

    name = f"skinscan_bench_{os.getpid()}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(admin_url: str, url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captures", type=int, default=500, help="latency samples")
    parser.add_argument("--burst", type=int, default=300, help="captures per throughput run")
    parser.add_argument("--workers", default="1,2", help="worker counts to measure")
    parser.add_argument("--pg", metavar="ADMIN_URL",
                        help="also measure throughput on PostgreSQL (a scratch database is created and dropped), "
                             "e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    images = sample_images(50)
    with tempfile.TemporaryDirectory(prefix="skinscan-bench-") as d:
        tmp = Path(d)
        (tmp / "broker").mkdir()
        broker = Broker(tmp / "broker", devices=["kiosk-a", "kiosk-b"]).start()
        try:
            print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
                  f"model {load_cloud(environ=cloud_env(broker, tmp)).model.manifest}; "
                  f"images {sum(map(len, images)) // len(images)} bytes on average", flush=True)
            samples = latency(broker, tmp, images, args.captures)
            p50, p99 = percentile(samples, 50), percentile(samples, 99)
            print(f"latency send -> result over {len(samples)} captures: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
                  f"max {max(samples):.1f} ms, mean {statistics.mean(samples):.1f} ms "
                  f"(targets: p50 <= 100, p99 <= 300)", flush=True)
            databases = [("sqlite", None)]
            if args.pg:
                databases.append(("postgresql", scratch_database(args.pg)))
            try:
                for name, url in databases:
                    rates = {}
                    for n in (int(w) for w in args.workers.split(",")):
                        rates[n], cpu_ms = throughput(broker, tmp / f"{name}-{n}", images, args.burst, n, url)
                        print(f"throughput on {name} with {n} worker(s): {rates[n]:.1f} images/s "
                              f"({rates[n] / n:.1f} per worker; worker CPU {cpu_ms:.1f} ms per image; "
                              f"load average {os.getloadavg()[0]:.2f})", flush=True)
                    if 1 in rates and 2 in rates:
                        print(f"scaling on {name}, 1 -> 2 workers: {rates[2] / rates[1]:.2f}x (target >= 1.7x)",
                              flush=True)
            finally:
                if args.pg:
                    drop_database(args.pg, databases[-1][1])
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
