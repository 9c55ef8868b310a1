"""Over-the-air update timings: bundle build, device update (download over local HTTP, verify,
unpack, load, self-test, swap), and what the live stream notices of the swap.

    python bench/ota.py [--model models/model.json] [--rounds 5]

The device runs ``--model`` as its factory model and is updated to the same weights relabelled as
new versions, so any model.json works (the shipped model, or a tiny one from a test run).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloud import bundles
from contract.signing import generate_keypair
from device.updater import ModelSlot, Updater
from tests.support.ota import serve_bundles


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/model.json"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-ota-"))
    generate_keypair(work / "k.pem", work / "k.pub")
    private = (work / "k.pem").read_bytes()

    t0 = time.perf_counter()
    members = bundles.bundle_members(args.model)
    build_s = time.perf_counter() - t0
    updater = Updater(ModelSlot(), work / "versions", (work / "k.pub").read_bytes(), factory_manifest=args.model)
    updater.load_active()
    size = updater.slot.get().input_size
    frame = np.full((size, size, 3), 140, np.uint8)

    stamps: list[float] = []
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            updater.slot.get().predict_pixels(frame)
            stamps.append(time.perf_counter())

    update_s, bundle_bytes = [], 0
    worker = threading.Thread(target=stream, daemon=True)
    worker.start()
    windows: list[tuple[float, float]] = []
    with serve_bundles(work / "bundles") as base:
        for i in range(args.rounds):
            version = f"bench-{i + 2}"
            manifest = json.loads(members["model.json"])
            manifest["version"] = version
            bundle = bundles.write_bundle({**members, "model.json": json.dumps(manifest).encode()}, version,
                                          work / "bundles")
            bundle_bytes = bundle.bytes
            ann = bundles.announce(bundle, bundles.bundle_url(base, version), private)
            time.sleep(0.3)
            t0 = time.perf_counter()
            result = updater.handle(ann)
            update_s.append(time.perf_counter() - t0)
            windows.append((t0, time.perf_counter()))
            assert result.outcome == "installed", result
        time.sleep(0.3)
    stop.set()
    worker.join()

    gaps = np.diff(stamps) * 1000
    during = np.array([any(a <= t <= b + 0.05 for a, b in windows) for t in stamps[1:]])
    print(f"model {args.model} ({size} px), bundle {bundle_bytes / 1e6:.2f} MB, built in {build_s:.2f} s")
    print(f"device update (download+verify+unpack+load+self-test+swap): median {statistics.median(update_s):.3f} s, "
          f"max {max(update_s):.3f} s over {args.rounds} rounds")
    for name, sel in (("outside updates", gaps[~during]), ("during updates", gaps[during])):
        print(f"stream frame interval {name}: median {np.median(sel):.1f} ms, p99 {np.percentile(sel, 99):.1f} ms, "
              f"max {sel.max():.1f} ms ({len(sel)} frames)")
    print(f"{len(stamps)} frames in all; the stream never stopped and every frame got an answer")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
