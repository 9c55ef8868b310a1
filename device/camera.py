"""Camera sources behind one small interface, and a reader thread that never gives up.

A :class:`FrameSource` is opened, read frame by frame (RGB uint8) and closed. Three kinds, chosen by
``camera.source``: ``picamera2`` (the Pi camera; the module is imported only when opened, so other
machines never need it), ``opencv`` (``cv2.VideoCapture``: a webcam index, a video file, an RTSP or
HTTP URL) and ``folder`` (still images shown in turn, the laptop demo).

:class:`Camera` runs one source in a thread, keeps the newest :class:`Frame`, and turns every failure
(no camera, unplugged mid-stream, the video ended) into a status message the kiosk shows, then
reopens the source after ``retry_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from device import imageio
from settings.schema import CameraConfig

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class CameraError(RuntimeError):
    """The source cannot give a frame now (missing, unplugged, unreadable); worth retrying later."""


class EndOfStream(CameraError):
    """A finite source (video file, folder without loop) has no more frames."""


@dataclass(frozen=True)
class Frame:
    rgb: np.ndarray  # HxWx3 uint8, RGB order
    timestamp: float  # time.time() when the frame was read
    index: int  # increases by one per frame delivered by a Camera, across reopenings


class FrameSource(Protocol):
    description: str

    def open(self) -> None: ...

    def read(self) -> np.ndarray: ...

    def close(self) -> None: ...


def fit(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale down (never up) to fit inside width x height, keeping the aspect ratio."""
    h, w = rgb.shape[:2]
    scale = min(width / w, height / h)
    if scale >= 1.0:
        return rgb
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


class _Pacer:
    """Holds a finite source to its frame rate, so a video file plays in real time, not flat out."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps
        self._next = 0.0

    def wait(self) -> None:
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
        # After a stall (slow decode, reopen) restart the schedule instead of bursting to catch up.
        self._next = max(self._next + self.period, time.monotonic())


class OpenCVSource:
    """``cv2.VideoCapture``: "0" (webcam index), a video file, or an rtsp:// / http:// URL."""

    def __init__(self, uri: str, width: int, height: int, fps: float, loop: bool = True) -> None:
        self.uri, self.width, self.height, self.fps, self.loop = uri, width, height, fps, loop
        self.is_device = uri.isdigit()
        self.is_file = not self.is_device and "://" not in uri
        self.description = f"camera {uri}" if self.is_device else f"video {uri}"
        self._cap: Any = None
        self._pacer: _Pacer | None = None

    def open(self) -> None:
        if self.is_file and not Path(self.uri).is_file():
            raise CameraError(f"video file {self.uri} not found")
        cap = cv2.VideoCapture(int(self.uri) if self.is_device else self.uri)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"cannot open {self.description}")
        if self.is_device:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        self._cap = cap
        if self.is_file:
            native = cap.get(cv2.CAP_PROP_FPS)
            self._pacer = _Pacer(native if 1.0 <= native <= 120.0 else self.fps)

    def read(self) -> np.ndarray:
        if self._cap is None:
            raise CameraError(f"{self.description} is not open")
        if self._pacer is not None:
            self._pacer.wait()
        ok, bgr = self._cap.read()
        if not ok and self.is_file and self.loop:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._cap.read()
        if not ok or bgr is None:
            if self.is_file:
                raise EndOfStream(f"{self.description} ended")
            raise CameraError(f"{self.description} stopped delivering frames (unplugged?)")
        return fit(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.width, self.height)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class FolderSource:
    """Still images from a folder, one per frame period, in name order; unreadable files are skipped."""

    def __init__(self, uri: str, width: int, height: int, fps: float, loop: bool = True) -> None:
        self.folder = Path(uri)
        self.width, self.height, self.loop = width, height, loop
        self.description = f"image folder {uri}"
        self._frames: list[np.ndarray] = []
        self._pos = 0
        self._pacer = _Pacer(fps)

    def open(self) -> None:
        if not self.folder.is_dir():
            raise CameraError(f"{self.description} not found")
        frames = []
        for path in sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                frames.append(fit(imageio.read(path), self.width, self.height))
            except imageio.ImageError as exc:
                log.warning("skipping %s", exc)
        if not frames:
            raise CameraError(f"{self.description} has no readable images")
        self._frames, self._pos = frames, 0

    def read(self) -> np.ndarray:
        if not self._frames:
            raise CameraError(f"{self.description} is not open")
        if self._pos >= len(self._frames):
            if not self.loop:
                raise EndOfStream(f"{self.description}: no more images")
            self._pos = 0
        self._pacer.wait()
        frame = self._frames[self._pos]
        self._pos += 1
        return frame

    def close(self) -> None:
        self._frames = []


