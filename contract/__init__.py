"""The one message contract shared by device, cloud, dashboard and phone page.

Topics live in :mod:`contract.topics`, payload schemas in :mod:`contract.messages`.
Nothing about topics or payloads is defined anywhere else.
"""

from contract.errors import ContractError
from contract.messages import (
    MAX_IMAGE_BYTES,
    MAX_MESSAGE_BYTES,
    SCHEMA_VERSION,
    Capture,
    ChatMessage,
    DevicePrediction,
    DeviceStatus,
    Feedback,
    Message,
    ModelAnnouncement,
    Result,
    decode,
    encode,
    new_capture_id,
    utc_now,
)
from contract.topics import Topics

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_MESSAGE_BYTES",
    "SCHEMA_VERSION",
    "Capture",
    "ChatMessage",
    "ContractError",
    "DevicePrediction",
    "DeviceStatus",
    "Feedback",
    "Message",
    "ModelAnnouncement",
    "Result",
    "Topics",
    "decode",
    "encode",
    "new_capture_id",
    "utc_now",
]
