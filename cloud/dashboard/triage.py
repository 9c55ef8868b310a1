"""The triage queue: risk flags per case and the order doctors see them in.

Risk first: a dangerous class (model.json ``dangerous``) by the cloud or the device model, then
"unsure", then device/cloud disagreement, then the rest; newest first within a tier. Reviewed
cases leave the default ("open") view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloud.storage import OTHER_LABEL, Storage

STATUSES = ("open", "reviewed", "all")
FLAGS = ("dangerous", "unsure", "disagree", "urgent")
QUEUE_LIMIT = 500  # newest cases considered per view; older open cases are reached with filters


@dataclass(frozen=True)
class LabelSet:
    labels: list[str]  # the model's classes
    dangerous: list[str]

    @property
    def choices(self) -> list[str]:
        """What a doctor may answer: the model's classes plus "other / not assessable"."""
        return [*self.labels, OTHER_LABEL]


def flags(case: dict[str, Any], review: dict[str, Any] | None, dangerous: list[str]) -> dict[str, bool]:
    device = case.get("device_prediction") or {}
    cloud_label, device_label = case.get("label"), device.get("label")
    return {
        "dangerous": bool({cloud_label, device_label} & set(dangerous)),
        "unsure": bool(case.get("unsure") or device.get("unsure")),
        "disagree": bool(cloud_label and device_label and cloud_label != device_label),
        "pending": cloud_label is None,
        "reviewed": review is not None,
        "urgent": bool(review and review["urgent"]),
    }


def risk_rank(f: dict[str, bool]) -> int:
    if f["dangerous"] or f["urgent"]:
        return 0
    if f["unsure"]:
        return 1
    if f["disagree"]:
        return 2
    return 3


@dataclass(frozen=True)
class Filters:
    status: str = "open"
    device: str = ""
    label: str = ""
    flag: str = ""

    @classmethod
    def from_args(cls, args: Any) -> Filters:
        status = args.get("status", "open")
        flag = args.get("flag", "")
        return cls(status=status if status in STATUSES else "open", device=args.get("device", "")[:63],
                   label=args.get("label", "")[:64], flag=flag if flag in FLAGS else "")

    def as_dict(self) -> dict[str, str]:
        return {"status": self.status, "device": self.device, "label": self.label, "flag": self.flag}


def queue(storage: Storage, labels: LabelSet, filters: Filters) -> list[dict[str, Any]]:
    cases = storage.cases(limit=QUEUE_LIMIT, device_id=filters.device or None)
    latest = storage.latest_reviews([c["capture_id"] for c in cases])
    rows = []
    for case in cases:
        review = latest.get(case["capture_id"])
        f = flags(case, review, labels.dangerous)
        if (filters.status == "open" and f["reviewed"]) or (filters.status == "reviewed" and not f["reviewed"]):
            continue
        if filters.label and filters.label not in (case["label"], (case["device_prediction"] or {}).get("label")):
            continue
        if filters.flag and not f[filters.flag]:
            continue
        rows.append(row(case, review, f))
    rows.sort(key=lambda r: (r["flags"]["reviewed"], r["rank"], -r["received_ts"]))
    return rows


def _top(probabilities: dict[str, float] | None, n: int = 3) -> list[list[Any]]:
    return [[k, round(v, 4)] for k, v in sorted((probabilities or {}).items(), key=lambda kv: -kv[1])[:n]]


def row(case: dict[str, Any], review: dict[str, Any] | None, f: dict[str, bool]) -> dict[str, Any]:
    device = case["device_prediction"]
    return {
        "capture_id": case["capture_id"],
        "device_id": case["device_id"],
        "received_at": case["received_at"].isoformat(),
        "received_ts": case["received_at"].timestamp(),
        "captured_at": case["captured_at"].isoformat(),
        "cloud": None if case["label"] is None else {
            "label": case["label"], "confidence": case["confidence"], "unsure": bool(case["unsure"]),
            "top": _top(case["probabilities"]), "model_version": case["model_version"]},
        "device": None if device is None else {
            "label": device["label"], "confidence": device["confidence"], "unsure": device["unsure"],
            "top": _top(device["probabilities"]), "model_version": device["model_version"]},
        "flags": f,
        "rank": risk_rank(f),
        "review": None if review is None else {
            "label": review["label"], "doctor": review["doctor"], "urgent": review["urgent"],
            "given_at": review["given_at"].isoformat()},
    }
