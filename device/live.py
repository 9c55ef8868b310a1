"""Live-stream diagnosis: classify the newest frame, smooth over frames, overlay, serve MJPEG.

Two threads, so the video never waits for the model:
  * the classifier takes the newest camera frame whenever it is free (older frames are dropped),
    at most ``max_classify_hz`` times a second, and folds the probabilities into an exponential
    moving average, so the label does not flicker from frame to frame;
  * the renderer draws the latest smoothed result on every camera frame and JPEG-encodes it once,
    however many browsers watch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from device import preprocess, report
from device.camera import Camera, Frame
from device.diagnose import Diagnoser

log = logging.getLogger(__name__)

BOUNDARY = "frame"


@dataclass(frozen=True)
class LiveResult:
    label: str
    name: str
    confidence: float  # of the smoothed distribution
    unsure: bool
    probabilities: dict[str, float]  # smoothed
    ms: float  # time to classify the last frame
    warnings: list[str] = field(default_factory=list)
    box: preprocess.Box | None = None
    frame_index: int = 0
    at: float = 0.0  # camera timestamp (time.time()) of the classified frame
    model_version: str | None = None

    def as_json(self) -> dict[str, object]:
        return {"label": self.label, "name": self.name, "confidence": round(self.confidence, 4),
                "unsure": self.unsure, "ms": round(self.ms, 1), "warnings": self.warnings,
                "probabilities": {k: round(v, 4) for k, v in self.probabilities.items()},
                "frame_index": self.frame_index, "frame_time": self.at, "model_version": self.model_version}


class Smoother:
    """Exponential moving average of probability vectors; ``alpha`` is the newest frame's weight."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.value: np.ndarray | None = None

    def update(self, probs: np.ndarray) -> np.ndarray:
        self.value = probs.copy() if self.value is None else self.alpha * probs + (1 - self.alpha) * self.value
        return self.value

    def reset(self) -> None:
        self.value = None


