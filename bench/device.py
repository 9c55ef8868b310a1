"""Kiosk latency and live-stream throughput, printed (targets are checked here, never in unit tests).

    python bench/device.py [--images N] [--seconds S] [--video FILE] [--model models/model.json]

1. Per stage on real validation photos (../shared/data/skin/val): decode, quality gate, crop,
   denoise+resize (with hair removal when enabled), inference, report; then end to end
   photo file -> report, and the kiosk's own capture -> report (POST /api/capture through Flask,
   JPEG of the still and the JSON report included). Median and p95.
2. Live stream from a video file at 640x480: overlaid frames per second that reach an MJPEG viewer,
   and model classifications per second, for ``--seconds``.
Targets (issue 4): capture -> report median <= 50 ms; stream >= 25 fps while >= 10 classifications/s.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402 - after the project root is on sys.path

from device import imageio, preprocess, report  # noqa: E402
from device.camera import Camera, FolderSource, OpenCVSource  # noqa: E402
from device.diagnose import Diagnoser  # noqa: E402
from device.live import LiveStream  # noqa: E402
from settings import load_device  # noqa: E402

VAL = Path(os.environ.get("SKINSCAN_SHARED", ROOT.parent / "shared")) / "data" / "skin" / "val"


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def _line(name: str, ms: list[float], target: str = "") -> None:
    print(f"  {name:<28} median {statistics.median(ms):7.2f} ms   p95 {_pct(ms, 95):7.2f} ms   n={len(ms)} {target}")


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1000.0


def machine() -> str:
    load = os.getloadavg()
    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = cpu
    return f"{model}, {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def pick_images(count: int) -> list[Path]:
    by_class = sorted(p for p in VAL.iterdir() if p.is_dir())
    per = max(1, count // max(1, len(by_class)))
    chosen: list[Path] = []
    for folder in by_class:
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in {".jpg", ".jpeg", ".png"})
        chosen += files[:: max(1, len(files) // per)][:per]
    return chosen[:count]


def bench_stages(diagnoser: Diagnoser, paths: list[Path]) -> None:
    size = diagnoser.classifier.input_size
    stages: dict[str, list[float]] = {k: [] for k in
                                      ("decode", "quality", "crop", "denoise+resize", "inference", "report")}
    end_to_end: list[float] = []
    blobs = [(p, p.read_bytes()) for p in paths]
    diagnoser.diagnose(imageio.decode(blobs[0][1]))  # warm-up: first invoke allocates
    for path, data in blobs:
        rgb, t = _timed(lambda data=data, path=path: imageio.decode(data, str(path)))
        stages["decode"].append(t)
        quality, t = _timed(lambda rgb=rgb: preprocess.assess(rgb))
        stages["quality"].append(t)
        region, t = _timed(lambda rgb=rgb: preprocess.crop(rgb, preprocess.auto_box(rgb)))
        stages["crop"].append(t)

        def prepare(region: np.ndarray = region) -> np.ndarray:
            r = preprocess.remove_hair(region) if diagnoser.hair_removal else region
            return preprocess.finish(r, size)

        pixels, t = _timed(prepare)
        stages["denoise+resize"].append(t)
        prediction, t = _timed(lambda pixels=pixels: diagnoser.classifier.predict_pixels(pixels))
        stages["inference"].append(t)
        _, t = _timed(lambda p=prediction, q=quality: report.build(p, q, diagnoser.classifier.manifest.dangerous))
        stages["report"].append(t)
        _, t = _timed(lambda data=data: diagnoser.diagnose(imageio.decode(data)))
        end_to_end.append(t)
    classes = len({p.parent.name for p in paths})
    print(f"\nPer stage ({len(paths)} val photos from {classes} classes; "
          f"model input {size} px, hair removal {'on' if diagnoser.hair_removal else 'off'}):")
    for name, ms in stages.items():
        _line(name, ms)
    _line("file -> report (end to end)", end_to_end, "(target median <= 50 ms)")


def bench_kiosk_capture(cfg, diagnoser: Diagnoser, paths: list[Path]) -> None:
    """The kiosk's own path: the newest camera frame -> POST /api/capture -> JSON report."""
    from device.kiosk import create_app

    frames = [imageio.read(p) for p in paths[:24]]
    camera = Camera(lambda: _StillsSource(frames), retry_s=0.5)
    app = create_app(cfg, diagnoser=diagnoser, camera=camera)
    kiosk = app.extensions["skinscan_kiosk"]
    kiosk.live.stop()  # measure the capture alone, as when the user has pressed the button
    client = app.test_client()
    try:
        camera.wait_frame(timeout=10)
        times = []
        for _ in range(len(paths)):
            resp, t = _timed(lambda: client.post("/api/capture"))
            if resp.status_code != 201:
                raise SystemExit(f"capture failed: {resp.get_json()}")
            times.append(t)
        print("\nKiosk capture -> report (Flask POST /api/capture: still JPEG, quality, crop, model, report JSON):")
        _line("capture -> report", times, "(target median <= 50 ms)")
    finally:
        kiosk.stop()


