"""Payload schemas (pydantic) and the one codec every side uses.

Wire format: UTF-8 JSON, one object per MQTT message, with
``schema`` (payload schema version), ``type`` (message kind) and UTC ISO-8601 timestamps.
A capture carries its JPEG inside the same message, base64-encoded in ``image``: one
message is one atomic unit for QoS 1 and for the idempotency key ``capture_id``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from contract.errors import ContractError
from contract.topics import DEVICE_ID_PATTERN

SCHEMA_VERSION = 1
SUPPORTED_SCHEMAS = frozenset({1})
# Decoded JPEG limit; the broker's message_size_limit (broker/mosquitto.conf.in) allows the
# base64 overhead (4/3) plus metadata on top of this.
MAX_IMAGE_BYTES = 2 * 1024 * 1024
MAX_MESSAGE_BYTES = 3 * 1024 * 1024
MAX_TEXT = 4000

DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Label = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")]
# Model versions name folders on devices and in bundle URLs: no slashes, no leading dot.
MODEL_VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_capture_id() -> str:
    return str(uuid.uuid4())


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, alias="schema")

    @field_validator("*", mode="after")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        # Normalise every timestamp to UTC so stored and compared values agree.
        if isinstance(value, datetime):
            return value.astimezone(UTC)
        return value


class DevicePrediction(BaseModel):
    """What the kiosk's int8 model said, sent along so the cloud can flag disagreement."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(min_length=1, max_length=64)
    confidence: Probability
    probabilities: dict[Label, Probability]
    unsure: bool
    model_version: str = Field(min_length=1, max_length=64)


class Capture(_Base):
    """Device -> cloud: one photo for full classification and doctor review."""

    type: Literal["capture"] = "capture"
    capture_id: uuid.UUID
    device_id: DeviceId
    captured_at: AwareDatetime
    content_type: Literal["image/jpeg", "image/png"] = "image/jpeg"
    image: bytes
    image_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    device_prediction: DevicePrediction | None = None
    # Only the SHA-256 of the phone-pairing token travels; the token itself stays in the QR code.
    pairing_token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    locale: Literal["en", "ar"] = "en"

    @field_validator("image", mode="before")
    @classmethod
    def _b64(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except ValueError as exc:
                raise ValueError(f"not valid base64: {exc}") from None
        return value

    @field_validator("image", mode="after")
    @classmethod
    def _size(cls, value: bytes) -> bytes:
        if not value:
            raise ValueError("image is empty")
        if len(value) > MAX_IMAGE_BYTES:
            raise ValueError(f"decoded image is {len(value)} bytes, limit {MAX_IMAGE_BYTES}")
        return value

    @model_validator(mode="after")
    def _hash_matches(self) -> Capture:
        actual = hashlib.sha256(self.image).hexdigest()
        if actual != self.image_sha256:
            raise ValueError(f"image_sha256 {self.image_sha256} does not match the image ({actual})")
        return self

    @field_serializer("image")
    def _ser_image(self, value: bytes) -> str:
        return base64.b64encode(value).decode("ascii")

    @classmethod
    def from_image(cls, image: bytes, **fields: Any) -> Capture:
        fields.setdefault("capture_id", new_capture_id())
        fields.setdefault("captured_at", utc_now())
        return cls(image=image, image_sha256=hashlib.sha256(image).hexdigest(), **fields)


class Result(_Base):
    """Cloud -> device: the full (float model) classification of one capture."""

    type: Literal["result"] = "result"
    capture_id: uuid.UUID
    device_id: DeviceId
    produced_at: AwareDatetime
    model_version: str = Field(min_length=1, max_length=64)
    label: str = Field(min_length=1, max_length=64)
    confidence: Probability
    probabilities: dict[Label, Probability]
    unsure: bool


class Feedback(_Base):
    """Cloud -> device and phone: a dermatologist's review of one capture."""

    type: Literal["feedback"] = "feedback"
    capture_id: uuid.UUID
    device_id: DeviceId
    given_at: AwareDatetime
    doctor: str = Field(min_length=1, max_length=120)
    label: str = Field(min_length=1, max_length=64)
    recommendation: str = Field(max_length=MAX_TEXT)
    urgent: bool = False


class DeviceStatus(_Base):
    """Device -> all, retained; the broker publishes the ``offline`` last will."""

    type: Literal["status"] = "status"
    device_id: DeviceId
    at: AwareDatetime
    state: Literal["online", "offline"]
    model_version: str | None = None
    queued: int | None = Field(default=None, ge=0)
    sent: int | None = Field(default=None, ge=0)
    uptime_s: float | None = Field(default=None, ge=0)


class ModelAnnouncement(_Base):
    """Cloud -> devices, retained on ``models/current``: the model every device should run."""

    type: Literal["model"] = "model"
    version: str = Field(pattern=MODEL_VERSION_PATTERN)
    url: str = Field(min_length=1, max_length=2000)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # base64 Ed25519 signature over the version and sha256 (contract.signing).
    signature: str = Field(min_length=1, max_length=200)
    published_at: AwareDatetime


class ChatMessage(_Base):
    """Patient <-> medical staff, attached to one capture (the paper's communication window)."""

    type: Literal["message"] = "message"
    message_id: uuid.UUID
    capture_id: uuid.UUID
    sender: Literal["patient", "staff"]
    author: str = Field(default="", max_length=120)
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    sent_at: AwareDatetime


Message = Annotated[
    Capture | Result | Feedback | DeviceStatus | ModelAnnouncement | ChatMessage,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)
_BY_TYPE = {
    "capture": Capture,
    "result": Result,
    "feedback": Feedback,
    "status": DeviceStatus,
    "model": ModelAnnouncement,
    "message": ChatMessage,
}


def encode(message: BaseModel) -> bytes:
    """Serialise a contract message to its wire form."""
    data = message.model_dump_json(by_alias=True).encode("utf-8")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ContractError("message", f"{len(data)} bytes, limit {MAX_MESSAGE_BYTES}")
    return data


def decode(payload: bytes | str, expect: type[BaseModel] | None = None) -> Any:
    """Parse and validate one wire message; any defect raises :class:`ContractError`."""
    raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ContractError("message", f"{len(raw)} bytes, limit {MAX_MESSAGE_BYTES}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError("message", f"not valid UTF-8 JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ContractError("message", f"must be a JSON object, got {type(data).__name__}")
    version = data.get("schema")
    if version is None:
        raise ContractError("schema", "missing")
    if isinstance(version, bool) or version not in SUPPORTED_SCHEMAS:
        supported = sorted(SUPPORTED_SCHEMAS)
        raise ContractError("schema", f"unsupported schema version {version!r} (supported: {supported})")
    kind = data.get("type")
    if kind not in _BY_TYPE:
        raise ContractError("type", f"unknown message type {kind!r} (known: {sorted(_BY_TYPE)})")
    if expect is not None and _BY_TYPE[kind] is not expect:
        raise ContractError("type", f"expected {expect.model_fields['type'].default!r}, got {kind!r}")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"] if str(p) != kind]
        field = ".".join(loc) or "message"
        raise ContractError(field, err["msg"]) from None
