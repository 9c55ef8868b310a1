"""Classification metrics for a screening model (pure numpy, checked by hand in tests)."""

from __future__ import annotations

import itertools

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Mann-Whitney U form of ROC AUC, ties counted half."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return None
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order), dtype=np.float64)
    values = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def reliability(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> list[dict[str, float]]:
    """Per confidence bin: how many, mean confidence, accuracy (the reliability diagram's bars)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    rows = []
    for lo, hi in itertools.pairwise(np.linspace(0.0, 1.0, bins + 1)):
        mask = (confidence > lo) & (confidence <= hi)
        if mask.any():
            rows.append({"lo": float(lo), "hi": float(hi), "count": int(mask.sum()),
                         "confidence": float(confidence[mask].mean()), "accuracy": float(correct[mask].mean())})
    return rows


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    n = len(y_true)
    return float(sum(r["count"] / n * abs(r["accuracy"] - r["confidence"]) for r in reliability(probs, y_true, bins)))


def compute(y_true: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float = 0.0,
            positive: str = "melanoma", dangerous: tuple[str, ...] | list[str] = ()) -> dict[str, object]:
    """Every figure the model card and ``models.evaluate --json`` report.

    ``see_doctor_rate``: for each dangerous class, the share of its images whose report says "see a
    doctor", i.e. the prediction is a dangerous class or the model is unsure (below ``threshold``)."""
    n = len(classes)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probs.argmax(axis=1)
    cm = confusion(y_true, y_pred, n)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm).astype(np.float64)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    present = support > 0
    aucs = {c: _auc(probs[:, i], y_true == i) for i, c in enumerate(classes)}
    valid_aucs = [a for a in aucs.values() if a is not None]
    kept = probs.max(axis=1) >= threshold
    out: dict[str, object] = {
        "count": len(y_true),
        "accuracy": float((y_pred == y_true).mean()),
        "balanced_accuracy": float(recall[present].mean()),
        "per_class_recall": {c: float(recall[i]) for i, c in enumerate(classes)},
        "per_class_precision": {c: float(precision[i]) for i, c in enumerate(classes)},
        "per_class_f1": {c: float(f1[i]) for i, c in enumerate(classes)},
        "per_class_support": {c: int(support[i]) for i, c in enumerate(classes)},
        "per_class_auc": aucs,
        "macro_auc": float(np.mean(valid_aucs)) if valid_aucs else None,
        "ece": expected_calibration_error(probs, y_true),
        "threshold": float(threshold),
        "coverage": float(kept.mean()),
        "selective_accuracy": float((y_pred[kept] == y_true[kept]).mean()) if kept.any() else None,
        "confusion_matrix": cm.tolist(),
        "labels": list(classes),
    }
    danger = [classes.index(c) for c in dangerous if c in classes]
    if danger:
        referred = np.isin(y_pred, danger) | ~kept
        out["see_doctor_rate"] = {classes[k]: float(referred[y_true == k].mean()) if (y_true == k).any() else None
                                  for k in danger}
    if positive in classes:
        k = classes.index(positive)
        is_pos, said_pos = y_true == k, y_pred == k
        out[f"{positive}_sensitivity"] = float((said_pos & is_pos).sum() / max(1, is_pos.sum()))
        out[f"{positive}_specificity"] = float((~said_pos & ~is_pos).sum() / max(1, (~is_pos).sum()))
    return out
