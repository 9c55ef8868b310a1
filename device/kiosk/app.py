"""The kiosk page (Flask): live view, capture, crop, instant report, print, send to a doctor, QR pairing.

Everything is served from this package (no CDN), so the page works with no network at all.
The uplink to the cloud is optional: any object with ``send/state/stats`` (:class:`CloudUplink`), normally
``device.uplink.Uplink``; without one, "send to a doctor" says the kiosk is not connected.
"""

from __future__ import annotations

import hashlib
import io
import logging
import secrets
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import cv2
import numpy as np
import qrcode
import qrcode.image.svg
from flask import Flask, Response, abort, jsonify, make_response, render_template, request

from contract.messages import MAX_IMAGE_BYTES, Capture, DevicePrediction
from device import imageio, preprocess
from device.camera import Camera
from device.diagnose import Diagnoser, Diagnosis
from device.kiosk import i18n
from device.live import BOUNDARY, LiveStream
from device.updater import Updater
from settings import ConfigError, load_cloud
from settings.schema import DeviceConfig

log = logging.getLogger(__name__)

KEEP_CAPTURES = 20  # captures held in memory for crop/report/send; the outbox persists what is sent
MIN_CROP = 16
MAX_UPLOAD_BYTES = imageio.MAX_FILE_BYTES


class CloudUplink(Protocol):
    """What the kiosk needs from the MQTT side (``device.uplink.Uplink``)."""

    def send(self, capture: Capture) -> str: ...

    def state(self, capture_id: str) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]: ...


@dataclass
class CaptureRecord:
    id: str
    rgb: np.ndarray
    jpeg: bytes
    taken_at: datetime
    source: str  # camera | upload
    # The phone-pairing token lives only here and in the QR code; the cloud gets its SHA-256.
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    diagnosis: Diagnosis | None = None
    user_box: preprocess.Box | None = None
    sent: bool = False
    send_error: str | None = None

    @property
    def token_sha256(self) -> str:
        return hashlib.sha256(self.token.encode("ascii")).hexdigest()


class BadRequest(ValueError):
    """A request the kiosk cannot act on; the message is shown to the user."""


def public_base(cfg: DeviceConfig) -> str:
    """The base of pairing links: kiosk.public_url, else the dashboard's (same defaults on a laptop)."""
    if cfg.kiosk.public_url:
        return cfg.kiosk.public_url.rstrip("/")
    try:
        return load_cloud().dashboard.public_url.rstrip("/")
    except ConfigError:
        return ""


def jpeg_for_upload(rgb: np.ndarray) -> bytes:
    """A JPEG under the contract's size limit, scaling down a very large photo first."""
    img = rgb
    longest = max(img.shape[:2])
    if longest > 2048:
        s = 2048 / longest
        img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
    for quality in (90, 80, 65, 50):
        data = imageio.encode_jpeg(img, quality)
        if len(data) <= MAX_IMAGE_BYTES:
            return data
    raise BadRequest("the photo is too large to send even at low JPEG quality")


def qr_image(text: str, kind: str) -> bytes:
    """The pairing QR code rendered here (no network): ``svg`` for the page, ``png`` for anything else."""
    if kind == "svg":
        img = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathImage, border=2)
    else:
        img = qrcode.make(text, border=2, box_size=6)
    buf = io.BytesIO()
    img.save(buf)
    return buf.getvalue()


