"""Helpers for dashboard tests: a config on temporary paths, seeded cases, logged-in test clients."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from pathlib import Path

from cloud.dashboard.auth import add_user
from cloud.dashboard.triage import LabelSet
from cloud.storage import Storage
from contract import Capture, DevicePrediction, Result, utc_now
from settings import CloudConfig, load_cloud
from tests.support.link import synthetic_lesion

LABELS = LabelSet(["melanoma", "nevus", "eczema"], ["melanoma"])
PASSWORD = "correct horse battery"


def dashboard_env(tmp: Path, db_url: str | None = None, **extra: str) -> dict[str, str]:
    return {
        "SKINSCAN_DATA_DIR": str(tmp / "cloud"),
        "SKINSCAN_DATABASE__URL": db_url or f"sqlite:///{tmp / 'cloud' / 'cases.sqlite3'}",
        "SKINSCAN_STORAGE__IMAGE_DIR": str(tmp / "cloud" / "images"),
        "SKINSCAN_DASHBOARD__SECRET_KEY_FILE": str(tmp / "cloud" / "secret_key"),
        "SKINSCAN_UPDATES__BUNDLE_DIR": str(tmp / "cloud" / "bundles"),
        "SKINSCAN_MODEL__MANIFEST": str(tmp / "no-model.json"),
        **extra,
    }


def dashboard_config(tmp: Path, **extra: str) -> CloudConfig:
    return load_cloud(environ=dashboard_env(tmp, **extra))


def probs(label: str, p: float, labels: list[str] = LABELS.labels) -> dict[str, float]:
    rest = (1 - p) / (len(labels) - 1)
    return {x: (p if x == label else rest) for x in labels}


def seed_case(storage: Storage, i: int, *, device: str = "kiosk-a", cloud: tuple[str, float, bool] | None = None,
              kiosk: tuple[str, float, bool] | None = None, token: str | None = None,
              captured_at: datetime | None = None, received_at: datetime | None = None,
              locale: str = "en") -> tuple[Capture, str]:
    """Store one case (as the consumer would). Returns the capture and its phone token."""
    token = token or secrets.token_urlsafe(24)
    pred = None
    if kiosk:
        pred = DevicePrediction(label=kiosk[0], confidence=kiosk[1], probabilities=probs(kiosk[0], kiosk[1]),
                                unsure=kiosk[2], model_version="int8-test")
    cap = Capture.from_image(synthetic_lesion(i, size=96), device_id=device, device_prediction=pred,
                             pairing_token_sha256=hashlib.sha256(token.encode()).hexdigest(),
                             captured_at=captured_at or utc_now(), locale=locale)
    result = None
    if cloud:
        result = Result(capture_id=cap.capture_id, device_id=device, produced_at=utc_now(), model_version="float-test",
                        label=cloud[0], confidence=cloud[1], probabilities=probs(cloud[0], cloud[1]), unsure=cloud[2])
    storage.record_capture(cap, result, received_at=received_at)
    return cap, token


def make_users(storage: Storage) -> None:
    add_user(storage, "drhana", PASSWORD, "dermatologist")
    add_user(storage, "admin", PASSWORD, "admin")


def csrf(client) -> str:
    """The session's CSRF token (made by rendering any page that carries one)."""
    with client.session_transaction() as sess:
        token = sess.get("csrf")
    if token is None:
        client.get("/login")
        with client.session_transaction() as sess:
            token = sess["csrf"]
    return token


def login(client, username: str, password: str = PASSWORD):
    return client.post("/login", data={"username": username, "password": password, "csrf_token": csrf(client)})
