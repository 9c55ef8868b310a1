"""Dashboard and phone page through the Flask test client, on a real SQLite database."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest

from cloud.cli import main as cloud_main
from cloud.dashboard import create_app
from cloud.storage import Storage
from contract import utc_now
from tests.support.dashboard import (
    LABELS,
    PASSWORD,
    csrf,
    dashboard_config,
    dashboard_env,
    login,
    make_users,
    seed_case,
)


@pytest.fixture
def dash(tmp_path: Path):
    cfg = dashboard_config(tmp_path)
    storage = Storage(cfg.database.url, cfg.storage.image_dir)
    app = create_app(cfg, storage=storage, relay=False, labels=LABELS)
    app.config["TESTING"] = True
    make_users(storage)
    yield app, storage
    app.extensions["skinscan_dashboard"].stop()
    storage.close()


@pytest.fixture
def case(dash):
    _, storage = dash
    return seed_case(storage, 1, cloud=("melanoma", 0.81, False), kiosk=("nevus", 0.6, False))


def _doctor(app):
    client = app.test_client()
    assert login(client, "drhana").status_code == 302
    return client


def _admin(app):
    client = app.test_client()
    assert login(client, "admin").status_code == 302
    return client


STAFF_GETS = ["/", "/queue", "/api/queue", "/events", "/cases/{id}", "/api/cases/{id}", "/cases/{id}/image",
              "/cases/{id}/thumb", "/audit", "/models"]
STAFF_POSTS = ["/cases/{id}/review", "/cases/{id}/messages", "/cases/{id}/revoke"]


@pytest.mark.parametrize("route", STAFF_GETS + STAFF_POSTS)
def test_staff_routes_redirect_to_login_without_a_session(dash, case, route):
    app, _ = dash
    client = app.test_client()
    url = route.format(id=case[0].capture_id)
    if route in STAFF_POSTS:
        resp = client.post(url, data={"csrf_token": csrf(client), "label": "nevus", "text": "hi"})
    else:
        resp = client.get(url)
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/login?next=")


def test_login_logout_and_wrong_password(dash):
    app, storage = dash
    client = app.test_client()
    resp = client.post("/login", data={"username": "drhana", "password": "wrong password!", "csrf_token": csrf(client)})
    assert resp.status_code == 401 and b"Wrong username or password" in resp.data
    resp = client.post("/login", data={"username": "nobody", "password": PASSWORD, "csrf_token": csrf(client)})
    assert resp.status_code == 401
    # next= is followed only within the site
    resp = client.post("/login?next=//evil.example/x", data={"username": "drhana", "password": PASSWORD,
                                                            "csrf_token": csrf(client)})
    assert resp.status_code == 302 and resp.headers["Location"] == "/queue"
    assert client.get("/queue").status_code == 200
    assert client.post("/logout", data={"csrf_token": csrf(client)}).status_code == 302
    assert client.get("/queue").status_code == 302
    actions = [e["action"] for e in storage.audit_entries()]
    assert {"login", "login.failed", "logout", "queue.view"} <= set(actions)
    # The password itself is nowhere in the database, only its scrypt hash.
    assert storage.user("drhana")["password_hash"].startswith("scrypt:")


def test_repeated_login_failures_are_refused_for_a_while(dash):
    app, _ = dash
    client = app.test_client()
    for _ in range(5):
        client.post("/login", data={"username": "drhana", "password": "nope nope nope", "csrf_token": csrf(client)})
    resp = login(client, "drhana")  # even the right password
    assert resp.status_code == 429


def test_session_times_out_after_idle_minutes(dash):
    app, _ = dash
    client = _doctor(app)
    with client.session_transaction() as sess:
        sess["seen"] = time.time() - (app.extensions["skinscan_dashboard"].cfg.dashboard.session_timeout_min * 60 + 5)
    resp = client.get("/queue")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]
    assert b"session expired" in client.get(resp.headers["Location"]).data


def test_roles(dash, case):
    app, storage = dash
    doctor, admin = _doctor(app), _admin(app)
    cid = case[0].capture_id
    assert doctor.get("/audit").status_code == 403
    resp = admin.post(f"/cases/{cid}/review", data={"csrf_token": csrf(admin), "label": "nevus",
                                                    "recommendation": "x"})
    assert resp.status_code == 403
    assert storage.reviews(str(cid)) == []
    assert admin.get(f"/cases/{cid}").status_code == 200  # admins may look (and it is logged)
    # ...and answer the patient (a form post, back to the case's chat)
    resp = admin.post(f"/cases/{cid}/messages", data={"csrf_token": csrf(admin), "text": "The clinic will call you."})
    assert resp.status_code == 303 and resp.headers["Location"].endswith(f"/cases/{cid}#chat")
    state = admin.get(f"/api/cases/{cid}").get_json()
    assert [m["author"] for m in state["messages"]] == ["admin"] and state["reviews"] == []
    page = admin.get("/audit")
    assert page.status_code == 200
    text = page.data.decode()
    assert "denied" in text and "case.view" in text and "drhana" in text


@pytest.mark.parametrize("route", [*STAFF_POSTS, "/login", "/logout"])
def test_posts_without_csrf_token_are_refused(dash, case, route):
    app, storage = dash
    client = _doctor(app)
    cid = case[0].capture_id
    resp = client.post(route.format(id=cid), data={"label": "nevus", "recommendation": "x", "text": "hello",
                                                   "username": "drhana", "password": PASSWORD})
    assert resp.status_code == 400
    bad = client.post(route.format(id=cid), data={"csrf_token": "forged", "label": "nevus", "text": "hello"})
    assert bad.status_code == 400
    assert storage.reviews(str(cid)) == [] and storage.messages(str(cid)) == []


def test_queue_is_ordered_by_risk_and_filters(dash):
    app, storage = dash
    base = utc_now() - timedelta(hours=1)
    routine, _ = seed_case(storage, 1, cloud=("nevus", 0.9, False), kiosk=("nevus", 0.9, False),
                           received_at=base + timedelta(minutes=5))  # newest, lowest risk
    disagree, _ = seed_case(storage, 2, cloud=("eczema", 0.7, False), kiosk=("nevus", 0.6, False),
                            received_at=base + timedelta(minutes=1), device="kiosk-b")
    unsure, _ = seed_case(storage, 3, cloud=("nevus", 0.4, True), kiosk=("nevus", 0.5, False),
                          received_at=base + timedelta(minutes=2))
    danger, _ = seed_case(storage, 4, cloud=("nevus", 0.6, False), kiosk=("melanoma", 0.55, False),
                          received_at=base)  # oldest, but the kiosk saw a dangerous class
    client = _doctor(app)
    rows = client.get("/api/queue").get_json()["rows"]
    assert [r["capture_id"] for r in rows] == [str(c.capture_id) for c in (danger, unsure, disagree, routine)]
    assert rows[0]["flags"]["dangerous"] and rows[1]["flags"]["unsure"] and rows[2]["flags"]["disagree"]
    assert rows[0]["cloud"]["top"][0] == ["nevus", 0.6] and rows[0]["device"]["label"] == "melanoma"

    def ids(query: str) -> list[str]:
        return [r["capture_id"] for r in client.get(f"/api/queue?{query}").get_json()["rows"]]

    assert ids("device=kiosk-b") == [str(disagree.capture_id)]
    assert ids("flag=unsure") == [str(unsure.capture_id)]
    assert ids("label=eczema") == [str(disagree.capture_id)]
    # a reviewed case leaves the open queue
    client.post(f"/cases/{routine.capture_id}/review", data={"csrf_token": csrf(client), "label": "nevus",
                                                             "recommendation": "Harmless."})
    assert str(routine.capture_id) not in ids("")
    assert ids("status=reviewed") == [str(routine.capture_id)]
    # the HTML page carries the same rows for its script, and a thumbnail per case
    page = client.get("/queue?status=all").data.decode()
    data = json.loads(re.search(r'<script type="application/json" id="queue-data">(.*?)</script>', page, re.S)[1])
    assert len(data["rows"]) == 4 and data["dangerous"] == ["melanoma"]
    thumb = client.get(f"/cases/{danger.capture_id}/thumb")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg" and thumb.data[:2] == b"\xff\xd8"


def test_case_view_review_and_correction(dash, case):
    app, storage = dash
    cap, _ = case
    cid = str(cap.capture_id)
    client = _doctor(app)
    page = client.get(f"/cases/{cid}").data.decode()
    assert "Cloud model" in page and "Kiosk model" in page and "Melanoma" in page and "Mole (nevus)" in page
    assert 'value="other"' in page  # other / not assessable is offered
    assert client.get(f"/cases/{cid}/image").data == cap.image
    assert client.get("/cases/00000000-0000-0000-0000-000000000000").status_code == 404
    assert client.get("/cases/not-a-uuid").status_code == 404
    token = csrf(client)
    assert client.post(f"/cases/{cid}/review", data={"csrf_token": token, "label": "psoriasis"}).status_code == 400
    resp = client.post(f"/cases/{cid}/review", data={"csrf_token": token, "label": "melanoma", "urgent": "on",
                                                     "recommendation": "Book an excision this week."})
    assert resp.status_code == 303
    fb = storage.feedback(cid)
    assert (fb.label, fb.urgent, fb.doctor, fb.device_id) == ("melanoma", True, "drhana", "kiosk-a")
    client.post(f"/cases/{cid}/review", data={"csrf_token": token, "label": "other", "recommendation": "Retake."})
    assert storage.feedback(cid).label == "other" and len(storage.reviews(cid)) == 2
    page = client.get(f"/cases/{cid}").data.decode()
    assert "Other / not assessable" in page and "Earlier reviews (1)" in page
    actions = [(e["action"], e["actor"]) for e in storage.audit_entries() if e["target"] == cid]
    assert ("case.review", "drhana") in actions and ("case.view", "drhana") in actions
    assert any("corrected from melanoma" in e["detail"] for e in storage.audit_entries(action="case.review"))


def test_earlier_cases_from_the_same_pairing_are_listed(dash):
    app, storage = dash
    first, token = seed_case(storage, 1, cloud=("nevus", 0.9, False), received_at=utc_now() - timedelta(days=1))
    second, _ = seed_case(storage, 2, cloud=("nevus", 0.8, False), token=token)
    other, _ = seed_case(storage, 3, cloud=("nevus", 0.8, False))
    client = _doctor(app)
    page = client.get(f"/cases/{second.capture_id}").data.decode()
    assert f"/cases/{first.capture_id}" in page and f"/cases/{other.capture_id}" not in page
    assert 'id="earlier"' not in client.get(f"/cases/{other.capture_id}").data.decode()


def test_phone_page_shows_that_report_only(dash, case):
    app, storage = dash
    cap, token = case
    other, other_token = seed_case(storage, 2, cloud=("eczema", 0.9, False), locale="ar")
    phone = app.test_client()
    page = phone.get(f"/p/{token}")
    assert page.status_code == 200
    text = page.data.decode()
    assert "Screening aid, not a diagnosis." in text and "Melanoma" in text and "Mole (nevus)" in text
    assert "See a dermatologist soon" in text  # melanoma is dangerous in this label set
    assert "Eczema" not in text and str(other.capture_id) not in text and str(cap.capture_id) not in text
    assert phone.get(f"/p/{token}/image").data == cap.image
    assert phone.get(f"/p/{other_token}/image").data == other.image
    state = phone.get(f"/p/{token}/state").get_json()
    assert state["cloud"]["label"] == "melanoma" and state["feedback"] is None
    # a token for no case, a malformed one, and a case id instead of a token: 404 with a clear page
    for bad in ("A" * 32, "short", str(cap.capture_id), "../../queue"):
        resp = phone.get(f"/p/{bad}")
        assert resp.status_code == 404
    assert "Report not found" in phone.get(f"/p/{'B' * 32}").data.decode()
    assert phone.get(f"/p/{'B' * 32}/state").status_code == 404
    # the phone link opens nothing on the staff side
    assert phone.get("/queue").status_code == 302 and phone.get(f"/cases/{cap.capture_id}/image").status_code == 302
    # Arabic: the capture's language by default, right to left
    ar = phone.get(f"/p/{other_token}").data.decode()
    assert 'dir="rtl"' in ar and "أداة فحص مساعدة، وليست تشخيصًا." in ar and "إكزيما" in ar
    assert 'dir="ltr"' in phone.get(f"/p/{other_token}?lang=en").data.decode()
    assert storage.audit_entries(action="phone.view")[0]["actor"].startswith("patient:")


def test_phone_link_expires_and_can_be_revoked(dash, case):
    app, storage = dash
    days = app.extensions["skinscan_dashboard"].cfg.dashboard.pairing_token_days
    _, old_token = seed_case(storage, 5, cloud=("nevus", 0.9, False),
                               captured_at=utc_now() - timedelta(days=days, minutes=1))
    phone = app.test_client()
    resp = phone.get(f"/p/{old_token}")
    assert resp.status_code == 410 and "This link has expired" in resp.data.decode()
    assert f"{days} days" in resp.data.decode()
    assert phone.get(f"/p/{old_token}/state").status_code == 410
    assert phone.get(f"/p/{old_token}/image").status_code == 410

    cap, token = case
    assert phone.get(f"/p/{token}").status_code == 200
    doctor = _doctor(app)
    assert doctor.post(f"/cases/{cap.capture_id}/revoke", data={"csrf_token": csrf(doctor)}).status_code == 303
    resp = phone.get(f"/p/{token}")
    assert resp.status_code == 410 and "This link was withdrawn" in resp.data.decode()
    assert phone.post(f"/p/{token}/messages", json={"text": "hello?"},
                      headers={"X-CSRF-Token": csrf(phone)}).status_code == 410
    assert "Revoked by drhana" in doctor.get(f"/cases/{cap.capture_id}").data.decode()
    ar, ar_token = seed_case(storage, 6, cloud=("nevus", 0.9, False), locale="ar")
    storage.revoke_pairing(ar.pairing_token_sha256, "drhana")
    page = phone.get(f"/p/{ar_token}").data.decode()
    assert 'dir="rtl"' in page and "تم سحب هذا الرابط" in page  # in the patient's language
    assert storage.audit_entries(action="pairing.revoke")[0]["actor"] == "drhana"


def test_patient_and_staff_chat_with_limits(dash, case):
    app, storage = dash
    cap, token = case
    cid = str(cap.capture_id)
    phone = app.test_client()
    phone.get(f"/p/{token}")
    headers = {"X-CSRF-Token": csrf(phone)}
    assert phone.post(f"/p/{token}/messages", json={"text": "Is it serious?"}).status_code == 400  # no CSRF
    resp = phone.post(f"/p/{token}/messages", json={"text": "Is it serious?"}, headers=headers)
    assert resp.status_code == 201
    assert phone.post(f"/p/{token}/messages", json={"text": "x" * 1001}, headers=headers).status_code == 413
    assert phone.post(f"/p/{token}/messages", json={"text": "   "}, headers=headers).status_code == 400
    doctor = _doctor(app)
    assert "Is it serious?" in doctor.get(f"/cases/{cid}").data.decode()
    resp = doctor.post(f"/cases/{cid}/messages", json={"text": "Please come in on Monday."},
                       headers={"X-CSRF-Token": csrf(doctor), "Accept": "application/json"})
    assert resp.status_code == 200 and resp.get_json()["message"]["author"] == "drhana"
    msgs = phone.get(f"/p/{token}/state").get_json()["messages"]
    assert [(m["sender"], m["text"]) for m in msgs] == [("patient", "Is it serious?"),
                                                         ("staff", "Please come in on Monday.")]
    assert "author" not in msgs[1]  # the page says "medical staff", not the account name
    for i in range(4):
        assert phone.post(f"/p/{token}/messages", json={"text": f"again {i}"}, headers=headers).status_code == 201
    assert phone.post(f"/p/{token}/messages", json={"text": "one too many"}, headers=headers).status_code == 429
    assert len(storage.messages(cid)) == 6
    assert storage.audit_entries(action="phone.message.refused")


def test_phone_page_shows_the_doctors_feedback(dash, case):
    app, _ = dash
    cap, token = case
    doctor = _doctor(app)
    doctor.post(f"/cases/{cap.capture_id}/review", data={"csrf_token": csrf(doctor), "label": "melanoma",
                                                         "urgent": "on", "recommendation": "Come in this week."})
    text = app.test_client().get(f"/p/{token}").data.decode()
    assert "Come in this week." in text and "Urgent: please see a doctor" in text


def test_event_streams_carry_only_their_own_case(dash, case):
    app, storage = dash
    cap, token = case
    other, _ = seed_case(storage, 2, cloud=("nevus", 0.9, False))
    hub = app.extensions["skinscan_dashboard"].hub
    resp = app.test_client().get(f"/p/{token}/events")
    assert resp.mimetype == "text/event-stream"
    chunks = (c.decode() for c in resp.response)
    assert "event: hello" in next(chunks)
    hub.emit("message", str(other.capture_id))
    hub.emit("case", str(cap.capture_id))  # the phone page has no use for queue events
    hub.emit("feedback", str(cap.capture_id))
    event = next(chunks)
    assert event.startswith("event: feedback") and str(cap.capture_id) in event
    storage.revoke_pairing(cap.pairing_token_sha256, "drhana")
    hub.emit("message", str(cap.capture_id))
    assert next(chunks).startswith("event: gone")  # the open page learns its link was revoked
    resp.close()
    staff = _doctor(app).get("/events")
    chunks = (c.decode() for c in staff.response)
    next(chunks)
    hub.emit("case", str(other.capture_id))
    assert str(other.capture_id) in next(chunks)
    staff.close()


def test_model_bundles_are_served_to_devices(dash):
    app, _ = dash
    bundle_dir = app.extensions["skinscan_dashboard"].cfg.updates.bundle_dir
    (bundle_dir / "v7").mkdir(parents=True)
    (bundle_dir / "v7" / "bundle.zip").write_bytes(b"PK-bundle")
    client = app.test_client()  # devices have no account
    assert client.get("/models/v7/bundle.zip").data == b"PK-bundle"
    assert client.get("/models/v8/bundle.zip").status_code == 404


def test_add_user_command(tmp_path: Path, monkeypatch):
    for key, value in dashboard_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    pw = tmp_path / "pw"
    pw.write_text("a long enough password\n")
    assert cloud_main(["add-user", "drnour", "--role", "dermatologist", "--password-file", str(pw)]) == 0
    assert cloud_main(["add-user", "drnour", "--role", "admin", "--password-file", str(pw)]) == 1  # exists
    assert cloud_main(["add-user", "drnour", "--role", "admin", "--password-file", str(pw), "--replace"]) == 0
    pw.write_text("short\n")
    assert cloud_main(["add-user", "drzaid", "--role", "admin", "--password-file", str(pw)]) == 1
    assert cloud_main(["add-user", "bad name!", "--role", "admin", "--password-file", str(pw)]) == 1
    cfg = dashboard_config(tmp_path)
    storage = Storage(cfg.database.url, cfg.storage.image_dir)
    assert storage.user("drnour")["role"] == "admin" and storage.user("drzaid") is None
    app = create_app(cfg, storage=storage, relay=False, labels=LABELS)
    client = app.test_client()
    assert login(client, "drnour", "a long enough password").status_code == 302
    storage.close()


def test_models_page_lists_versions_with_doctor_disagreement(dash, tmp_path: Path):
    from cloud.registry import Registry
    from tests.test_registry import write_model

    app, storage = dash
    registry = Registry(storage.engine)
    registry.register(write_model(tmp_path / "m1", "float-test"), actor="ml")
    registry.promote("float-test", actor="lead", reason="first")
    registry.register(write_model(tmp_path / "m2", "int8-test", parent="float-test"), actor="ml")
    a, _ = seed_case(storage, 1, cloud=("melanoma", 0.8, False), kiosk=("nevus", 0.6, False))
    b, _ = seed_case(storage, 2, cloud=("nevus", 0.9, False), kiosk=("nevus", 0.7, False))
    c, _ = seed_case(storage, 3, cloud=("nevus", 0.9, False), kiosk=("nevus", 0.7, False))
    storage.add_review(str(a.capture_id), "drhana", "melanoma", "", True)
    storage.add_review(str(b.capture_id), "drhana", "melanoma", "", True)
    storage.add_review(str(c.capture_id), "drhana", "other", "blurred", False)  # not counted
    assert storage.disagreement_by_model() == {"float-test": {"reviewed": 2, "disagreed": 1},
                                               "int8-test": {"reviewed": 2, "disagreed": 2}}
    page = _doctor(app).get("/models")
    assert page.status_code == 200
    html = page.data.decode()
    assert re.search(r"float-test</td><td>promoted.*?<td>2</td>\s*<td>1 \(50%\)", html, re.S)
    assert re.search(r"int8-test</td><td>candidate</td><td>float-test.*?<td>2</td>\s*<td>2 \(100%\)", html, re.S)
    assert any(e["action"] == "models.view" for e in storage.audit_entries())
