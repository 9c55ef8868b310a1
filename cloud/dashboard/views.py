"""Staff pages: triage queue, case view (review, chat, revoke), images, live events, audit log."""

from __future__ import annotations

import io
import uuid
from typing import Any

from flask import Blueprint, Response, abort, current_app, g, jsonify, redirect, render_template, request, url_for
from PIL import Image

from cloud.dashboard import triage
from cloud.dashboard.auth import audit, require
from cloud.dashboard.events import stream
from cloud.dashboard.i18n import class_name
from contract import ChatMessage, utc_now
from contract.messages import MAX_TEXT

bp = Blueprint("views", __name__)
THUMB_PX = 160
STAFF = ("dermatologist", "admin")


def _state():
    return current_app.extensions["skinscan_dashboard"]


def _case_or_404(capture_id: str) -> dict[str, Any]:
    try:
        capture_id = str(uuid.UUID(capture_id))
    except ValueError:
        abort(404)
    case = _state().storage.case(capture_id)
    if case is None:
        abort(404)
    return case


def _wants_json() -> bool:
    return request.is_json or request.accept_mimetypes.best == "application/json"


@bp.get("/")
@require(*STAFF)
def index():
    return redirect(url_for("views.queue"))


@bp.get("/queue")
@require(*STAFF)
def queue():
    state = _state()
    filters = triage.Filters.from_args(request.args)
    rows = triage.queue(state.storage, state.labels, filters)
    audit("queue.view", "", " ".join(f"{k}={v}" for k, v in filters.as_dict().items() if v))
    devices = sorted({r["device_id"] for r in state.storage.cases(limit=triage.QUEUE_LIMIT)})
    return render_template("queue.html", rows=rows, filters=filters.as_dict(), labels=state.labels,
                           devices=devices, statuses=triage.STATUSES, flags=triage.FLAGS)


@bp.get("/api/queue")
@require(*STAFF)
def queue_json():
    # The queue page's live refresh (after an event): the page view itself is what is audited.
    state = _state()
    return jsonify(rows=triage.queue(state.storage, state.labels, triage.Filters.from_args(request.args)))


@bp.get("/events")
@require(*STAFF)
def events():
    capture_id = request.args.get("case")
    return stream(_state().hub, lambda e: capture_id is None or e.capture_id == capture_id)


def _case_context(case: dict[str, Any]) -> dict[str, Any]:
    state = _state()
    storage = state.storage
    reviews = storage.reviews(case["capture_id"])
    token_hash = case["pairing_token_sha256"]
    earlier = []
    revocation = None
    if token_hash:
        earlier = [c for c in storage.cases_by_token_hash(token_hash) if c["capture_id"] != case["capture_id"]]
        revocation = storage.pairing_revocation(token_hash)
    f = triage.flags(case, reviews[-1] if reviews else None, state.labels.dangerous)
    return {"case": case, "reviews": reviews, "earlier": earlier, "revocation": revocation, "flags": f,
            "messages": storage.messages(case["capture_id"]), "labels": state.labels,
            "choices": [(label, class_name(label, "en")) for label in state.labels.choices],
            "latest": reviews[-1] if reviews else None, "class_name": lambda lbl: class_name(lbl, "en"),
            "expires_at": case["captured_at"] + _token_lifetime()}


def _token_lifetime():
    from datetime import timedelta

    return timedelta(days=_state().cfg.dashboard.pairing_token_days)


@bp.get("/cases/<capture_id>")
@require(*STAFF)
def case_view(capture_id: str):
    case = _case_or_404(capture_id)
    audit("case.view", case["capture_id"])
    return render_template("case.html", **_case_context(case))


@bp.get("/api/cases/<capture_id>")
@require(*STAFF)
def case_json(capture_id: str):
    case = _case_or_404(capture_id)
    storage = _state().storage
    reviews = storage.reviews(case["capture_id"])
    return jsonify(
        messages=[m.model_dump(mode="json") for m in storage.messages(case["capture_id"])],
        reviews=[{**r, "given_at": r["given_at"].isoformat(),
                  "relayed_at": r["relayed_at"].isoformat() if r["relayed_at"] else None} for r in reviews])


def _image(case: dict[str, Any], thumb: bool) -> Response:
    path = _state().storage.image_path(case["image_sha256"])
    if not path.is_file():
        abort(404)
    if not thumb:
        data, mimetype = path.read_bytes(), case["content_type"]
    else:
        with Image.open(path) as img:
            img.thumbnail((THUMB_PX, THUMB_PX))
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="JPEG", quality=80)
        data, mimetype = buf.getvalue(), "image/jpeg"
    # Medical images: never kept by shared caches.
    return Response(data, mimetype=mimetype, headers={"Cache-Control": "private, max-age=3600"})


