"""Live-stream diagnosis: frame dropping, smoothing, overlay and MJPEG, on a real video and model."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from device.camera import Camera, OpenCVSource
from device.diagnose import Diagnoser
from device.inference import Classifier
from device.live import LiveResult, LiveStream, Smoother, draw_overlay, placeholder
from tests.support import samples


def test_smoother_is_an_exponential_moving_average():
    s = Smoother(0.25)
    assert np.allclose(s.update(np.array([1.0, 0.0])), [1.0, 0.0])
    assert np.allclose(s.update(np.array([0.0, 1.0])), [0.75, 0.25])
    s.reset()
    assert np.allclose(s.update(np.array([0.2, 0.8])), [0.2, 0.8])


def test_smoothing_stops_a_flickering_label():
    s = Smoother(0.3)
    labels = []
    for i in range(20):  # the raw label flips every frame between a strong and a weak class
        raw = np.array([0.7, 0.3]) if i % 2 == 0 else np.array([0.45, 0.55])
        labels.append(int(np.argmax(s.update(raw))))
    assert set(labels) == {0}


def test_overlay_draws_label_and_warnings_without_touching_the_frame():
    frame = samples.skin_photo(640, 480)
    result = LiveResult(label="nevus", name="Mole (nevus)", confidence=0.8, unsure=False,
                        probabilities={"nevus": 0.8}, ms=12.0, warnings=["retake: too blurry"], box=(100, 50, 500, 450))
    out = draw_overlay(frame, result)
    assert out.shape == frame.shape and not np.array_equal(out, frame)
    assert out[5:40, :300].mean() < frame[5:40, :300].mean() - 50  # dark banner behind the text
    assert np.array_equal(frame, samples.skin_photo(640, 480))  # the capture stays clean
    assert placeholder(320, 240, "camera unplugged").shape == (240, 320, 3)


@pytest.fixture
def stream(tmp_path: Path, model_manifest: Path):
    video = samples.write_video(tmp_path / "v.avi", count=40, fps=25)
    camera = Camera(lambda: OpenCVSource(str(video), 640, 480, 25, loop=True), retry_s=0.2).start()
    live = LiveStream(camera, Diagnoser(Classifier(model_manifest, threads=1)), ema_alpha=0.3,
                      max_classify_hz=8).start()
    yield live
    live.stop()
    camera.stop()


@pytest.mark.slow
def test_live_stream_classifies_drops_frames_and_serves_mjpeg(stream: LiveStream):
    parts = stream.mjpeg()
    chunks = [next(parts) for _ in range(3)]
    header = chunks[0].decode()
    assert header.startswith("--frame\r\nContent-Type: image/jpeg\r\n")
    assert int(header.split("Content-Length: ")[1].split("\r\n")[0]) == len(chunks[1])
    assert Image.open(io.BytesIO(chunks[1])).size == (640, 480)
    parts.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (stream.result is None or stream.classify_rate.per_second == 0):
        time.sleep(0.1)
    time.sleep(1.5)
    result = stream.result
    assert result is not None and result.label in stream.diagnoser.classifier.labels
    assert abs(sum(result.probabilities.values()) - 1) < 1e-3
    stats = stream.stats()
    # classification is capped at 8/s while the video runs at ~25 fps: frames are dropped, not queued
    assert 0 < stats["classifications_per_s"] <= 9
    assert stats["overlay_fps"] > stats["classifications_per_s"]
    assert stream.camera.latest().index - result.frame_index < 25
