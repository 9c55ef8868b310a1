"""Retraining: the promotion rule by hand, the label list, and a real retrain of a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models import retrain
from models.manifest import load, sha256_file


def result(ba: float, recall: dict[str, float], support: dict[str, int] | None = None) -> dict:
    return {"balanced_accuracy": ba, "per_class_recall": recall,
            "per_class_support": support or dict.fromkeys(recall, 10)}


def test_equal_models_are_promoted():
    r = result(0.8, {"a": 0.9, "b": 0.7})
    d = retrain.decide(r, r, 0.05)
    assert d["promote"] is True
    assert d["per_class_recall"]["a"]["delta"] == 0.0


def test_worse_balanced_accuracy_is_rejected():
    d = retrain.decide(result(0.80, {"a": 0.9, "b": 0.7}), result(0.79, {"a": 0.9, "b": 0.68}), 0.05)
    assert d["promote"] is False
    assert any("balanced accuracy falls" in r for r in d["reasons"])
    assert d["balanced_accuracy"]["delta"] == pytest.approx(-0.01)


def test_a_class_recall_drop_beyond_the_margin_is_rejected_even_if_balanced_accuracy_rises():
    cur = result(0.70, {"a": 0.9, "b": 0.5})
    cand = result(0.75, {"a": 0.8, "b": 0.7})  # a falls 10 points, b rises 20
    d = retrain.decide(cur, cand, 0.05)
    assert d["promote"] is False
    assert d["reasons"] == ["recall of a drops 0.9000 -> 0.8000 (more than 0.0500)"]
    assert d["per_class_recall"]["a"]["delta"] == pytest.approx(-0.1)
    assert d["per_class_recall"]["b"]["delta"] == pytest.approx(0.2)
    assert retrain.decide(cur, cand, 0.10)["promote"] is True  # within a 10-point margin


def test_a_class_absent_from_the_test_set_is_reported_but_not_judged():
    cur = result(0.7, {"a": 0.7, "new": 0.0}, {"a": 10, "new": 0})
    cand = result(0.7, {"a": 0.7, "new": 0.0}, {"a": 10, "new": 0})
    d = retrain.decide(cur, cand, 0.0)
    assert d["promote"] is True
    assert d["per_class_recall"]["new"]["delta"] is None


def test_label_list_keeps_the_output_order_and_appends_new_classes(tmp_path: Path):
    for name in ("train/zeta", "train/alpha", "extra/beta", "extra/eta"):
        (tmp_path / name).mkdir(parents=True)
    assert retrain.label_list(["beta", "alpha"], tmp_path / "train", tmp_path / "extra") == \
        ["beta", "alpha", "eta", "zeta"]


def test_cli_rejects_a_missing_current_model(tmp_path: Path, capsys):
    code = retrain.main(["--current", str(tmp_path / "nope.json"), "--data", str(tmp_path), "--extra",
                         str(tmp_path), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "no such model manifest" in capsys.readouterr().err


@pytest.mark.slow
def test_retrain_writes_a_candidate_with_the_new_class_and_a_consistent_decision(tiny_lineage):
    parent, child = load(tiny_lineage.parent / "model.json"), load(tiny_lineage.child / "model.json")
    assert child.labels == ["alpha", "beta", "gamma", "delta"]
    assert child.parent == "tiny-1" and child.version == "tiny-2"
    assert child.input_size == parent.input_size == 64
    assert child.training["extra_counts"] == {"alpha": 3, "beta": 3, "gamma": 0, "delta": 4}
    assert child.data_manifest_sha256 != parent.data_manifest_sha256
    for entry in child.files.values():
        assert sha256_file(tiny_lineage.child / entry.path) == entry.sha256

    d = json.loads(tiny_lineage.decision.read_text())
    cur, cand = d["metrics"]["current"], d["metrics"]["candidate"]
    # Both scored on the same test images, in the candidate's label space.
    assert cur["count"] == cand["count"] == 12
    assert cur["labels"] == cand["labels"] == child.labels
    assert d["current"]["version"] == "tiny-1" and d["candidate"]["version"] == "tiny-2"
    for name, row in d["per_class_recall"].items():
        assert row["current"] == cur["per_class_recall"][name]
        assert row["candidate"] == cand["per_class_recall"][name]
        if name == "delta":
            assert row["delta"] is None and row["support"] == 0
        else:
            assert row["delta"] == pytest.approx(row["candidate"] - row["current"])
    expected = (cand["balanced_accuracy"] >= cur["balanced_accuracy"] - 1e-9
                and all(r["delta"] is None or r["delta"] >= -0.1 - 1e-9 for r in d["per_class_recall"].values()))
    assert d["promote"] is expected


@pytest.mark.slow
def test_candidate_starts_from_the_parent_weights(tiny_lineage):
    import keras

    parent = keras.saving.load_model(tiny_lineage.parent / "skin_float.keras", compile=False)
    parts = retrain.from_current(tiny_lineage.parent / "skin_float.keras", "v2", 64,
                                 ["alpha", "beta", "gamma", "delta"], ["alpha", "beta", "gamma"])
    x = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3)).astype(np.float32)
    before = np.asarray(parent(x, training=False))
    after = np.asarray(parts.full(x, training=False))
    np.testing.assert_allclose(after[:, :3], before, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(after[:, 3], before.mean(axis=1), rtol=1e-4, atol=1e-4)
    bn = [layer for layer in parts.upper.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and not any(layer.trainable for layer in bn)


@pytest.mark.slow
def test_a_model_compared_with_itself_is_promoted(tiny_lineage):
    mj = tiny_lineage.parent / "model.json"
    d = retrain.compare(mj, mj, tiny_lineage.data / "val", "int8", 0.0)
    assert d["promote"] is True
    assert all(row["delta"] == 0 for row in d["per_class_recall"].values())