@bp.get("/cases/<capture_id>/image")
@require(*STAFF)
def image(capture_id: str):
    case = _case_or_404(capture_id)
    audit("case.image", case["capture_id"])
    return _image(case, thumb=False)


@bp.get("/cases/<capture_id>/thumb")
@require(*STAFF)
def thumb(capture_id: str):
    # Shown only in the queue, whose view is audited.
    return _image(_case_or_404(capture_id), thumb=True)


@bp.post("/cases/<capture_id>/review")
@require("dermatologist")
def review(capture_id: str):
    state = _state()
    case = _case_or_404(capture_id)
    label = request.form.get("label", "")
    recommendation = request.form.get("recommendation", "").strip()
    urgent = request.form.get("urgent") in ("on", "1", "true")
    if label not in state.labels.choices:
        abort(400, description=f"choose a diagnosis from the list ({', '.join(state.labels.choices)})")
    if len(recommendation) > MAX_TEXT:
        abort(400, description=f"the recommendation is longer than {MAX_TEXT} characters")
    feedback = state.storage.add_review(case["capture_id"], g.user["username"], label, recommendation, urgent)
    confirmed = "confirmed" if label == case["label"] else f"corrected from {case['label']}"
    audit("case.review", case["capture_id"], f"label={label} ({confirmed}) urgent={urgent}")
    state.hub.emit("feedback", case["capture_id"])
    if state.relay is not None:
        state.relay.feedback_stored(feedback)
    if _wants_json():
        return jsonify(feedback=feedback.model_dump(mode="json"))
    return redirect(url_for("views.case_view", capture_id=case["capture_id"]), code=303)


@bp.post("/cases/<capture_id>/messages")
@require(*STAFF)
def reply(capture_id: str):
    state = _state()
    case = _case_or_404(capture_id)
    text = (request.get_json(silent=True) or {}).get("text") if request.is_json else request.form.get("text")
    text = (text or "").strip()
    if not text or len(text) > MAX_TEXT:
        abort(400, description=f"a reply needs 1 to {MAX_TEXT} characters")
    message = ChatMessage(message_id=uuid.uuid4(), capture_id=case["capture_id"], sender="staff",
                          author=g.user["username"], text=text, sent_at=utc_now())
    state.storage.add_message(message)
    audit("chat.reply", case["capture_id"], f"{len(text)} characters")
    state.hub.emit("message", case["capture_id"])
    if state.relay is not None:
        state.relay.message_stored(message)
    if _wants_json():
        return jsonify(message=message.model_dump(mode="json"))
    return redirect(url_for("views.case_view", capture_id=case["capture_id"]) + "#chat", code=303)


@bp.post("/cases/<capture_id>/revoke")
@require(*STAFF)
def revoke(capture_id: str):
    state = _state()
    case = _case_or_404(capture_id)
    if not case["pairing_token_sha256"]:
        abort(400, description="this case has no phone link")
    state.storage.revoke_pairing(case["pairing_token_sha256"], g.user["username"])
    audit("pairing.revoke", case["capture_id"])
    state.hub.emit("message", case["capture_id"])  # open phone pages re-check and close
    return redirect(url_for("views.case_view", capture_id=case["capture_id"]), code=303)


@bp.get("/audit")
@require("admin")
def audit_log():
    storage = _state().storage
    actor = request.args.get("actor", "")[:120] or None
    action = request.args.get("action", "")[:64] or None
    try:
        page = max(0, int(request.args.get("page", "0")))
    except ValueError:
        page = 0
    audit("audit.view", "", f"actor={actor or ''} action={action or ''} page={page}")
    entries = storage.audit_entries(limit=200, offset=page * 200, actor=actor, action=action)
    return render_template("audit.html", entries=entries, actor=actor or "", action=action or "", page=page,
                           users=storage.users())


@bp.get("/models")
@require(*STAFF)
def models():
    """Every model version with its val metrics and how often doctors disagreed with it."""
    from cloud.registry import Registry

    storage = _state().storage
    audit("models.view", "")
    records = Registry(storage.engine).all()
    return render_template("models.html", records=records, disagreement=storage.disagreement_by_model())


@bp.app_errorhandler(400)
@bp.app_errorhandler(403)
@bp.app_errorhandler(404)
@bp.app_errorhandler(413)
def error_page(exc):
    if request.path.startswith(("/api/", "/p/")) or _wants_json():
        return jsonify(error=exc.description, status=exc.code), exc.code
    return render_template("error.html", code=exc.code, name=exc.name, description=exc.description), exc.code
