"""Photo -> quality gate -> model input -> prediction -> report: the kiosk's one code path."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from device import preprocess, report
from device.inference import Classifier, Prediction
from device.updater import ModelSlot
from settings.schema import DeviceConfig


@dataclass(frozen=True)
class Diagnosis:
    prediction: Prediction
    quality: preprocess.Quality
    report: report.Report
    total_ms: float
    box: preprocess.Box  # the crop that was classified (the user's or the automatic one)
    # The model that made it: labels, threshold and dangerous classes must come from the same one,
    # even if an over-the-air update swapped the slot meanwhile.
    model: Classifier = field(repr=False, compare=False)

    def as_json(self) -> dict[str, object]:
        p = self.prediction
        return {
            "label": p.label,
            "confidence": round(p.confidence, 6),
            "probabilities": {k: round(v, 6) for k, v in p.probabilities.items()},
            "unsure": p.unsure,
            "latency_ms": round(self.total_ms, 2),
            "model_version": p.model_version,
            "urgency": self.report.urgency,
            "see_doctor": self.report.see_doctor,
            "advice": self.report.advice,
            "quality": {"ok": self.quality.ok, "summary": self.quality.summary,
                        "blur": round(self.quality.blur, 1), "brightness": round(self.quality.brightness, 1)},
            "crop": list(self.box),
            "disclaimer": self.report.disclaimer,
        }


class Diagnoser:
    """``model``: a fixed :class:`Classifier`, or the :class:`ModelSlot` that over-the-air updates swap;
    the slot is read once per diagnosis and everything in it uses that one model."""

    def __init__(self, model: Classifier | ModelSlot, hair_removal: bool = False) -> None:
        self.slot = model if isinstance(model, ModelSlot) else ModelSlot(model)
        self.hair_removal = hair_removal

    @property
    def classifier(self) -> Classifier:
        """The model serving now (a later call may see another one after an update)."""
        return self.slot.get()

    @classmethod
    def from_config(cls, cfg: DeviceConfig) -> Diagnoser:
        return cls(Classifier(cfg.model.manifest, role="int8", threads=cfg.model.threads),
                   hair_removal=cfg.preprocess.hair_removal)

    def diagnose(self, rgb: np.ndarray, box: preprocess.Box | None = None) -> Diagnosis:
        """``box``: the user's crop; None takes the automatic lesion-centred square."""
        start = time.perf_counter()
        clf = self.slot.get()  # once: input size, prediction and dangerous classes from the same model
        quality = preprocess.assess(rgb, box)
        used = box if box is not None else preprocess.auto_box(rgb)
        pixels = preprocess.model_input(rgb, clf.input_size, used, self.hair_removal)
        prediction = clf.predict_pixels(pixels)
        rep = report.build(prediction, quality, clf.manifest.dangerous)
        return Diagnosis(prediction, quality, rep, (time.perf_counter() - start) * 1000.0, tuple(map(int, used)),
                         clf)
