"""Temperature scaling and the abstention threshold, both chosen on val only."""

from __future__ import annotations

import numpy as np

from device.inference import softmax


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    p = softmax(logits, temperature)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Minimise val negative log-likelihood over T (coarse grid, then a fine one around the best)."""
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 60))
    best = min(grid, key=lambda t: nll(logits, y, t))
    fine = np.linspace(best * 0.9, best * 1.1, 41)
    return float(min(fine, key=lambda t: nll(logits, y, t)))


def coverage_curve(probs: np.ndarray, y: np.ndarray) -> list[dict[str, float]]:
    """Accuracy of the kept predictions at each candidate threshold."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    rows = []
    for t in np.round(np.arange(0.0, 1.0, 0.05), 2):
        kept = confidence >= t
        if kept.any():
            rows.append({"threshold": float(t), "coverage": float(kept.mean()),
                         "accuracy": float(correct[kept].mean())})
    return rows


def choose_threshold(probs: np.ndarray, y: np.ndarray, target_accuracy: float, max_abstain: float) -> float:
    """Lowest threshold whose kept predictions reach ``target_accuracy``, abstaining on at most
    ``max_abstain`` of cases; if no threshold reaches the target, the one at the abstention limit."""
    confidence = np.sort(probs.max(axis=1))
    correct_sorted = (probs.argmax(axis=1) == y)[np.argsort(probs.max(axis=1), kind="stable")]
    n = len(confidence)
    limit = int(np.floor(max_abstain * n))
    for k in range(0, limit + 1):
        kept = correct_sorted[k:]
        if kept.size and kept.mean() >= target_accuracy:
            return float(confidence[k]) if k > 0 else 0.0
    return float(confidence[limit])
