"""An in-memory stand-in for ``device.uplink.Uplink`` (the MQTT issue), keeping the kiosk's side honest.

It implements the agreed interface (send/state/stats) and validates every capture through the real
wire codec, so a capture the cloud would refuse fails here too.
"""

from __future__ import annotations

from typing import Any

from contract.messages import Capture, Feedback, Result, decode, encode


class MemoryUplink:
    def __init__(self, fail_with: Exception | None = None) -> None:
        self.sent: dict[str, Capture] = {}
        self.answers: dict[str, dict[str, Any]] = {}
        self.fail_with = fail_with
        self.connected = True

    def send(self, capture: Capture) -> str:
        if self.fail_with is not None:
            raise self.fail_with
        wire = decode(encode(capture), expect=Capture)
        self.sent[str(wire.capture_id)] = wire
        return str(wire.capture_id)

    def answer(self, capture_id: str, result: Result | None = None, feedback: Feedback | None = None) -> None:
        self.answers[capture_id] = {"result": result, "feedback": feedback}

    def state(self, capture_id: str) -> dict[str, Any]:
        if capture_id not in self.sent:
            return {"state": "unknown", "result": None, "feedback": None}
        answer = self.answers.get(capture_id, {})
        state = "answered" if answer.get("feedback") or answer.get("result") else "sent"
        return {"state": state, "result": answer.get("result"), "feedback": answer.get("feedback")}

    def stats(self) -> dict[str, Any]:
        return {"queued": 0, "sent": len(self.sent), "connected": self.connected}
