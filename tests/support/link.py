"""Helpers for tests of the device <-> cloud link: configs pointing at the test broker, images, waiting."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from settings import CloudConfig, DeviceConfig, load_cloud, load_device
from tests.support.broker import ROOT, Broker

SHARED_VAL = Path(os.environ.get("SKINSCAN_SHARED", ROOT.parent / "shared")) / "data" / "skin" / "val"


def manifest_path() -> Path:
    """The model the tests run: the project's models/model.json (real or the small dev model)."""
    path = Path(os.environ.get("SKINSCAN_TEST_MANIFEST", ROOT / "models" / "model.json"))
    if not path.is_file():
        pytest.skip(f"no model: {path} is absent (train one, or copy a small one there for development)")
    return path


def device_env(broker: Broker, device_id: str, tmp: Path, **extra: str) -> dict[str, str]:
    return {
        "SKINSCAN_DEVICE_ID": device_id,
        "SKINSCAN_DATA_DIR": str(tmp / device_id),
        "SKINSCAN_MQTT__PORT": str(broker.port),
        "SKINSCAN_MQTT__USERNAME": device_id,
        "SKINSCAN_MQTT__PASSWORD_FILE": str(broker.data_dir / "credentials" / f"{device_id}.secret"),
        "SKINSCAN_MQTT__KEEPALIVE_S": "5",
        "SKINSCAN_MODEL__MANIFEST": str(manifest_path()),
        "SKINSCAN_MODEL__THREADS": "1",
        "SKINSCAN_OUTBOX__PATH": str(tmp / device_id / "outbox.sqlite3"),
        "SKINSCAN_OUTBOX__RETRY_INITIAL_S": "1.0",
        "SKINSCAN_OUTBOX__RETRY_MAX_S": "2.0",
        **extra,
    }


def cloud_env(broker: Broker, tmp: Path, db_url: str | None = None, **extra: str) -> dict[str, str]:
    return {
        "SKINSCAN_DATA_DIR": str(tmp / "cloud"),
        "SKINSCAN_MQTT__PORT": str(broker.port),
        "SKINSCAN_MQTT__USERNAME": "cloud",
        "SKINSCAN_MQTT__PASSWORD_FILE": str(broker.data_dir / "credentials" / "cloud.secret"),
        "SKINSCAN_MQTT__KEEPALIVE_S": "5",
        "SKINSCAN_MODEL__MANIFEST": str(manifest_path()),
        "SKINSCAN_MODEL__THREADS": "1",
        "SKINSCAN_DATABASE__URL": db_url or f"sqlite:///{tmp / 'cloud' / 'cases.sqlite3'}",
        "SKINSCAN_STORAGE__IMAGE_DIR": str(tmp / "cloud" / "images"),
        "SKINSCAN_BROKER__DATA_DIR": str(broker.data_dir),
        **extra,
    }


def device_config(broker: Broker, device_id: str, tmp: Path, **extra: str) -> DeviceConfig:
    return load_device(environ=device_env(broker, device_id, tmp, **extra))


def cloud_config(broker: Broker, tmp: Path, db_url: str | None = None, **extra: str) -> CloudConfig:
    return load_cloud(environ=cloud_env(broker, tmp, db_url, **extra))


def synthetic_lesion(seed: int, size: int = 320) -> bytes:
    """A skin-coloured JPEG with a dark irregular blob: a real image file when ../shared is absent."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    skin = np.array([215, 170, 140], dtype=np.float64) + rng.normal(0, 6, (size, size, 3))
    cx, cy = size / 2 + rng.uniform(-30, 30, 2)
    r = size / 6 * (1 + 0.25 * np.sin(np.arctan2(yy - cy, xx - cx) * rng.integers(3, 7)))
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
    skin[inside] = np.array([110, 70, 50]) + rng.normal(0, 10, (int(inside.sum()), 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(skin, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def sample_images(n: int) -> list[bytes]:
    """``n`` JPEG files' bytes: real dermoscopy images from ../shared when present, else synthetic ones."""
    if SHARED_VAL.is_dir():
        files = sorted(SHARED_VAL.rglob("*.jpg"))[: max(n, 1)]
        if files:
            return [files[i % len(files)].read_bytes() for i in range(n)]
    return [synthetic_lesion(i) for i in range(n)]


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
