"""MQTT topic tree. Every topic string in the system is built or parsed here.

All topics sit under a configurable prefix (default ``skinscan/v1``); the ``v1`` is the
topic-tree version, independent of the payload ``schema`` version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from contract.errors import ContractError

DEFAULT_PREFIX = "skinscan/v1"
DEVICE_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")

# Kinds of per-device topic, in the order of the README's table.
DEVICE_KINDS = ("captures", "results", "feedback", "status")


def check_device_id(device_id: str) -> str:
    if not isinstance(device_id, str) or not _DEVICE_ID.match(device_id):
        raise ContractError(
            "device_id",
            f"must be 1-63 chars of a-z, 0-9, '_' or '-', starting with a letter or digit; got {device_id!r}",
        )
    return device_id


@dataclass(frozen=True)
class ParsedTopic:
    kind: str
    device_id: str | None = None
    capture_id: str | None = None


@dataclass(frozen=True)
class Topics:
    """Builds and parses topics under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ContractError("mqtt.topic_prefix", f"must be slash-separated words, got {self.prefix!r}")

    def device(self, device_id: str, kind: str) -> str:
        if kind not in DEVICE_KINDS:
            raise ContractError("topic", f"unknown device topic kind {kind!r}")
        return f"{self.prefix}/devices/{check_device_id(device_id)}/{kind}"

    def captures(self, device_id: str) -> str:
        return self.device(device_id, "captures")

    def results(self, device_id: str) -> str:
        return self.device(device_id, "results")

    def feedback(self, device_id: str) -> str:
        return self.device(device_id, "feedback")

    def status(self, device_id: str) -> str:
        return self.device(device_id, "status")

    def all_devices(self, kind: str) -> str:
        """Wildcard subscription for one kind across every device (cloud side)."""
        if kind not in DEVICE_KINDS:
            raise ContractError("topic", f"unknown device topic kind {kind!r}")
        return f"{self.prefix}/devices/+/{kind}"

    def shared(self, group: str, topic_filter: str) -> str:
        """MQTT v5 shared subscription, so N consumers split the load."""
        return f"$share/{group}/{topic_filter}"

    @property
    def model_current(self) -> str:
        return f"{self.prefix}/models/current"

    @property
    def dashboard_cases(self) -> str:
        return f"{self.prefix}/dashboard/cases"

    def case_messages(self, capture_id: str) -> str:
        return f"{self.prefix}/cases/{capture_id}/messages"

    def parse(self, topic: str) -> ParsedTopic:
        head = self.prefix + "/"
        if not topic.startswith(head):
            raise ContractError("topic", f"{topic!r} is not under prefix {self.prefix!r}")
        parts = topic[len(head):].split("/")
        if len(parts) == 3 and parts[0] == "devices" and parts[2] in DEVICE_KINDS:
            return ParsedTopic(kind=parts[2], device_id=check_device_id(parts[1]))
        if parts == ["models", "current"]:
            return ParsedTopic(kind="model")
        if parts == ["dashboard", "cases"]:
            return ParsedTopic(kind="dashboard")
        if len(parts) == 3 and parts[0] == "cases" and parts[2] == "messages":
            return ParsedTopic(kind="messages", capture_id=parts[1])
        raise ContractError("topic", f"{topic!r} is not a SkinScan topic")
