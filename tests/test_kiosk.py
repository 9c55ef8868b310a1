"""Every kiosk route through Flask's test client, with a real camera folder and the real model."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from contract.messages import Feedback, Result
from device import imageio
from device.kiosk import create_app
from settings import load_device
from tests.support import badimages, samples
from tests.support.uplink import MemoryUplink

PUBLIC = "https://care.example.org"


def _config(tmp_path: Path, manifest: Path, **extra: str):
    folder = tmp_path / "stream"
    if not folder.exists():
        samples.write_folder(folder, 4)
    env = {"SKINSCAN_CAMERA__SOURCE": "folder", "SKINSCAN_CAMERA__URI": str(folder),
           "SKINSCAN_CAMERA__FPS": "20", "SKINSCAN_MODEL__MANIFEST": str(manifest),
           "SKINSCAN_MODEL__THREADS": "1", "SKINSCAN_KIOSK__PUBLIC_URL": PUBLIC, **extra}
    return load_device(environ=env)


def _app(cfg, uplink=None, **kw):
    app = create_app(cfg, uplink, **kw)
    kiosk = app.extensions["skinscan_kiosk"]
    assert kiosk.camera.wait_frame(timeout=10) is not None
    return app, kiosk


@pytest.fixture
def offline(tmp_path: Path, model_manifest: Path):
    app, kiosk = _app(_config(tmp_path, model_manifest))
    yield app.test_client(), kiosk
    kiosk.stop()


@pytest.fixture
def online(tmp_path: Path, model_manifest: Path):
    uplink = MemoryUplink()
    app, kiosk = _app(_config(tmp_path, model_manifest), uplink)
    yield app.test_client(), kiosk, uplink
    kiosk.stop()


def _capture(client, **kw):
    resp = client.post("/api/capture", **kw)
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def test_index_in_english_and_arabic_is_self_contained(offline):
    client, _ = offline
    page = client.get("/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'dir="ltr"' in html and "Screening aid, not a diagnosis." in html
    assert "http://" not in html.replace('href="/', "") and "https://" not in html  # nothing from a CDN
    ar = client.get("/?lang=ar")
    html_ar = ar.get_data(as_text=True)
    assert 'dir="rtl"' in html_ar and 'lang="ar"' in html_ar and "أداة فحص مساعدة، وليست تشخيصًا." in html_ar
    assert "lang=ar" in ar.headers["Set-Cookie"]
    assert 'dir="rtl"' in client.get("/").get_data(as_text=True)  # the choice sticks
    for asset in ("kiosk.js", "kiosk.css", "report.css"):
        assert client.get(f"/static/{asset}").status_code == 200


def test_mjpeg_stream_delivers_jpeg_frames(offline):
    client, _ = offline
    resp = client.get("/stream.mjpg", buffered=False)
    assert resp.mimetype == "multipart/x-mixed-replace"
    parts = iter(resp.response)
    header, jpeg = next(parts), next(parts)
    assert b"Content-Type: image/jpeg" in header
    assert Image.open(io.BytesIO(jpeg)).size == (640, 480)
    resp.close()


def test_live_status_reports_camera_model_and_cloud(offline):
    client, kiosk = offline
    deadline = time.monotonic() + 15
    while kiosk.live.result is None and time.monotonic() < deadline:
        time.sleep(0.1)
    data = client.get("/api/live?lang=ar").get_json()
    assert data["camera"]["ok"] and "live" in data["camera"]["message"]
    assert data["model"]["ok"] and data["model"]["version"]
    assert data["cloud"] == {"configured": False, "connected": False}
    assert data["live"]["label"] in kiosk.diagnoser.classifier.labels


def test_capture_gives_an_instant_report_with_top3_and_disclaimer(offline):
    client, kiosk = offline
    data = _capture(client)
    labels = kiosk.diagnoser.classifier.labels
    r = data["report"]
    assert (data["width"], data["height"]) == (640, 480) and data["source"] == "camera"
    assert len(r["top"]) == min(3, len(labels))
    assert r["top"][0]["label"] == r["label"]
    probs = [row["probability"] for row in r["top"]]
    assert probs == sorted(probs, reverse=True)
    for row in r["top"]:
        assert row["urgency"] in {"soon", "routine"} and row["advice"] and row["urgency_text"]
    assert r["disclaimer"] == "Screening aid, not a diagnosis."
    assert r["user_crop"] is False and len(r["box"]) == 4
    img = client.get(data["image_url"])
    assert img.mimetype == "image/jpeg" and imageio.decode(img.data).shape == (480, 640, 3)
    crop = client.get(f"/captures/{data['capture_id']}/crop.jpg")
    x0, y0, x1, y1 = r["box"]
    assert imageio.decode(crop.data).shape[:2] == (y1 - y0, x1 - x0)


def test_user_crop_and_bad_crops(offline):
    client, _ = offline
    cid = _capture(client)["capture_id"]
    url = f"/api/captures/{cid}/diagnose"
    r = client.post(url, json={"box": [100, 80, 420, 400]}).get_json()["report"]
    assert r["box"] == [100, 80, 420, 400] and r["user_crop"] is True
    swapped = client.post(url, json={"box": [420, 400, 100, 80]}).get_json()["report"]
    assert swapped["box"] == [100, 80, 420, 400]
    auto = client.post(url, json={"box": None}).get_json()["report"]
    assert auto["user_crop"] is False
    for bad in ([1, 2, 3], [0, 0, 5, 5], "all", [0, 0, "a", 9]):
        resp = client.post(url, json={"box": bad})
        assert resp.status_code == 400 and resp.get_json()["error"]
    assert client.post(url, data="box").status_code == 400
    assert client.post(f"/api/captures/{uuid.uuid4()}/diagnose", json={"box": None}).status_code == 404


def test_uploaded_photos_bad_and_good(offline):
    client, _ = offline
    for name, (data, phrase) in badimages.unusable().items():
        resp = client.post("/api/capture", data={"image": (io.BytesIO(data), name)})
        assert resp.status_code == 400, name
        assert phrase in resp.get_json()["error"]
    for name, data in badimages.awkward().items():
        got = _capture(client, data={"image": (io.BytesIO(data), name)})
        assert got["report"]["label"]
    # the kiosk keeps running after all that
    assert client.get("/api/live").get_json()["camera"]["ok"]


def test_report_in_arabic_and_printable_page(offline):
    client, _ = offline
    cid = _capture(client, query_string={"lang": "ar"})["capture_id"]
    r = client.post(f"/api/captures/{cid}/diagnose", json={"box": None, "lang": "ar"}).get_json()["report"]
    assert r["disclaimer"] == "أداة فحص مساعدة، وليست تشخيصًا."
    page = client.get(f"/captures/{cid}/report?lang=en").get_data(as_text=True)
    assert page.count("Screening aid, not a diagnosis.") >= 2
    assert page.count('class="top-row"') == len(r["top"])
    assert "window.print()" in page and "not connected to the cloud service" in page
    page_ar = client.get(f"/captures/{cid}/report?lang=ar").get_data(as_text=True)
    assert 'dir="rtl"' in page_ar
    assert client.get(f"/captures/{uuid.uuid4()}/report").status_code == 404


def test_send_without_uplink_says_not_connected(offline):
    client, _ = offline
    cid = _capture(client)["capture_id"]
    resp = client.post(f"/api/captures/{cid}/send", json={})
    assert resp.status_code == 503 and resp.get_json()["state"] == "offline"
    assert client.get(f"/api/captures/{cid}/status").get_json()["state"] == "offline"


def test_send_to_a_doctor_with_pairing_and_feedback(online):
    client, kiosk, uplink = online
    cid = _capture(client, query_string={"lang": "ar"})["capture_id"]
    assert client.get(f"/api/captures/{cid}/status").get_json()["state"] == "not_sent"
    resp = client.post(f"/api/captures/{cid}/send", json={"lang": "ar"})
    assert resp.status_code == 202 and resp.get_json()["state"] == "sent"
    assert client.post(f"/api/captures/{cid}/send", json={}).status_code == 202  # a second tap...
    assert len(uplink.sent) == 1  # ...sends nothing more
    capture = uplink.sent[cid]
    rec = kiosk.get(cid)
    assert capture.device_id == "kiosk-01" and capture.locale == "ar"
    assert capture.device_prediction.label == rec.diagnosis.prediction.label
    assert capture.pairing_token_sha256 == hashlib.sha256(rec.token.encode()).hexdigest()
    assert rec.token not in json.dumps(capture.model_dump(mode="json"))  # only the hash travels
    x0, y0, x1, y1 = rec.diagnosis.box
    assert imageio.decode(capture.image).shape[:2] == (y1 - y0, x1 - x0)  # the analysed area
    # The QR code on the page encodes the public pairing link with the secret token.
    png = client.get(f"/captures/{cid}/pair.png").data
    qr = cv2.cvtColor(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), cv2.COLOR_RGB2BGR)
    text, _, _ = cv2.QRCodeDetector().detectAndDecode(qr)
    assert text == f"{PUBLIC}/p/{rec.token}"
    assert len(base64.urlsafe_b64decode(rec.token + "==")) == 24
    svg = client.get(f"/captures/{cid}/pair.svg")
    assert svg.mimetype == "image/svg+xml" and b"<svg" in svg.data
    now = datetime.now(UTC)
    uplink.answer(cid, Result(capture_id=cid, device_id="kiosk-01", produced_at=now, model_version="9",
                              label="nevus", confidence=0.9, probabilities={"nevus": 0.9}, unsure=False),
                  Feedback(capture_id=cid, device_id="kiosk-01", given_at=now, doctor="Dr. Haddad", label="nevus",
                           recommendation="Benign; check again in a year.", urgent=False))
    status = client.get(f"/api/captures/{cid}/status").get_json()
    assert status["state"] == "answered" and status["result"]["label"] == "nevus"
    assert status["feedback"]["doctor"] == "Dr. Haddad" and status["cloud"]["connected"] is True
    page = client.get(f"/captures/{cid}/report?lang=en").get_data(as_text=True)
    assert "Benign; check again in a year." in page and f"/captures/{cid}/pair.svg" in page


def test_send_failure_is_shown_and_kiosk_goes_on(tmp_path: Path, model_manifest: Path):
    app, kiosk = _app(_config(tmp_path, model_manifest), MemoryUplink(fail_with=OSError("outbox full (512 MiB)")))
    try:
        client = app.test_client()
        cid = _capture(client)["capture_id"]
        resp = client.post(f"/api/captures/{cid}/send", json={})
        assert resp.status_code == 502 and "outbox full" in resp.get_json()["error"]
        assert client.get(f"/api/captures/{cid}/status").get_json()["state"] == "failed"
        assert _capture(client)["report"]
    finally:
        kiosk.stop()


def test_without_model_the_kiosk_still_streams_and_says_why(tmp_path: Path):
    app, kiosk = _app(_config(tmp_path, tmp_path / "missing.json"))
    try:
        client = app.test_client()
        live = client.get("/api/live").get_json()
        assert live["model"]["ok"] is False and "missing.json" in live["model"]["error"]
        data = _capture(client)
        assert "model not loaded" in data["error"] and "report" not in data
        resp = client.post(f"/api/captures/{data['capture_id']}/diagnose", json={"box": None})
        assert resp.status_code == 400 and "model not loaded" in resp.get_json()["error"]
    finally:
        kiosk.stop()


def test_camera_missing_is_reported_not_fatal(tmp_path: Path, model_manifest: Path):
    cfg = _config(tmp_path, model_manifest, SKINSCAN_CAMERA__URI=str(tmp_path / "unplugged"),
                  SKINSCAN_CAMERA__RETRY_S="0.2")
    app = create_app(cfg)
    kiosk = app.extensions["skinscan_kiosk"]
    try:
        client = app.test_client()
        deadline = time.monotonic() + 10
        while "not found" not in kiosk.camera.status.message and time.monotonic() < deadline:
            time.sleep(0.05)
        live = client.get("/api/live").get_json()
        assert live["camera"]["ok"] is False and "not found" in live["camera"]["message"]
        resp = client.post("/api/capture")
        assert resp.status_code == 503 and "no camera picture" in resp.get_json()["error"]
        frame = client.get("/stream.mjpg", buffered=False)
        parts = iter(frame.response)
        next(parts)
        assert Image.open(io.BytesIO(next(parts))).size == (640, 480)  # a placeholder with the message
        frame.close()
        samples.write_folder(tmp_path / "unplugged", 2)  # plugged in: the kiosk recovers by itself
        assert kiosk.camera.wait_frame(timeout=10) is not None
        assert _capture(client)["report"]
    finally:
        kiosk.stop()