class Kiosk:
    """State behind the page: camera, live stream, model, captures, uplink."""

    def __init__(self, cfg: DeviceConfig, *, uplink: CloudUplink | None = None, diagnoser: Diagnoser | None = None,
                 camera: Camera | None = None, load_model: bool = True, updater: Updater | None = None) -> None:
        self.cfg = cfg
        self.uplink = uplink
        self.updater = updater
        self.model_error: str | None = None
        if diagnoser is None and updater is not None:
            # Over-the-air updates swap the updater's slot; live frames and captures read it per diagnosis.
            diagnoser = Diagnoser(updater.slot, hair_removal=cfg.preprocess.hair_removal)
        elif diagnoser is None and load_model:
            from device.inference import BackendError
            from models.manifest import ManifestError

            try:
                diagnoser = Diagnoser.from_config(cfg)
            except (ManifestError, BackendError) as exc:
                log.error("running without a model: %s", exc)
                self.model_error = str(exc)
        elif diagnoser is None:
            self.model_error = "no model configured"
        self.diagnoser = diagnoser
        self.camera = camera or Camera.from_config(cfg.camera)
        s = cfg.stream
        self.live = LiveStream(self.camera, diagnoser, ema_alpha=s.ema_alpha, max_classify_hz=s.max_classify_hz,
                               jpeg_quality=s.jpeg_quality, size=(cfg.camera.width, cfg.camera.height))
        if self.model_error:
            self.live.model_error = f"model not loaded: {self.model_error}"[:90]
        self.public_url = public_base(cfg)
        self._captures: OrderedDict[str, CaptureRecord] = OrderedDict()
        self._lock = threading.Lock()

    def start(self) -> Kiosk:
        self.camera.start()
        self.live.start()
        return self

    def stop(self) -> None:
        self.live.stop()
        self.camera.stop()

    # -- captures -----------------------------------------------------------------------------------------

    def add_capture(self, rgb: np.ndarray, source: str) -> CaptureRecord:
        rec = CaptureRecord(id=str(uuid.uuid4()), rgb=rgb, jpeg=imageio.encode_jpeg(rgb, 90),
                            taken_at=datetime.now(UTC), source=source)
        with self._lock:
            self._captures[rec.id] = rec
            while len(self._captures) > KEEP_CAPTURES:
                self._captures.popitem(last=False)
        return rec

    def get(self, capture_id: str) -> CaptureRecord:
        with self._lock:
            rec = self._captures.get(capture_id)
        if rec is None:
            abort(404, description=f"no such capture (the kiosk keeps only the last {KEEP_CAPTURES})")
        return rec

    def diagnose(self, rec: CaptureRecord, box: preprocess.Box | None) -> Diagnosis:
        if self.diagnoser is None:
            raise BadRequest(f"model not loaded: {self.model_error}")
        rec.diagnosis = self.diagnoser.diagnose(rec.rgb, box)
        rec.user_box = box
        return rec.diagnosis

    def pairing_url(self, rec: CaptureRecord) -> str:
        return f"{self.public_url}/p/{rec.token}"

    def send(self, rec: CaptureRecord, locale: str) -> dict[str, Any]:
        if rec.diagnosis is None:
            raise BadRequest("analyse the photo before sending it")
        if self.uplink is None:
            return {"state": "offline", "connected": False}
        if rec.sent:  # a second tap must not queue the photo twice
            return self.upload_state(rec)
        p = rec.diagnosis.prediction
        capture = Capture.from_image(
            jpeg_for_upload(preprocess.crop(rec.rgb, rec.diagnosis.box)),
            capture_id=rec.id, device_id=self.cfg.device_id, captured_at=rec.taken_at,
            device_prediction=DevicePrediction(label=p.label, confidence=p.confidence,
                                               probabilities=p.probabilities, unsure=p.unsure,
                                               model_version=p.model_version),
            pairing_token_sha256=rec.token_sha256, locale=locale)
        try:
            self.uplink.send(capture)
        except Exception as exc:  # outbox full, disk error...: the user must see it, the kiosk go on
            log.exception("sending capture %s failed", rec.id)
            rec.send_error = str(exc) or type(exc).__name__
            return {"state": "failed", "error": rec.send_error}
        rec.sent, rec.send_error = True, None
        return self.upload_state(rec)

    def upload_state(self, rec: CaptureRecord) -> dict[str, Any]:
        if self.uplink is None:
            return {"state": "offline", "connected": False, "result": None, "feedback": None}
        if rec.send_error and not rec.sent:
            return {"state": "failed", "error": rec.send_error, "result": None, "feedback": None}
        if not rec.sent:
            return {"state": "not_sent", "result": None, "feedback": None}
        try:
            st = self.uplink.state(rec.id)
        except Exception as exc:
            log.exception("uplink state failed")
            return {"state": "unknown", "error": str(exc), "result": None, "feedback": None}
        out: dict[str, Any] = {"state": st.get("state", "unknown")}
        for key in ("result", "feedback"):
            value = st.get(key)
            out[key] = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
        return out

    def model(self) -> dict[str, Any]:
        """The model serving now and, with over-the-air updates, what the last update did."""
        if self.diagnoser is None:
            return {"ok": False, "error": self.model_error, "version": None, "update": None}
        out: dict[str, Any] = {"ok": True, "error": None, "version": self.diagnoser.slot.version, "update": None}
        if self.updater is not None:
            summary = self.updater.summary()
            out["update"] = {k: summary[k] for k in ("previous", "last_update", "rollback")}
        return out

    def cloud(self) -> dict[str, Any]:
        if self.uplink is None:
            return {"configured": False, "connected": False}
        try:
            stats = dict(self.uplink.stats())
        except Exception as exc:
            return {"configured": True, "connected": False, "error": str(exc)}
        return {"configured": True, **stats}

    # -- views --------------------------------------------------------------------------------------------

    def report_view(self, rec: CaptureRecord, locale: str) -> dict[str, Any]:
        """The report as the page shows it, in the page's language."""
        d = rec.diagnosis
        assert d is not None
        dangerous = d.model.manifest.dangerous  # the model that made this report, not the one serving now
        rows = []
        for label, prob in d.prediction.top(3):
            urgency = i18n.urgency_of(label, dangerous)
            rows.append({"label": label, "name": i18n.class_name(label, locale), "probability": round(prob, 4),
                         "urgency": urgency, "urgency_text": i18n.strings(locale)[f"urgency_{urgency}"],
                         "advice": i18n.advice(label, urgency, locale)})
        rep = d.report
        t = i18n.strings(locale)
        return {
            "capture_id": rec.id,
            "label": rep.label,
            "name": i18n.class_name(rep.label, locale),
            "confidence": round(rep.confidence, 4),
            "unsure": rep.unsure,
            "urgency": rep.urgency,
            "urgency_text": t[f"urgency_{rep.urgency}"],
            "advice": i18n.advice(rep.label, rep.urgency, locale),
            "see_doctor": rep.see_doctor,
            "top": rows,
            "quality_ok": d.quality.ok,
            "quality": [i18n.quality_message(q, locale) for q in d.quality.issues],
            "retake": rep.retake,
            "latency_ms": round(d.total_ms, 1),
            "model_version": rep.model_version,
            "box": list(d.box),
            "user_crop": rec.user_box is not None,
            "disclaimer": t["disclaimer"],
            "report_url": f"/captures/{rec.id}/report?lang={locale}",
        }


