"""Dashboard tables (users, reviews, pairings, chat, audit) on real SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import inspect

from cloud.storage import SCHEMA_VERSION, Storage, StorageError
from contract import ChatMessage, utc_now
from tests.support.dashboard import seed_case
from tests.test_storage import db_url, pg_server, storage  # noqa: F401 - fixtures (SQLite and PostgreSQL)


def test_schema_has_the_dashboard_tables(storage: Storage):
    assert storage.version() == SCHEMA_VERSION >= 2
    tables = set(inspect(storage.engine).get_table_names())
    assert {"users", "reviews", "pairings", "chat_messages", "audit_log"} <= tables
    indexed = {tuple(ix["column_names"]) for ix in inspect(storage.engine).get_indexes("cases")}
    assert ("pairing_token_sha256",) in indexed


def test_users(storage: Storage):
    assert storage.add_user("drhana", "scrypt:hash", "dermatologist") is True
    with pytest.raises(StorageError, match="already exists"):
        storage.add_user("drhana", "scrypt:other", "admin")
    assert storage.add_user("drhana", "scrypt:new", "admin", replace=True) is False
    user = storage.user("drhana")
    assert (user["password_hash"], user["role"], user["disabled"]) == ("scrypt:new", "admin", False)
    assert user["created_at"].tzinfo is not None
    assert storage.user("nobody") is None
    assert [u["username"] for u in storage.users()] == ["drhana"]


def test_reviews_feedback_relay_state_and_confirmed_labels(storage: Storage):
    a, _ = seed_case(storage, 1, cloud=("nevus", 0.8, False))
    b, _ = seed_case(storage, 2, cloud=("melanoma", 0.7, False), device="kiosk-b")
    c, _ = seed_case(storage, 3, cloud=("eczema", 0.5, True))
    t0 = utc_now() - timedelta(hours=1)
    storage.add_review(str(a.capture_id), "drhana", "nevus", "Harmless.", False, given_at=t0)
    fb = storage.add_review(str(b.capture_id), "drhana", "melanoma", "Excise.", True, given_at=t0 + timedelta(1))
    assert fb.device_id == "kiosk-b" and fb.urgent
    # a correction: the newest review counts
    storage.add_review(str(a.capture_id), "drsami", "eczema", "Moisturise.", False, given_at=t0 + timedelta(2))
    storage.add_review(str(c.capture_id), "drsami", "other", "Retake the photo.", False)
    with pytest.raises(StorageError):
        storage.add_review(str(uuid.uuid4()), "drhana", "nevus", "", False)
    assert [r["label"] for r in storage.reviews(str(a.capture_id))] == ["nevus", "eczema"]
    assert storage.feedback(str(a.capture_id)).label == "eczema"

    confirmed = storage.confirmed_cases()
    assert [(r["capture_id"], r["label"], r["doctor"]) for r in confirmed] == [
        (str(b.capture_id), "melanoma", "drhana"), (str(a.capture_id), "eczema", "drsami")]
    assert confirmed[1]["image_sha256"] == a.image_sha256 and confirmed[1]["model_label"] == "nevus"
    assert confirmed[1]["given_at"].tzinfo is not None
    assert len(storage.confirmed_cases(include_other=True)) == 3

    pending = storage.unrelayed_feedback()
    assert [f.capture_id for _, f in pending] == [a.capture_id, b.capture_id, a.capture_id, c.capture_id]
    storage.mark_relayed(pending[0][0])
    assert len(storage.unrelayed_feedback()) == 3
    assert storage.reviews(str(a.capture_id))[0]["relayed_at"] is not None


def test_pairing_lookup_and_revocation(storage: Storage):
    a, token = seed_case(storage, 1, cloud=("nevus", 0.8, False))
    b, _ = seed_case(storage, 2, token=token)  # a second capture paired with the same phone
    digest = a.pairing_token_sha256
    assert storage.case_by_token_hash(digest)["capture_id"] in (str(a.capture_id), str(b.capture_id))
    assert {c["capture_id"] for c in storage.cases_by_token_hash(digest)} == {str(a.capture_id), str(b.capture_id)}
    assert storage.case_by_token_hash("0" * 64) is None
    assert storage.pairing_revocation(digest) is None
    assert storage.revoke_pairing(digest, "drhana") is True
    assert storage.revoke_pairing(digest, "drsami") is False  # the first revocation stands
    rev = storage.pairing_revocation(digest)
    assert rev["revoked_by"] == "drhana" and rev["revoked_at"].tzinfo is not None


def test_chat_messages_and_audit_log(storage: Storage):
    a, _ = seed_case(storage, 1)
    now = utc_now()
    for i, sender in enumerate(["patient", "staff", "patient"]):
        storage.add_message(ChatMessage(message_id=uuid.uuid4(), capture_id=a.capture_id, sender=sender,
                                        author="drhana" if sender == "staff" else "", text=f"m{i}",
                                        sent_at=now - timedelta(minutes=3 - i)))
    assert [m.text for m in storage.messages(str(a.capture_id))] == ["m0", "m1", "m2"]
    assert storage.count_messages(str(a.capture_id), "patient", now - timedelta(minutes=2)) == 1
    assert storage.count_messages(str(a.capture_id), "patient", now - timedelta(hours=1)) == 2

    storage.audit("drhana", "case.view", str(a.capture_id), ip="127.0.0.1")
    storage.audit("eve", "login.failed", "eve")
    storage.audit("eve", "login.failed", "eve")
    entries = storage.audit_entries()
    assert [e["action"] for e in entries] == ["login.failed", "login.failed", "case.view"]  # newest first
    assert entries[2]["at"].tzinfo is not None and entries[2]["ip"] == "127.0.0.1"
    assert [e["actor"] for e in storage.audit_entries(actor="drhana")] == ["drhana"]
    assert storage.count_audit("login.failed", "eve", now - timedelta(minutes=1)) == 2
    assert storage.count_audit("login.failed", "eve", utc_now() + timedelta(minutes=1)) == 0
