"""Self-test of a freshly loaded model before it may serve: sanity checks plus the bundled reference
images, whose expected answers the cloud recorded with the same int8 file (cloud.bundles)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from device.inference import Classifier

log = logging.getLogger(__name__)


class SelfTestError(RuntimeError):
    """The model loaded but does not behave as its bundle says it should."""


def sanity(classifier: Classifier) -> None:
    """Checks every model must pass, bundled or factory: labels, input size, output width."""
    labels = classifier.labels
    if not labels or len(set(labels)) != len(labels):
        raise SelfTestError(f"labels must be unique and non-empty, got {labels}")
    if classifier.model.input_size != classifier.input_size:
        raise SelfTestError(f"model input is {classifier.model.input_size} px, model.json says "
                            f"{classifier.input_size}")
    probe = np.full((classifier.input_size, classifier.input_size, 3), 128, np.uint8)
    logits = classifier.model.logits(probe)
    if logits.shape != (len(labels),):
        raise SelfTestError(f"model outputs {logits.shape} values for {len(labels)} labels")
    if not np.all(np.isfinite(logits)):
        raise SelfTestError("model outputs non-finite values")


def run(classifier: Classifier, model_dir: Path) -> int:
    """Sanity checks, then every reference image in ``model.json``'s ``self_test``; returns how many
    images were checked (0 for a model without a self-test block, such as the factory one)."""
    sanity(classifier)
    spec = classifier.manifest.self_test
    if spec is None:
        return 0
    labels = classifier.labels
    root = model_dir.resolve()
    for case in spec.cases:
        path = (root / case.path).resolve()
        if root not in path.parents or not path.is_file():
            raise SelfTestError(f"reference image {case.path} is missing from the bundle")
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"))
        if pixels.shape != (classifier.input_size, classifier.input_size, 3):
            raise SelfTestError(f"{case.path} is {pixels.shape}, the model takes "
                                f"{classifier.input_size}x{classifier.input_size}x3")
        if len(case.probabilities) != len(labels) or case.label not in labels:
            raise SelfTestError(f"{case.path}: expectation does not match the label list {labels}")
        got = classifier.predict_pixels(pixels)
        probs = np.array([got.probabilities[label] for label in labels])
        expected = np.asarray(case.probabilities)
        diff = float(np.abs(probs - expected).max())
        if diff > spec.tolerance:
            raise SelfTestError(f"{case.path}: probabilities differ from the bundle's by {diff:.3f} "
                                f"(tolerance {spec.tolerance}); expected {case.label}, got {got.label}")
        # A near tie may flip within the tolerance; a clear winner must stay the winner.
        top2 = np.sort(expected)[-2:]
        if got.label != case.label and top2[1] - top2[0] > 2 * spec.tolerance:
            raise SelfTestError(f"{case.path}: expected {case.label}, got {got.label}")
    log.info("self-test of %s passed on %d reference images", classifier.version, len(spec.cases))
    return len(spec.cases)