def _parse_box(raw: Any, shape: tuple[int, ...]) -> preprocess.Box | None:
    if raw is None:
        return None
    if not isinstance(raw, list | tuple) or len(raw) != 4 or not all(isinstance(v, int | float) for v in raw):
        raise BadRequest("box must be [x0, y0, x1, y1] in image pixels, or null for the automatic crop")
    h, w = shape[:2]
    x0, y0, x1, y1 = (round(float(v)) for v in raw)
    x0, x1 = sorted((max(0, min(w, x0)), max(0, min(w, x1))))
    y0, y1 = sorted((max(0, min(h, y0)), max(0, min(h, y1))))
    if x1 - x0 < MIN_CROP or y1 - y0 < MIN_CROP:
        raise BadRequest(f"the crop is too small: drag a rectangle of at least {MIN_CROP} px a side")
    return (x0, y0, x1, y1)


def create_app(cfg: DeviceConfig, uplink: CloudUplink | None = None, *, diagnoser: Diagnoser | None = None,
               camera: Camera | None = None, load_model: bool = True, start: bool = True,
               updater: Updater | None = None) -> Flask:
    """The kiosk's Flask app; its :class:`Kiosk` is ``app.extensions["skinscan_kiosk"]`` (call ``.stop()``).
    With an ``updater`` the kiosk serves ``updater.slot``, so an over-the-air update switches the model
    between two frames."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES + 1024 * 1024
    kiosk = Kiosk(cfg, uplink=uplink, diagnoser=diagnoser, camera=camera, load_model=load_model, updater=updater)
    app.extensions["skinscan_kiosk"] = kiosk
    if start:
        kiosk.start()

    def locale() -> str:
        chosen = request.args.get("lang") or request.cookies.get("lang")
        if request.is_json:
            chosen = (request.get_json(silent=True) or {}).get("lang") or chosen
        return i18n.locale_of(chosen, cfg.kiosk.locale)

    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest) -> tuple[Response, int]:
        return jsonify(error=str(exc)), 400

    @app.errorhandler(404)
    def not_found(exc: Exception) -> tuple[Response, int]:
        return jsonify(error=getattr(exc, "description", "not found")), 404

    @app.errorhandler(413)
    def too_large(_exc: Exception) -> tuple[Response, int]:
        return jsonify(error=f"upload too large (limit {MAX_UPLOAD_BYTES} bytes)"), 413

    @app.after_request
    def no_cache(resp: Response) -> Response:
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.get("/")
    def index() -> Response:
        loc = locale()
        resp = make_response(render_template(
            "index.html", t=i18n.strings(loc), lang=loc, dir=i18n.DIRECTION[loc], other="ar" if loc == "en" else "en",
            device_id=cfg.device_id))
        resp.set_cookie("lang", loc, samesite="Strict")
        return resp

    @app.get("/stream.mjpg")
    def stream() -> Response:
        return Response(kiosk.live.mjpeg(), mimetype=f"multipart/x-mixed-replace; boundary={BOUNDARY}")

    @app.get("/api/live")
    def live() -> Response:
        loc = locale()
        status = kiosk.camera.status
        result = kiosk.live.result
        live_json = None
        if result is not None and status.ok:
            live_json = result.as_json() | {"name": i18n.class_name(result.label, loc)}
        camera = {"ok": status.ok, "message": status.message, "since": status.since, "frames": status.frames}
        return jsonify(camera=camera, live=live_json,
                       stats=kiosk.live.stats(),
                       model=kiosk.model(),
                       cloud=kiosk.cloud())

    @app.post("/api/capture")
    def capture() -> tuple[Response, int]:
        upload = request.files.get("image")
        if upload is not None:
            rgb = imageio.decode(upload.read(), upload.filename or "upload")
            source = "upload"
        else:
            frame = kiosk.camera.latest()
            if frame is None or not kiosk.camera.status.ok:
                return jsonify(error=f"no camera picture to capture: {kiosk.camera.status.message}"), 503
            rgb, source = frame.rgb, "camera"
        rec = kiosk.add_capture(rgb, source)
        body: dict[str, Any] = {"capture_id": rec.id, "source": rec.source, "width": rgb.shape[1],
                                "height": rgb.shape[0], "image_url": f"/captures/{rec.id}/image.jpg"}
        if kiosk.diagnoser is not None:
            kiosk.diagnose(rec, None)  # the instant report, on the automatic crop
            body["report"] = kiosk.report_view(rec, locale())
        else:
            body["error"] = f"model not loaded: {kiosk.model_error}"
        return jsonify(body), 201

    @app.errorhandler(imageio.ImageError)
    def bad_image(exc: imageio.ImageError) -> tuple[Response, int]:
        return jsonify(error=str(exc)), 400

    @app.get("/captures/<capture_id>/image.jpg")
    def capture_image(capture_id: str) -> Response:
        return Response(kiosk.get(capture_id).jpeg, mimetype="image/jpeg")

    @app.get("/captures/<capture_id>/crop.jpg")
    def crop_image(capture_id: str) -> Response:
        rec = kiosk.get(capture_id)
        if rec.diagnosis is None:
            abort(404, description="not analysed yet")
        return Response(imageio.encode_jpeg(preprocess.crop(rec.rgb, rec.diagnosis.box), 90), mimetype="image/jpeg")

    @app.post("/api/captures/<capture_id>/diagnose")
    def diagnose(capture_id: str) -> Response:
        rec = kiosk.get(capture_id)
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise BadRequest('send JSON: {"box": [x0, y0, x1, y1]} or {"box": null}')
        kiosk.diagnose(rec, _parse_box(body.get("box"), rec.rgb.shape))
        return jsonify(report=kiosk.report_view(rec, locale()))

    @app.get("/captures/<capture_id>/report")
    def printable(capture_id: str) -> str:
        rec = kiosk.get(capture_id)
        if rec.diagnosis is None:
            abort(404, description="not analysed yet")
        loc = locale()
        return render_template("report.html", t=i18n.strings(loc), lang=loc, dir=i18n.DIRECTION[loc],
                               r=kiosk.report_view(rec, loc), rec=rec, device_id=cfg.device_id,
                               state=kiosk.upload_state(rec),
                               taken=rec.taken_at.strftime("%Y-%m-%d %H:%M UTC"))

    @app.post("/api/captures/<capture_id>/send")
    def send(capture_id: str) -> tuple[Response, int]:
        result = kiosk.send(kiosk.get(capture_id), locale())
        code = {"offline": 503, "failed": 502}.get(result["state"], 202)
        return jsonify(result), code

    @app.get("/api/captures/<capture_id>/status")
    def upload_status(capture_id: str) -> Response:
        rec = kiosk.get(capture_id)
        return jsonify(kiosk.upload_state(rec) | {"cloud": kiosk.cloud()})

    @app.get("/captures/<capture_id>/pair.<any(svg, png):kind>")
    def pair_qr(capture_id: str, kind: str) -> Response:
        rec = kiosk.get(capture_id)
        mimetype = "image/svg+xml" if kind == "svg" else "image/png"
        return Response(qr_image(kiosk.pairing_url(rec), kind), mimetype=mimetype)

    return app
