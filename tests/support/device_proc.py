"""A kiosk as its own process, for tests that kill it: sends every image in a folder, then idles.

    python -m tests.support.device_proc IMAGE_DIR INTERVAL_S   (config from SKINSCAN_* environment)

Capture ids are derived from the file names, so a restarted process re-sends exactly the
captures it had not queued yet (the outbox ignores a capture_id it already holds).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import uuid
from pathlib import Path

from contract import Capture
from device.uplink import Uplink
from settings import load_device

NAMESPACE = uuid.UUID("6f1f7d0e-8f55-4c1b-9d7e-3c1a3b0e5a11")


def capture_id_for(name: str) -> str:
    return str(uuid.uuid5(NAMESPACE, name))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    image_dir, interval = Path(sys.argv[1]), float(sys.argv[2])
    cfg = load_device()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    uplink = Uplink(cfg)
    uplink.start()
    for path in sorted(image_dir.glob("*.jpg")):
        if stop.is_set():
            break
        cid = capture_id_for(path.name)
        if uplink.state(cid)["state"] != "unknown":
            continue
        uplink.send(Capture.from_image(path.read_bytes(), device_id=cfg.device_id, capture_id=cid))
        print(f"queued {cid}", flush=True)
        stop.wait(interval)
    stop.wait()
    uplink.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