class _Rate:
    """Events per second over the last few seconds."""

    def __init__(self, window_s: float = 3.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()

    def tick(self) -> None:
        now = time.monotonic()
        self._times.append(now)
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()

    @property
    def per_second(self) -> float:
        if len(self._times) < 2:
            return 0.0
        span = time.monotonic() - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, colour: tuple[int, int, int]) -> None:
    # Hershey fonts are ASCII only: the overlay stays English, the page around it is translated.
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def draw_overlay(rgb: np.ndarray, result: LiveResult | None, status: str | None = None) -> np.ndarray:
    """A copy of the frame with the crop box, label, confidence, ms per frame and warnings drawn on."""
    img = rgb.copy()
    h, w = img.shape[:2]
    scale = max(0.4, w / 1100)
    line = int(28 * scale / 0.58)
    if result is not None:
        if result.box is not None:
            x0, y0, x1, y1 = result.box
            cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), 1, cv2.LINE_AA)
        colour = (255, 210, 0) if result.unsure else (255, 255, 255)
        head = "unsure" if result.unsure else result.name
        cv2.rectangle(img, (0, 0), (w, line * 2 + 6), (0, 0, 0), -1)
        _text(img, f"{head}  {result.confidence:.0%}", (8, line), scale * 1.2, colour)
        _text(img, f"{result.ms:.0f} ms/frame  screening aid, not a diagnosis", (8, 2 * line), scale, (200, 200, 200))
        for i, warning in enumerate(result.warnings[:3]):
            _text(img, warning, (8, h - 10 - i * line), scale, (255, 120, 80))
    if status:
        _text(img, status, (8, h // 2), scale, (255, 120, 80))
    return img


def placeholder(width: int, height: int, message: str) -> np.ndarray:
    img = np.full((height, width, 3), 40, dtype=np.uint8)
    return draw_overlay(img, None, message)


class LiveStream:
    """Runs the classifier and renderer threads over one :class:`Camera`."""

    def __init__(self, camera: Camera, diagnoser: Diagnoser | None, *, ema_alpha: float = 0.3,
                 max_classify_hz: float = 15.0, jpeg_quality: int = 75, size: tuple[int, int] = (640, 480)) -> None:
        self.camera = camera
        self.diagnoser = diagnoser
        self.smoother = Smoother(ema_alpha)
        self.min_period = 1.0 / max_classify_hz
        self.jpeg_quality = jpeg_quality
        self.size = size
        self.result: LiveResult | None = None
        self._model_version: str | None = None  # of the model behind the smoothed result
        self.model_error: str | None = None if diagnoser is not None else "model not loaded"
        self.classify_rate = _Rate()
        self.render_rate = _Rate()
        self.classified = 0  # totals since start, for benchmarks
        self.rendered = 0
        self._jpeg: bytes | None = None
        self._jpeg_index = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> LiveStream:
        if not self._threads:
            targets = [("render", self._render_loop)]
            if self.diagnoser is not None:
                targets.append(("classify", self._classify_loop))
            for name, target in targets:
                t = threading.Thread(target=target, name=f"live-{name}", daemon=True)
                t.start()
                self._threads.append(t)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    # -- classification ---------------------------------------------------------------------------------

    def classify(self, frame: Frame) -> LiveResult:
        """One frame through the same pipeline as a capture, folded into the moving average."""
        assert self.diagnoser is not None
        diagnosis = self.diagnoser.diagnose(frame.rgb)
        model = diagnosis.model  # the one model this frame used, even if an update swapped the slot meanwhile
        if model.version != self._model_version:
            # A new model (maybe with other classes): its probabilities do not average with the old one's.
            self.smoother.reset()
            self._model_version = model.version
        labels = model.labels
        raw = np.array([diagnosis.prediction.probabilities[label] for label in labels])
        smooth = self.smoother.update(raw)
        best = int(np.argmax(smooth))
        confidence = float(smooth[best])
        threshold = model.calibration.threshold
        warnings = [issue.message for issue in diagnosis.quality.issues]
        return LiveResult(label=labels[best], name=report.describe(labels[best])[0], confidence=confidence,
                          unsure=confidence < threshold,
                          probabilities={label: float(p) for label, p in zip(labels, smooth, strict=True)},
                          ms=diagnosis.total_ms, warnings=warnings, box=diagnosis.box,
                          frame_index=frame.index, at=frame.timestamp, model_version=model.version)

    def _classify_loop(self) -> None:
        last_index, last_start = -1, 0.0
        while not self._stop.is_set():
            wait = last_start + self.min_period - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                return
            frame = self.camera.wait_frame(last_index, timeout=1.0)
            if frame is None:
                if not self.camera.status.ok:
                    self.smoother.reset()  # a new scene after reconnecting starts fresh
                    self.result = None
                continue
            if last_index >= 0 and frame.index - last_index > 50:
                self.smoother.reset()  # long gap: the scene has changed
            last_index, last_start = frame.index, time.monotonic()
            try:
                self.result = self.classify(frame)
                self.model_error = None
            except Exception as exc:  # keep the stream alive; the page shows what went wrong
                log.exception("live classification failed")
                self.model_error = f"classification failed: {exc}"
            self.classify_rate.tick()
            self.classified += 1

    # -- rendering ----------------------------------------------------------------------------------------

    def render(self, frame: Frame | None) -> np.ndarray:
        status = self.camera.status
        if frame is None or not status.ok:
            message = status.message if not status.ok else "waiting for the camera"
            if frame is None:
                return placeholder(*self.size, message)
            return draw_overlay(frame.rgb, None, message)
        return draw_overlay(frame.rgb, self.result, self.model_error)

    def _render_loop(self) -> None:
        last_index = -1
        params = [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality]
        while not self._stop.is_set():
            frame = self.camera.wait_frame(last_index, timeout=1.0)
            if frame is not None:
                last_index = frame.index
            elif self._jpeg is not None and self.camera.status.ok:
                continue  # no new frame yet; the last picture stands
            try:
                img = self.render(frame if frame is not None else self.camera.latest())
                ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
            except Exception:  # an odd frame must not stop the video
                log.exception("rendering a frame failed")
                continue
            if ok:
                with self._cond:
                    self._jpeg, self._jpeg_index = buf.tobytes(), self._jpeg_index + 1
                    self._cond.notify_all()
                self.render_rate.tick()
                self.rendered += 1

    def next_jpeg(self, after: int, timeout: float = 2.0) -> tuple[int, bytes] | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stop.is_set():
                if self._jpeg is not None and self._jpeg_index > after:
                    return self._jpeg_index, self._jpeg
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
        return None

    def mjpeg(self) -> Iterator[bytes]:
        """multipart/x-mixed-replace body: one JPEG part per rendered frame, until the stream stops."""
        index = 0
        while not self._stop.is_set():
            got = self.next_jpeg(index)
            if got is None:
                continue
            index, jpeg = got
            yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n").encode()
            yield jpeg
            yield b"\r\n"

    def stats(self) -> dict[str, float]:
        return {"overlay_fps": round(self.render_rate.per_second, 1),
                "classifications_per_s": round(self.classify_rate.per_second, 1)}
