"""The instant offline report: top classes, urgency and advice, always a screening aid."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from device.inference import Prediction
from device.preprocess import Quality

DISCLAIMER = "Screening aid, not a diagnosis."
SEE_DOCTOR_SOON = "See a dermatologist soon."
UNSURE_ADVICE = "Unsure: retake the photo or see a doctor."

# urgency: "soon" (dangerous: see a dermatologist soon), "routine", "unsure"
ADVICE: dict[str, tuple[str, str, str]] = {
    # label: (display name, urgency, advice)
    "melanoma": ("Melanoma", "soon", SEE_DOCTOR_SOON + " Melanoma is treatable when caught early."),
    "basal_cell_carcinoma": ("Basal cell carcinoma", "soon", SEE_DOCTOR_SOON),
    "actinic_keratosis": ("Actinic keratosis", "soon", SEE_DOCTOR_SOON + " It can progress to skin cancer."),
    "benign_keratosis": ("Benign keratosis", "routine",
                         "Usually harmless. See a doctor if it grows, bleeds or changes."),
    "nevus": ("Mole (nevus)", "routine",
              "Usually harmless. Watch for changes in size, shape or colour (ABCDE) and see a doctor if so."),
    "dermatofibroma": ("Dermatofibroma", "routine", "Usually harmless. See a doctor if it hurts or changes."),
    "vascular_lesion": ("Vascular lesion", "routine", "Usually harmless. See a doctor if it bleeds or grows."),
    "acne": ("Acne", "routine", "Gentle cleansing; see a doctor or pharmacist if severe or scarring."),
    "eczema": ("Eczema", "routine", "Moisturise and avoid triggers; see a doctor if it spreads or is infected."),
}


def describe(label: str) -> tuple[str, str, str]:
    return ADVICE.get(label, (label.replace("_", " ").capitalize(), "routine",
                              "See a doctor if you are worried or it changes."))


@dataclass(frozen=True)
class Report:
    label: str
    name: str
    confidence: float
    unsure: bool
    urgency: str  # soon | routine | unsure
    advice: str
    see_doctor: bool
    top: list[dict[str, object]]
    quality: str
    retake: bool
    model_version: str
    latency_ms: float
    disclaimer: str = DISCLAIMER

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def build(prediction: Prediction, quality: Quality | None = None, dangerous: list[str] | None = None) -> Report:
    name, urgency, advice = describe(prediction.label)
    if dangerous is not None and prediction.label in dangerous:
        urgency = "soon"
    if prediction.unsure:
        urgency, advice = "unsure", UNSURE_ADVICE
    top = [{"label": label, "name": describe(label)[0], "probability": round(p, 4)}
           for label, p in prediction.top(3)]
    return Report(
        label=prediction.label,
        name=name,
        confidence=prediction.confidence,
        unsure=prediction.unsure,
        urgency=urgency,
        advice=advice,
        see_doctor=urgency in {"soon", "unsure"},
        top=top,
        quality=quality.summary if quality else "not checked",
        retake=bool(quality and not quality.ok),
        model_version=prediction.model_version,
        latency_ms=prediction.latency_ms,
    )


def as_text(path: str, report: Report) -> str:
    lines = [f"{path}: {report.name} ({report.confidence:.0%})" + ("  [UNSURE]" if report.unsure else "")]
    lines += [f"    {t['name']}: {t['probability']:.1%}" for t in report.top]
    lines.append(f"    {report.advice}")
    if report.retake:
        lines.append(f"    Photo quality: {report.quality}")
    lines.append(f"    {report.disclaimer}")
    return "\n".join(lines)
