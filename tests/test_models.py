"""Model pipeline: metrics by hand, calibration, training end to end on a generated tree."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device import imageio
from device.inference import TFLiteModel, softmax
from device.preprocess import model_input
from models import calibrate, data, metrics
from models.manifest import load, sha256_file
from tests.support.synthetic import make_dataset

ROOT = Path(__file__).resolve().parent.parent


def test_metrics_match_hand_computed_values():
    classes = ["a", "b", "melanoma"]
    y = np.array([0, 0, 0, 1, 1, 2])
    probs = np.array([
        [0.8, 0.1, 0.1],  # a -> a
        [0.6, 0.3, 0.1],  # a -> a
        [0.2, 0.7, 0.1],  # a -> b
        [0.1, 0.8, 0.1],  # b -> b
        [0.3, 0.3, 0.4],  # b -> melanoma
        [0.1, 0.2, 0.7],  # melanoma -> melanoma
    ])
    m = metrics.compute(y, probs, classes, threshold=0.65, dangerous=["melanoma", "b"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_recall"] == pytest.approx({"a": 2 / 3, "b": 1 / 2, "melanoma": 1.0})
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["per_class_precision"] == pytest.approx({"a": 1.0, "b": 1 / 2, "melanoma": 1 / 2})
    assert m["per_class_f1"]["a"] == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # melanoma: positives {5}; scores 0.7 vs negatives 0.1,0.1,0.1,0.1,0.4 -> AUC 1.0
    assert m["per_class_auc"]["melanoma"] == pytest.approx(1.0)
    # class a: positive scores .8 .6 .2 vs negatives .1 .3 .1 -> pairs won 3+3+(1 + 0 + 1)=8 of 9
    assert m["per_class_auc"]["a"] == pytest.approx(8 / 9)
    assert m["melanoma_sensitivity"] == 1.0
    assert m["melanoma_specificity"] == pytest.approx(4 / 5)
    # kept at 0.65: rows 0, 2, 3, 5 -> 3 of 4 correct
    assert m["coverage"] == pytest.approx(4 / 6)
    assert m["selective_accuracy"] == pytest.approx(3 / 4)
    # "see a doctor": predicted b or melanoma, or unsure (< 0.65): b rows 3 (b), 4 (melanoma) -> 2/2;
    # melanoma row 5 (melanoma) -> 1/1
    assert m["see_doctor_rate"] == {"melanoma": 1.0, "b": 1.0}
    # 15 bins: confidences .8 (bin .8-.867), .6, .7, .8, .4, .7
    expected_ece = (abs(1 - 0.8) * 2 + abs(1 - 0.6) + abs(0.5 - 0.7) * 2 + abs(0 - 0.4)) / 6
    assert m["ece"] == pytest.approx(expected_ece)


def test_auc_counts_ties_as_half():
    y = np.array([0, 1, 0, 1])
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    # class 1 scores: pos {.5, .8}, neg {.5, .1}: (.5 vs .5 = half, .5>.1, .8>.5, .8>.1) = 3.5/4
    assert metrics.compute(y, probs, ["x", "y"])["per_class_auc"]["y"] == pytest.approx(3.5 / 4)


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, (4000, 4))
    y = np.array([rng.choice(4, p=softmax(row)) for row in true_logits])
    fitted = calibrate.fit_temperature(true_logits * 3.0, y)
    assert fitted == pytest.approx(3.0, rel=0.15)


def test_threshold_reaches_target_or_stops_at_the_abstention_limit():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.55, 0.45]])
    y = np.array([0, 0, 0, 1, 1])  # the two least confident are wrong
    assert calibrate.choose_threshold(probs, y, 1.0, 0.5) == pytest.approx(0.7)
    assert calibrate.choose_threshold(probs, y, 1.0, 0.2) == pytest.approx(0.6)
    assert calibrate.choose_threshold(probs, y, 0.5, 0.5) == 0.0


def test_evaluation_uses_the_device_preprocessing(tmp_path: Path):
    root = make_dataset(tmp_path / "d", train=1, val=2)
    split = data.scan(root / "val")
    inputs, _ = data.load_inputs(split, 64, workers=1)
    assert np.array_equal(inputs[0], model_input(imageio.read(split.paths[0]), 64))


def test_scan_rejects_unknown_classes(tmp_path: Path):
    root = make_dataset(tmp_path / "d", train=1, val=1)
    (root / "val" / "zeta").mkdir()
    with pytest.raises(ValueError, match="zeta"):
        data.scan(root / "val", ["alpha", "beta", "gamma"])


@pytest.mark.slow
def test_train_convert_evaluate_end_to_end(tmp_path: Path):
    root = make_dataset(tmp_path / "data", train=10, val=4)
    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "models.train", "--data", str(root), "--out", str(out), "--arch", "v2",
           "--size", "64", "--weights-dir", "none", "--head-epochs", "2", "--fine-epochs", "1",
           "--target-views", "20", "--max-views", "2", "--seed", "7", "--version", "test-1"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    manifest = load(out / "model.json")
    assert manifest.labels == ["alpha", "beta", "gamma"]
    assert manifest.version == "test-1" and manifest.seed == 7 and manifest.input_size == 64
    assert len(manifest.data_manifest_sha256) == 64
    for entry in manifest.files.values():
        assert sha256_file(out / entry.path) == entry.sha256
    int8 = TFLiteModel(out / manifest.files["int8"].path)
    assert int8.input_dtype == np.uint8
    details = int8._interp.get_tensor_details()
    assert any(d["dtype"] == np.int8 and len(d["shape"]) == 4 for d in details), "no int8 weight tensors"
    assert int8._interp.get_output_details()[0]["dtype"] == np.int8
    calib = manifest.files["int8"].calibration
    assert calib is not None and calib.temperature > 0 and 0 <= calib.threshold <= 1

    ev = subprocess.run([sys.executable, "-m", "models.evaluate", "--model", str(out / "skin_int8.tflite"),
                         "--data", str(root / "val"), "--json", "--out", str(tmp_path / "eval")],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-3000:]
    result = json.loads(ev.stdout)
    for key in ("accuracy", "balanced_accuracy", "per_class_recall", "ece"):
        assert key in result
    assert set(result["per_class_recall"]) == {"alpha", "beta", "gamma"}
    assert result["count"] == 12
    for name in ("metrics.json", "confusion.png", "reliability.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    assert not math.isnan(result["ece"])