class PiCamera2Source:
    """The Raspberry Pi camera through picamera2 (installed with apt on Raspberry Pi OS)."""

    def __init__(self, width: int, height: int, fps: float) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.description = "Pi camera"
        self._cam: Any = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise CameraError(f"picamera2 is not available ({exc}); it exists only on Raspberry Pi OS") from None
        try:
            cam = Picamera2()
            # picamera2's "BGR888" is laid out R, G, B in memory: RGB arrays without a conversion.
            config = cam.create_video_configuration(
                main={"size": (self.width, self.height), "format": "BGR888"}, controls={"FrameRate": self.fps})
            cam.configure(config)
            cam.start()
        except Exception as exc:  # libcamera reports a missing or busy camera in several ways
            raise CameraError(f"cannot start the Pi camera ({exc})") from None
        self._cam = cam

    def read(self) -> np.ndarray:
        if self._cam is None:
            raise CameraError("Pi camera is not open")
        try:
            arr = self._cam.capture_array("main")
        except Exception as exc:  # a ribbon cable that comes loose surfaces as a libcamera error
            raise CameraError(f"Pi camera stopped delivering frames ({exc})") from None
        return np.ascontiguousarray(arr[..., :3])

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
                self._cam.close()
            except Exception:  # closing a camera that already vanished must not mask the first error
                log.debug("error closing the Pi camera", exc_info=True)
            self._cam = None


def make_source(cfg: CameraConfig) -> FrameSource:
    if cfg.source == "picamera2":
        return PiCamera2Source(cfg.width, cfg.height, cfg.fps)
    if cfg.source == "opencv":
        return OpenCVSource(cfg.uri, cfg.width, cfg.height, cfg.fps, cfg.loop)
    return FolderSource(cfg.uri, cfg.width, cfg.height, cfg.fps, cfg.loop)


@dataclass(frozen=True)
class CameraStatus:
    ok: bool
    message: str
    frames: int
    since: float  # time.time() of the last change of ok/message


class Camera:
    """Reads one source in a background thread; keeps the newest frame; reopens after any failure."""

    def __init__(self, factory: Callable[[], FrameSource], retry_s: float = 2.0) -> None:
        """``factory`` makes a fresh source for every (re)opening."""
        self._factory = factory
        self.retry_s = retry_s
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._count = 0
        self._status = CameraStatus(False, "starting", 0, time.time())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, cfg: CameraConfig) -> Camera:
        return cls(lambda: make_source(cfg), cfg.retry_s)

    def start(self) -> Camera:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="camera", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def status(self) -> CameraStatus:
        return self._status

    def latest(self) -> Frame | None:
        return self._frame

    def wait_frame(self, after: int = -1, timeout: float = 1.0) -> Frame | None:
        """The newest frame with index > ``after``, waiting up to ``timeout``; None if none came."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stop.is_set():
                if self._frame is not None and self._frame.index > after:
                    return self._frame
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
        return None

    def _set_status(self, ok: bool, message: str) -> None:
        if (ok, message) != (self._status.ok, self._status.message):
            (log.info if ok else log.warning)("camera: %s", message)
            self._status = CameraStatus(ok, message, self._count, time.time())

    def _run(self) -> None:
        while not self._stop.is_set():
            source: FrameSource | None = None
            try:
                source = self._factory()
                source.open()
                self._set_status(True, f"{source.description}: live")
                while not self._stop.is_set():
                    rgb = source.read()
                    with self._cond:
                        self._count += 1
                        self._frame = Frame(rgb, time.time(), self._count)
                        self._cond.notify_all()
            except CameraError as exc:
                self._set_status(False, f"{exc}; retrying in {self.retry_s:g} s")
            except Exception as exc:  # a driver bug must not end the kiosk's camera for good
                log.exception("camera source failed")
                self._set_status(False, f"camera error ({type(exc).__name__}: {exc}); retrying in {self.retry_s:g} s")
            finally:
                if source is not None:
                    source.close()
            self._stop.wait(self.retry_s)
