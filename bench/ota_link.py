"""Over-the-air updates through the whole wire: the cloud publishes a retained announcement on a real
Mosquitto (broker/ config), the device's real uplink hands it to the updater, which downloads over
local HTTP, verifies, self-tests and swaps. Prints announce -> serving latency for a connected kiosk,
and connect -> serving for a kiosk that was offline when the model was promoted.

    python bench/ota_link.py [--model models/model.json] [--rounds 5]

Like bench/ota.py, the updates are ``--model``'s weights relabelled as new versions.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloud import bundles
from cloud.model_updates import publish_announcement
from contract.signing import generate_keypair
from device.updater import Updater
from device.uplink import Uplink
from settings import load_cloud, load_device
from tests.support.broker import Broker
from tests.support.ota import serve_bundles


def wait(condition, timeout: float = 60.0) -> float:
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the device did not install the update")
        time.sleep(0.002)
    return time.perf_counter()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/model.json"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-ota-link-"))
    generate_keypair(work / "k.pem", work / "k.pub")
    private = (work / "k.pem").read_bytes()
    members = bundles.bundle_members(args.model)
    broker = Broker(work / "broker", devices=["kiosk-a", "kiosk-b"])
    broker.data_dir.mkdir()
    broker.start()

    def device_cfg(device_id: str):
        return load_device(environ={
            "SKINSCAN_DEVICE_ID": device_id, "SKINSCAN_DATA_DIR": str(work / device_id),
            "SKINSCAN_MQTT__PORT": str(broker.port), "SKINSCAN_MQTT__USERNAME": device_id,
            "SKINSCAN_MQTT__PASSWORD_FILE": str(broker.data_dir / "credentials" / f"{device_id}.secret"),
            "SKINSCAN_MODEL__MANIFEST": str(args.model.resolve()), "SKINSCAN_MODEL__THREADS": "1",
            "SKINSCAN_OUTBOX__PATH": str(work / device_id / "outbox.sqlite3"),
            "SKINSCAN_UPDATES__PUBLIC_KEY": str(work / "k.pub"),
            "SKINSCAN_UPDATES__VERSIONS_DIR": str(work / device_id / "models")})

    cloud = load_cloud(environ={
        "SKINSCAN_MQTT__PORT": str(broker.port), "SKINSCAN_MQTT__USERNAME": "cloud",
        "SKINSCAN_MQTT__PASSWORD_FILE": str(broker.data_dir / "credentials" / "cloud.secret")})

    sizes: list[int] = []

    def release(base: str, version: str):
        manifest = json.loads(members["model.json"])
        manifest["version"] = version
        bundle = bundles.write_bundle({**members, "model.json": json.dumps(manifest).encode()}, version,
                                      work / "bundles")
        sizes.append(bundle.bytes)
        return bundles.announce(bundle, bundles.bundle_url(base, version), private)

    online, catch_up = [], []
    try:
        with serve_bundles(work / "bundles") as base:
            updater = Updater.from_config(device_cfg("kiosk-a"))
            uplink = Uplink(device_cfg("kiosk-a"), updater)
            uplink.start()
            wait(lambda: uplink.stats()["connected"])
            for i in range(args.rounds):
                ann = release(base, f"bench-{i + 2}")
                t0 = time.perf_counter()
                publish_announcement(cloud, ann)
                online.append(wait(lambda v=ann.version: updater.slot.version == v) - t0)
            uplink.close()
            updater.close()
            # kiosk-b was off while all of that was announced; the retained message brings it up to date.
            for _ in range(args.rounds):
                updater = Updater.from_config(device_cfg("kiosk-b"))
                latest = f"bench-{args.rounds + 1}"
                if updater.slot.version == latest:  # installed in an earlier round: start it fresh
                    updater.close()
                    shutil.rmtree(work / "kiosk-b" / "models")
                    updater = Updater.from_config(device_cfg("kiosk-b"))
                uplink = Uplink(device_cfg("kiosk-b"), updater)
                t0 = time.perf_counter()
                uplink.start()
                catch_up.append(wait(lambda u=updater, v=latest: u.slot.version == v) - t0)
                uplink.close()
                updater.close()
    finally:
        broker.stop()
    print(f"model {args.model}, bundle {max(sizes) / 1e6:.2f} MB, {args.rounds} rounds")
    print(f"connected kiosk, announce -> new model serving: median {statistics.median(online):.3f} s, "
          f"max {max(online):.3f} s")
    print(f"offline kiosk, connect -> retained announcement -> new model serving: median "
          f"{statistics.median(catch_up):.3f} s, max {max(catch_up):.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
