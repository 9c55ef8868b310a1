"""The patient's phone page, opened from the kiosk's QR code: ``/p/<token>``.

No app and no login: the token in the link is the key. The cloud holds only its SHA-256 (sent in
the capture), so the page hashes the token and finds the one case with that hash; nothing in
these routes takes a case id, so a token opens its own report and nothing else. A token expires
``dashboard.pairing_token_days`` after the capture was taken and can be revoked by staff; both
then get a clear page (410) instead of the report. The page shows the cloud and kiosk results,
advice with the disclaimer, the doctor's feedback and the chat with the medical staff, live.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request

from cloud.dashboard import i18n
from cloud.dashboard.auth import audit
from cloud.dashboard.events import stream
from contract import ChatMessage, utc_now

bp = Blueprint("phone", __name__, url_prefix="/p")

TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
MAX_MESSAGE = 1000  # characters per patient message
PER_MINUTE = 5  # patient messages per case
PER_DAY = 40


class Gone(Exception):
    def __init__(self, reason: str, locale: str) -> None:
        self.reason = reason  # expired | revoked
        self.locale = locale  # the capture's, for the page that says so


def _state():
    return current_app.extensions["skinscan_dashboard"]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _lookup(token: str) -> tuple[dict[str, Any], str]:
    """The case this token opens; 404 if none, :class:`Gone` if expired or revoked."""
    if not TOKEN.fullmatch(token):
        abort(404)
    digest = token_hash(token)
    storage = _state().storage
    case = storage.case_by_token_hash(digest)
    if case is None:
        abort(404)
    if storage.pairing_revocation(digest) is not None:
        raise Gone("revoked", case["locale"])
    if utc_now() > case["captured_at"] + timedelta(days=_state().cfg.dashboard.pairing_token_days):
        raise Gone("expired", case["locale"])
    return case, digest


def _actor(digest: str) -> str:
    return f"patient:{digest[:12]}"


def _locale(case: dict[str, Any] | None = None) -> str:
    return i18n.locale_of(request.args.get("lang"), case["locale"] if case else "en")


@bp.errorhandler(Gone)
def _gone(exc: Gone):
    if request.path.rstrip("/").count("/") > 2 or request.method != "GET":  # state, events, messages
        return jsonify(error=exc.reason, status=410), 410
    locale = i18n.locale_of(request.args.get("lang"), exc.locale)
    t = i18n.STRINGS[locale]
    return render_template("phone_gone.html", t=t, locale=locale, dir=i18n.DIRECTION[locale],
                           title=t[f"{exc.reason}_title"],
                           body=t[f"{exc.reason}_body"].format(days=_state().cfg.dashboard.pairing_token_days),
                           reason=exc.reason), 410


@bp.errorhandler(404)
def _not_found(exc):
    if request.path.rstrip("/").count("/") > 2:
        return jsonify(error="not found", status=404), 404
    locale = _locale()
    t = i18n.STRINGS[locale]
    return render_template("phone_gone.html", t=t, locale=locale, dir=i18n.DIRECTION[locale],
                           title=t["not_found_title"], body=t["not_found_body"], reason="not_found"), 404


def _prediction(p: dict[str, Any] | None, locale: str) -> dict[str, Any] | None:
    if p is None or p.get("label") is None:
        return None
    return {"label": p["label"], "name": i18n.class_name(p["label"], locale), "confidence": p["confidence"],
            "unsure": bool(p["unsure"])}


def report(case: dict[str, Any], locale: str) -> dict[str, Any]:
    """Everything the phone page shows, in the patient's language."""
    storage = _state().storage
    dangerous = _state().labels.dangerous
    cloud = _prediction({"label": case["label"], "confidence": case["confidence"], "unsure": case["unsure"]}, locale)
    device = _prediction(case["device_prediction"], locale)
    basis = cloud or device
    urgency, advice = (i18n.advice(basis["label"], basis["unsure"], dangerous, locale) if basis else ("unsure", ""))
    fb = storage.feedback(case["capture_id"])
    return {
        "captured_at": case["captured_at"].isoformat(),
        "cloud": cloud,
        "device": device,
        "urgency": urgency,
        "advice": advice,
        "feedback": None if fb is None else {
            "label": fb.label, "name": i18n.class_name(fb.label, locale), "recommendation": fb.recommendation,
            "urgent": fb.urgent, "doctor": fb.doctor, "given_at": fb.given_at.isoformat()},
        # Staff replies are signed "medical staff" on the page; the patient's own text is echoed back.
        "messages": [{"id": str(m.message_id), "sender": m.sender, "text": m.text, "sent_at": m.sent_at.isoformat()}
                     for m in storage.messages(case["capture_id"])],
    }


@bp.get("/<token>")
def page(token: str):
    case, digest = _lookup(token)
    locale = _locale(case)
    audit("phone.view", case["capture_id"], f"lang={locale}", actor=_actor(digest))
    return render_template("phone.html", t=i18n.STRINGS[locale], locale=locale, dir=i18n.DIRECTION[locale],
                           other_locale="en" if locale == "ar" else "ar", token=token, r=report(case, locale),
                           max_message=MAX_MESSAGE)


@bp.get("/<token>/state")
def state(token: str):
    case, _ = _lookup(token)
    return jsonify(report(case, _locale(case)))


@bp.get("/<token>/image")
def image(token: str):
    case, digest = _lookup(token)
    path = _state().storage.image_path(case["image_sha256"])
    if not path.is_file():
        abort(404)
    audit("phone.image", case["capture_id"], actor=_actor(digest))
    return Response(path.read_bytes(), mimetype=case["content_type"], headers={"Cache-Control": "private, no-store"})


@bp.get("/<token>/events")
def events(token: str):
    case, _digest = _lookup(token)
    capture_id = case["capture_id"]

    def still_valid() -> bool:
        try:
            _lookup(token)
        except Gone:
            return False
        return True

    return stream(_state().hub, lambda e: e.capture_id == capture_id and e.kind in ("feedback", "message"),
                  still_valid)


@bp.post("/<token>/messages")
def send_message(token: str):
    case, digest = _lookup(token)
    locale = _locale(case)
    t = i18n.STRINGS[locale]
    data = request.get_json(silent=True) if request.is_json else request.form
    text = str((data or {}).get("text", "")).strip()
    if not text:
        return jsonify(error="empty message"), 400
    if len(text) > MAX_MESSAGE:
        return jsonify(error=t["too_long"].format(n=MAX_MESSAGE)), 413
    storage = _state().storage
    now = utc_now()
    if (storage.count_messages(case["capture_id"], "patient", now - timedelta(minutes=1)) >= PER_MINUTE
            or storage.count_messages(case["capture_id"], "patient", now - timedelta(days=1)) >= PER_DAY):
        audit("phone.message.refused", case["capture_id"], "rate limit", actor=_actor(digest))
        return jsonify(error=t["too_many"]), 429
    message = ChatMessage(message_id=uuid.uuid4(), capture_id=case["capture_id"], sender="patient", author="",
                          text=text, sent_at=now)
    storage.add_message(message)
    audit("phone.message", case["capture_id"], f"{len(text)} characters", actor=_actor(digest))
    _state().hub.emit("message", case["capture_id"])
    if _state().relay is not None:
        _state().relay.message_stored(message)
    return jsonify(message={"id": str(message.message_id), "sender": "patient", "text": text,
                            "sent_at": now.isoformat()}), 201
