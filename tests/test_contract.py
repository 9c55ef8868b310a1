"""Every message type round-trips; every kind of defect raises ContractError naming the field."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from contract import (
    MAX_IMAGE_BYTES,
    MAX_MESSAGE_BYTES,
    Capture,
    ChatMessage,
    ContractError,
    DevicePrediction,
    DeviceStatus,
    Feedback,
    ModelAnnouncement,
    Result,
    Topics,
    decode,
    encode,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
CID = uuid.UUID("6f1c1d3e-8a53-4a53-9f0a-0b7c1f2a9d11")
JPEG = b"\xff\xd8\xff\xe0fake-but-opaque-bytes\xff\xd9"


def samples():
    return [
        Capture.from_image(JPEG, capture_id=CID, device_id="kiosk-01", captured_at=NOW,
                           device_prediction=DevicePrediction(label="nevus", confidence=0.8,
                                                              probabilities={"nevus": 0.8, "melanoma": 0.2},
                                                              unsure=False, model_version="1"),
                           pairing_token_sha256="a" * 64, locale="ar"),
        Result(capture_id=CID, device_id="kiosk-01", produced_at=NOW, model_version="1", label="melanoma",
               confidence=0.7, probabilities={"melanoma": 0.7, "nevus": 0.3}, unsure=False),
        Feedback(capture_id=CID, device_id="kiosk-01", given_at=NOW, doctor="Dr. Amal",
                 label="melanoma", recommendation="Excision biopsy within two weeks.", urgent=True),
        DeviceStatus(device_id="kiosk-01", at=NOW, state="online", model_version="1", queued=3, sent=10,
                     uptime_s=12.5),
        ModelAnnouncement(version="2", url="https://cloud/models/2/skin_int8.tflite", sha256="b" * 64,
                          signature="c2ln", published_at=NOW),
        ChatMessage(message_id=uuid.uuid4(), capture_id=CID, sender="patient", text="It itches. مرحبا",
                    sent_at=NOW),
    ]


@pytest.mark.parametrize("message", samples(), ids=lambda m: m.type)
def test_round_trip(message):
    wire = encode(message)
    data = json.loads(wire)
    assert data["schema"] == 1
    assert data["type"] == message.type
    back = decode(wire)
    assert back == message
    assert decode(wire, expect=type(message)) == message


def test_capture_image_travels_as_base64_and_timestamps_as_utc_iso():
    cap = samples()[0]
    data = json.loads(encode(cap))
    assert base64.b64decode(data["image"]) == JPEG
    assert data["captured_at"] == "2026-11-26T12:00:00Z"
    assert data["capture_id"] == str(CID)


def test_timestamps_in_other_zones_become_utc():
    local = datetime(2026, 11, 26, 15, 0, tzinfo=timezone(timedelta(hours=3)))
    status = DeviceStatus(device_id="kiosk-01", at=local, state="offline")
    assert decode(encode(status)).at == NOW


def _wire(message) -> dict:
    return json.loads(encode(message))


def _error(payload) -> ContractError:
    with pytest.raises(ContractError) as info:
        decode(payload if isinstance(payload, bytes | str) else json.dumps(payload))
    return info.value


def test_truncated_json():
    err = _error(encode(samples()[1])[:-10])
    assert err.field == "message"
    assert "not valid UTF-8 JSON" in str(err)


def test_not_an_object():
    assert _error(b"[1, 2]").field == "message"


def test_wrong_type_names_the_field():
    data = _wire(samples()[1])
    data["confidence"] = "high"
    err = _error(data)
    assert err.field == "confidence"
    data = _wire(samples()[1])
    data["probabilities"]["melanoma"] = 1.5
    assert _error(data).field.startswith("probabilities")


def test_unknown_schema_version():
    data = _wire(samples()[2])
    data["schema"] = 2
    err = _error(data)
    assert err.field == "schema"
    assert "unsupported schema version 2" in str(err)
    del data["schema"]
    assert _error(data).field == "schema"
    data["schema"] = True
    assert _error(data).field == "schema"


def test_unknown_type_and_unexpected_type():
    data = _wire(samples()[2])
    data["type"] = "selfie"
    assert _error(data).field == "type"
    with pytest.raises(ContractError, match="expected 'capture', got 'feedback'"):
        decode(encode(samples()[2]), expect=Capture)


def test_missing_and_extra_fields():
    data = _wire(samples()[1])
    del data["device_id"]
    assert _error(data).field == "device_id"
    data = _wire(samples()[1])
    data["surprise"] = 1
    assert _error(data).field == "surprise"


def test_naive_timestamp_rejected():
    data = _wire(samples()[3])
    data["at"] = "2026-11-26T12:00:00"
    assert _error(data).field == "at"


def test_bad_device_id_and_uuid():
    data = _wire(samples()[1])
    data["device_id"] = "../etc"
    assert _error(data).field == "device_id"
    data = _wire(samples()[1])
    data["capture_id"] = "not-a-uuid"
    assert _error(data).field == "capture_id"


@pytest.mark.parametrize("version", ["../x", "a/b", ".hidden", "", "v" * 65])
def test_model_version_cannot_name_another_folder(version):
    data = _wire(samples()[4])
    data["version"] = version
    assert _error(data).field == "version"


def test_oversize_message_rejected_before_parsing():
    big = b'{"schema": 1, "type": "result", "pad": "' + b"x" * MAX_MESSAGE_BYTES + b'"}'
    err = _error(big)
    assert err.field == "message"
    assert "limit" in str(err)


def test_oversize_image_rejected():
    huge = b"\xff" * (MAX_IMAGE_BYTES + 1)
    with pytest.raises(ValueError, match="limit"):
        Capture.from_image(huge, device_id="kiosk-01")
    data = _wire(samples()[0])
    data["image"] = base64.b64encode(huge).decode()
    err = _error(data)
    assert err.field == "image"


def test_image_hash_must_match_and_base64_must_be_valid():
    data = _wire(samples()[0])
    data["image_sha256"] = "0" * 64
    assert "does not match" in str(_error(data))
    data = _wire(samples()[0])
    data["image"] = "***not base64***"
    assert _error(data).field == "image"


def test_encode_refuses_oversize():
    status = DeviceStatus(device_id="kiosk-01", at=NOW, state="online")
    assert encode(status)
    long_text = ChatMessage(message_id=uuid.uuid4(), capture_id=CID, sender="staff", text="x" * 4000, sent_at=NOW)
    assert len(encode(long_text)) < MAX_MESSAGE_BYTES


def test_topics_build_and_parse():
    t = Topics("clinic/v1")
    assert t.captures("kiosk-01") == "clinic/v1/devices/kiosk-01/captures"
    assert t.shared("consumers", t.all_devices("captures")) == "$share/consumers/clinic/v1/devices/+/captures"
    assert t.model_current == "clinic/v1/models/current"
    parsed = t.parse("clinic/v1/devices/kiosk-01/results")
    assert (parsed.kind, parsed.device_id) == ("results", "kiosk-01")
    assert t.parse(t.case_messages(str(CID))).capture_id == str(CID)
    assert t.parse(t.dashboard_cases).kind == "dashboard"
    for bad in ("other/v1/devices/x/captures", "clinic/v1/devices/BAD!/captures", "clinic/v1/devices/a/b"):
        with pytest.raises(ContractError):
            t.parse(bad)
    with pytest.raises(ContractError):
        t.captures("a/b")
    with pytest.raises(ContractError):
        Topics("bad prefix/#")
