"""Dashboard tables (users, reviews, pairings, chat, audit) on real SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import inspect

from cloud.storage import SCHEMA_VERSION, Storage, StorageError
from contract import ChatMessage, utc_now
from tests.support.dashboard import seed_case
from tests.test_storage import db_url, pg_server  # noqa: F401 - fixtures: SQLite, and PostgreSQL when reachable


@pytest.fixture
def store(db_url: str, tmp_path):  # noqa: F811
    s = Storage(db_url, tmp_path / "images")
    s.migrate()
    yield s
    s.close()


def test_schema_has_the_dashboard_tables(store: Storage):
    assert store.version() == SCHEMA_VERSION >= 2
    tables = set(inspect(store.engine).get_table_names())
    assert {"users", "reviews", "pairings", "chat_messages", "audit_log"} <= tables
    indexed = {tuple(ix["column_names"]) for ix in inspect(store.engine).get_indexes("cases")}
    assert ("pairing_token_sha256",) in indexed


def test_users(store: Storage):
    assert store.add_user("drhana", "scrypt:hash", "dermatologist") is True
    with pytest.raises(StorageError, match="already exists"):
        store.add_user("drhana", "scrypt:other", "admin")
    assert store.add_user("drhana", "scrypt:new", "admin", replace=True) is False
    user = store.user("drhana")
    assert (user["password_hash"], user["role"], user["disabled"]) == ("scrypt:new", "admin", False)
    assert user["created_at"].tzinfo is not None
    assert store.user("nobody") is None
    assert [u["username"] for u in store.users()] == ["drhana"]


def test_reviews_feedback_relay_state_and_confirmed_labels(store: Storage):
    a, _ = seed_case(store, 1, cloud=("nevus", 0.8, False))
    b, _ = seed_case(store, 2, cloud=("melanoma", 0.7, False), device="kiosk-b")
    c, _ = seed_case(store, 3, cloud=("eczema", 0.5, True))
    t0 = utc_now() - timedelta(hours=1)
    store.add_review(str(a.capture_id), "drhana", "nevus", "Harmless.", False, given_at=t0)
    fb = store.add_review(str(b.capture_id), "drhana", "melanoma", "Excise.", True, given_at=t0 + timedelta(1))
    assert fb.device_id == "kiosk-b" and fb.urgent
    # a correction: the newest review counts
    store.add_review(str(a.capture_id), "drsami", "eczema", "Moisturise.", False, given_at=t0 + timedelta(2))
    store.add_review(str(c.capture_id), "drsami", "other", "Retake the photo.", False)
    with pytest.raises(StorageError):
        store.add_review(str(uuid.uuid4()), "drhana", "nevus", "", False)
    assert [r["label"] for r in store.reviews(str(a.capture_id))] == ["nevus", "eczema"]
    assert store.feedback(str(a.capture_id)).label == "eczema"

    confirmed = store.confirmed_cases()
    assert [(r["capture_id"], r["label"], r["doctor"]) for r in confirmed] == [
        (str(b.capture_id), "melanoma", "drhana"), (str(a.capture_id), "eczema", "drsami")]
    assert confirmed[1]["image_sha256"] == a.image_sha256 and confirmed[1]["model_label"] == "nevus"
    assert confirmed[1]["given_at"].tzinfo is not None
    assert len(store.confirmed_cases(include_other=True)) == 3

    pending = store.unrelayed_feedback()
    assert [f.capture_id for _, f in pending] == [a.capture_id, b.capture_id, a.capture_id, c.capture_id]
    store.mark_relayed(pending[0][0])
    assert len(store.unrelayed_feedback()) == 3
    assert store.reviews(str(a.capture_id))[0]["relayed_at"] is not None


def test_pairing_lookup_and_revocation(store: Storage):
    a, token = seed_case(store, 1, cloud=("nevus", 0.8, False))
    b, _ = seed_case(store, 2, token=token)  # a second capture paired with the same phone
    digest = a.pairing_token_sha256
    assert store.case_by_token_hash(digest)["capture_id"] in (str(a.capture_id), str(b.capture_id))
    assert {c["capture_id"] for c in store.cases_by_token_hash(digest)} == {str(a.capture_id), str(b.capture_id)}
    assert store.case_by_token_hash("0" * 64) is None
    assert store.pairing_revocation(digest) is None
    assert store.revoke_pairing(digest, "drhana") is True
    assert store.revoke_pairing(digest, "drsami") is False  # the first revocation stands
    rev = store.pairing_revocation(digest)
    assert rev["revoked_by"] == "drhana" and rev["revoked_at"].tzinfo is not None


def test_chat_messages_and_audit_log(store: Storage):
    a, _ = seed_case(store, 1)
    now = utc_now()
    for i, sender in enumerate(["patient", "staff", "patient"]):
        store.add_message(ChatMessage(message_id=uuid.uuid4(), capture_id=a.capture_id, sender=sender,
                                        author="drhana" if sender == "staff" else "", text=f"m{i}",
                                        sent_at=now - timedelta(minutes=3 - i)))
    assert [m.text for m in store.messages(str(a.capture_id))] == ["m0", "m1", "m2"]
    assert store.count_messages(str(a.capture_id), "patient", now - timedelta(minutes=2)) == 1
    assert store.count_messages(str(a.capture_id), "patient", now - timedelta(hours=1)) == 2

    store.audit("drhana", "case.view", str(a.capture_id), ip="127.0.0.1")
    store.audit("eve", "login.failed", "eve")
    store.audit("eve", "login.failed", "eve")
    entries = store.audit_entries()
    assert [e["action"] for e in entries] == ["login.failed", "login.failed", "case.view"]  # newest first
    assert entries[2]["at"].tzinfo is not None and entries[2]["ip"] == "127.0.0.1"
    assert [e["actor"] for e in store.audit_entries(actor="drhana")] == ["drhana"]
    assert store.count_audit("login.failed", "eve", now - timedelta(minutes=1)) == 2
    assert store.count_audit("login.failed", "eve", utc_now() + timedelta(minutes=1)) == 0
