"""Camera sources: real folders and video files through OpenCV; only the Pi camera module is faked."""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest

from device import camera as cam
from settings import load_device
from tests.support import samples


def _red_jpeg(path: Path) -> None:
    img = np.zeros((48, 64, 3), dtype=np.uint8)
    img[:] = (0, 0, 230)  # BGR: red
    cv2.imwrite(str(path), img)


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_folder_source_gives_rgb_frames_in_order_and_skips_bad_files(tmp_path: Path):
    _red_jpeg(tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_text("not an image")
    samples.write_folder(tmp_path / "sub", 1)  # subfolders are not images
    cv2.imwrite(str(tmp_path / "c.png"), np.full((48, 64, 3), 255, np.uint8))
    src = cam.FolderSource(str(tmp_path), 640, 480, fps=100, loop=False)
    src.open()
    first = src.read()
    assert first.shape == (48, 64, 3) and first[0, 0, 0] > 200 and first[0, 0, 2] < 30  # RGB order
    assert src.read().min() == 255
    with pytest.raises(cam.EndOfStream):
        src.read()


def test_folder_source_errors(tmp_path: Path):
    with pytest.raises(cam.CameraError, match="not found"):
        cam.FolderSource(str(tmp_path / "nope"), 640, 480, 10).open()
    with pytest.raises(cam.CameraError, match="no readable images"):
        cam.FolderSource(str(tmp_path), 640, 480, 10).open()


def test_large_frames_are_scaled_to_the_configured_size(tmp_path: Path):
    cv2.imwrite(str(tmp_path / "big.jpg"), samples.skin_photo(1600, 1200)[..., ::-1])
    src = cam.FolderSource(str(tmp_path), 640, 480, fps=100)
    src.open()
    assert src.read().shape == (480, 640, 3)


def test_video_file_plays_in_real_time_ends_and_loops(tmp_path: Path):
    video = samples.write_video(tmp_path / "v.avi", count=10, fps=25)
    src = cam.OpenCVSource(str(video), 640, 480, fps=15, loop=False)
    src.open()
    start = time.monotonic()
    frames = []
    with pytest.raises(cam.EndOfStream, match="ended"):
        while True:
            frames.append(src.read())
    elapsed = time.monotonic() - start
    src.close()
    assert len(frames) == 10 and frames[0].shape == (480, 640, 3)
    assert frames[0][240, 10, 0] > frames[0][240, 10, 2]  # skin: more red than blue, so RGB order
    assert elapsed >= 9 / 25 * 0.8  # paced at the file's 25 fps, not decoded flat out
    looping = cam.OpenCVSource(str(video), 640, 480, fps=15, loop=True)
    looping.open()
    assert len([looping.read() for _ in range(15)]) == 15
    looping.close()


def test_opencv_missing_file_and_missing_webcam(tmp_path: Path):
    with pytest.raises(cam.CameraError, match="not found"):
        cam.OpenCVSource(str(tmp_path / "none.avi"), 640, 480, 15).open()
    with pytest.raises(cam.CameraError, match="cannot open camera 97"):
        cam.OpenCVSource("97", 640, 480, 15).open()
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"\0" * 1000)
    with pytest.raises(cam.CameraError):
        src = cam.OpenCVSource(str(junk), 640, 480, 15, loop=False)
        src.open()
        src.read()


def test_camera_reports_an_ended_video_and_retries(tmp_path: Path):
    video = samples.write_video(tmp_path / "v.avi", count=5, fps=50)
    camera = cam.Camera(lambda: cam.OpenCVSource(str(video), 640, 480, 15, loop=False), retry_s=0.3).start()
    try:
        _wait(lambda: camera.latest() is not None)
        _wait(lambda: not camera.status.ok)
        assert "ended" in camera.status.message and "retrying in 0.3 s" in camera.status.message
        count = camera.latest().index
        _wait(lambda: camera.latest().index > count)  # reopened and playing again
        frame = camera.wait_frame(camera.latest().index - 1, timeout=2)
        assert frame is not None and frame.timestamp <= time.time()
    finally:
        camera.stop()


def test_camera_survives_a_missing_source_that_appears_later(tmp_path: Path):
    folder = tmp_path / "later"
    camera = cam.Camera(lambda: cam.FolderSource(str(folder), 640, 480, 30), retry_s=0.2).start()
    try:
        _wait(lambda: "not found" in camera.status.message)
        assert camera.latest() is None and camera.wait_frame(timeout=0.1) is None
        samples.write_folder(folder, 2)
        _wait(lambda: camera.status.ok and camera.latest() is not None)
    finally:
        camera.stop()


class _FakePicamera2:
    """Stands in for picamera2.Picamera2: the first camera object is unplugged after 3 frames."""

    instances: ClassVar[list[_FakePicamera2]] = []

    def __init__(self) -> None:
        self.config: dict | None = None
        self.reads = 0
        self.started = self.closed = False
        _FakePicamera2.instances.append(self)

    def create_video_configuration(self, main: dict, controls: dict) -> dict:
        return {"main": main, "controls": controls}

    def configure(self, config: dict) -> None:
        self.config = config

    def start(self) -> None:
        self.started = True

    def capture_array(self, name: str) -> np.ndarray:
        time.sleep(0.02)  # the real call blocks until the sensor delivers the next frame
        self.reads += 1
        if self is _FakePicamera2.instances[0] and self.reads > 3:
            raise RuntimeError("Device or resource busy: camera unplugged")
        w, h = self.config["main"]["size"]
        arr = np.zeros((h, w, 3), np.uint8)
        arr[..., 0] = 200  # "BGR888" in picamera2 is R, G, B in memory
        return arr

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_picamera2(monkeypatch):
    _FakePicamera2.instances = []
    module = types.ModuleType("picamera2")
    module.Picamera2 = _FakePicamera2
    monkeypatch.setitem(sys.modules, "picamera2", module)
    return _FakePicamera2


def test_picamera2_source_configures_rgb_and_reports_unplugging(fake_picamera2):
    cfg = load_device(environ={"SKINSCAN_CAMERA__SOURCE": "picamera2", "SKINSCAN_CAMERA__RETRY_S": "0.2"})
    camera = cam.Camera.from_config(cfg.camera).start()
    try:
        _wait(lambda: camera.latest() is not None)
        frame = camera.latest()
        assert frame.rgb.shape == (480, 640, 3) and frame.rgb[0, 0, 0] == 200
        pi = fake_picamera2.instances[0]
        assert pi.config == {"main": {"size": (640, 480), "format": "BGR888"}, "controls": {"FrameRate": 30.0}}
        _wait(lambda: "Pi camera stopped delivering frames" in camera.status.message)
        _wait(lambda: len(fake_picamera2.instances) >= 2 and camera.status.ok)  # plugged back: reopened
        assert pi.closed
    finally:
        camera.stop()


def test_picamera2_absent_is_a_camera_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails as on a laptop
    with pytest.raises(cam.CameraError, match="picamera2 is not available"):
        cam.PiCamera2Source(640, 480, 15).open()