class _StillsSource(FolderSource):
    """Val photos already in memory, served as camera frames (no disk in the timed path)."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        super().__init__("<memory>", 10_000, 10_000, fps=30)
        self._all = frames
        self.description = "val photos"

    def open(self) -> None:
        self._frames, self._pos = list(self._all), 0


def bench_stream(cfg, diagnoser: Diagnoser, video: Path, seconds: float) -> None:
    camera = Camera(lambda: OpenCVSource(str(video), 640, 480, 30, loop=True), retry_s=0.5).start()
    s = cfg.stream
    live = LiveStream(camera, diagnoser, ema_alpha=s.ema_alpha, max_classify_hz=s.max_classify_hz,
                      jpeg_quality=s.jpeg_quality).start()
    delivered = 0
    stop = threading.Event()

    def viewer() -> None:  # one browser watching the MJPEG stream
        nonlocal delivered
        for chunk in live.mjpeg():
            if chunk.startswith(b"\xff\xd8"):
                delivered += 1
            if stop.is_set():
                return

    t = threading.Thread(target=viewer, daemon=True)
    camera.wait_frame(timeout=10)
    time.sleep(2.0)  # settle: the first frames pay for the model's warm-up
    start_frames, start = delivered, time.monotonic()
    classified0 = live.classified
    t.start()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    fps = (delivered - start_frames) / elapsed
    cps = (live.classified - classified0) / elapsed
    stop.set()
    live.stop()
    camera.stop()
    native = _video_fps(video)
    print(f"\nLive stream from {video.name} (640x480, {native:.0f} fps file, classify cap "
          f"{s.max_classify_hz:g}/s, {seconds:.0f} s):")
    print(f"  overlaid video delivered to a viewer  {fps:6.1f} fps   (target >= 25)")
    print(f"  model classifications                 {cps:6.1f} /s    (target >= 10)")
    print(f"  last classification took             {live.result.ms if live.result else float('nan'):6.1f} ms")


def _video_fps(video: Path) -> float:
    import cv2

    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return fps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="model.json (default: model.manifest from settings)")
    parser.add_argument("--images", type=int, default=90, help="val photos to time (spread over the classes)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to run the live stream")
    parser.add_argument("--video", type=Path, help="video file for the stream (default: a generated 30 fps one)")
    parser.add_argument("--threads", type=int, help="interpreter threads (default: model.threads)")
    parser.add_argument("--hair-removal", action="store_true", help="time with hair removal on")
    args = parser.parse_args()
    env = {}
    if args.model:
        env["SKINSCAN_MODEL__MANIFEST"] = str(args.model)
    if args.threads:
        env["SKINSCAN_MODEL__THREADS"] = str(args.threads)
    if args.hair_removal:
        env["SKINSCAN_PREPROCESS__HAIR_REMOVAL"] = "true"
    cfg = load_device(environ={**os.environ, **env})
    diagnoser = Diagnoser.from_config(cfg)
    print(f"Machine: {machine()}")
    c = diagnoser.classifier
    print(f"Model: {cfg.model.manifest} v{c.version}, {len(c.labels)} classes, {c.input_size} px, "
          f"{cfg.model.threads} thread(s), backend {c.model.backend}")
    if VAL.is_dir():
        paths = pick_images(args.images)
        bench_stages(diagnoser, paths)
        bench_kiosk_capture(cfg, diagnoser, paths)
    else:
        print(f"\nskipping the latency benchmark: real val images not found at {VAL}")
    with tempfile.TemporaryDirectory() as tmp:
        video = args.video
        if video is None:
            from tests.support.samples import write_video

            video = write_video(Path(tmp) / "stream.avi", count=60, fps=30)
        bench_stream(cfg, diagnoser, video, args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
