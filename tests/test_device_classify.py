"""`skinscan-device classify` and the shared pipeline on the real TFLite model, generated and real images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from device import imageio, preprocess
from device.diagnose import Diagnoser
from device.inference import Classifier
from models import manifest as manifest_mod
from settings import load_device
from tests.support import badimages, samples

ROOT = Path(__file__).resolve().parent.parent


def _cli(args: list[str], manifest: Path | str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ, SKINSCAN_MODEL__MANIFEST=str(manifest), SKINSCAN_MODEL__THREADS="1", **env)
    return subprocess.run([sys.executable, "-m", "device.cli", *args], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def diagnoser(model_manifest: Path) -> Diagnoser:
    return Diagnoser(Classifier(model_manifest, threads=1))


def test_classify_json_reports_every_bad_file_and_exits_non_zero(tmp_path: Path, model_manifest: Path):
    bad, odd = badimages.write_all(tmp_path)
    good = tmp_path / "lesion.jpg"
    good.write_bytes(imageio.encode_jpeg(samples.skin_photo(320, 240)))
    paths = [good, *bad.values(), *odd.values(), tmp_path / "missing.jpg"]
    proc = _cli(["classify", "--json", *map(str, paths)], model_manifest)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(p) for p in paths]
    by_name = {Path(line["path"]).name: line for line in lines}
    labels = manifest_mod.load(model_manifest).labels
    for name in [good.name, *odd]:
        line = by_name[name]
        assert "error" not in line, line
        assert line["label"] in labels
        assert set(line["probabilities"]) == set(labels)
        assert abs(sum(line["probabilities"].values()) - 1) < 1e-3
        assert isinstance(line["unsure"], bool) and line["latency_ms"] > 0
        assert 0 <= line["confidence"] <= 1
        assert line["disclaimer"] == "Screening aid, not a diagnosis."
    for name, (_, phrase) in badimages.unusable().items():
        assert set(by_name[name]) == {"path", "error"}
        assert phrase in by_name[name]["error"]
    assert "no such file" in by_name["missing.jpg"]["error"]


def test_classify_text_output_and_all_good_exit_zero(tmp_path: Path, model_manifest: Path):
    good = tmp_path / "lesion.png"
    cv2.imwrite(str(good), samples.skin_photo(256, 256)[..., ::-1])
    proc = _cli(["classify", "--hair-removal", str(good)], model_manifest)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{good}: ")
    assert "Screening aid, not a diagnosis." in proc.stdout


def test_classify_without_a_model_says_so(tmp_path: Path):
    proc = _cli(["classify", "--json", str(tmp_path / "x.jpg")], tmp_path / "model.json")
    assert proc.returncode == 2
    assert "cannot load the model" in proc.stderr and "Traceback" not in proc.stderr


def test_pipeline_uses_the_manifest_input_size_and_auto_crop(diagnoser: Diagnoser):
    rgb = samples.skin_photo(640, 480, centre=(0.3, 0.4))
    size = diagnoser.classifier.input_size
    assert preprocess.model_input(rgb, size).shape == (size, size, 3)
    d = diagnoser.diagnose(rgb)
    x0, y0, x1, y1 = d.box
    assert x1 - x0 == y1 - y0  # a square...
    assert x0 < 0.3 * 640 < x1 and y0 < 0.4 * 480 < y1  # ...around the lesion
    assert d.report.disclaimer == "Screening aid, not a diagnosis."
    user = diagnoser.diagnose(rgb, (100, 100, 300, 260))
    assert user.box == (100, 100, 300, 260)


def test_hair_removal_is_wired_from_settings(model_manifest: Path):
    env = {"SKINSCAN_MODEL__MANIFEST": str(model_manifest)}
    assert Diagnoser.from_config(load_device(environ=env)).hair_removal is False
    env["SKINSCAN_PREPROCESS__HAIR_REMOVAL"] = "true"
    assert Diagnoser.from_config(load_device(environ=env)).hair_removal is True


def test_hair_removal_erases_thin_dark_lines():
    clean = samples.skin_photo(256, 256, hairs=0, radius=0.1)
    hairy = clean.copy()
    cv2.line(hairy, (10, 20), (240, 230), (30, 20, 15), 2, cv2.LINE_AA)
    before = np.abs(hairy.astype(int) - clean).mean()
    after = np.abs(preprocess.remove_hair(hairy).astype(int) - clean).mean()
    assert after < before * 0.5


def test_quality_gate_gives_the_measured_value():
    sharp = samples.skin_photo(400, 300)
    assert preprocess.assess(sharp).ok
    blurry = cv2.GaussianBlur(sharp, (0, 0), 8)
    q = preprocess.assess(blurry)
    assert not q.ok
    issue = next(i for i in q.issues if i.code == "blur")
    assert issue.message == f"retake: too blurry (score {q.blur:.0f}, needs ≥ {preprocess.BLUR_MIN:.0f})"
    dark = (sharp * 0.15).astype(np.uint8)
    assert any(i.code == "dark" for i in preprocess.assess(dark).issues)


@pytest.mark.needs_shared
def test_real_validation_images(skin_data: Path, diagnoser: Diagnoser):
    paths = sorted((skin_data / "val").glob("*/*.jpg"))[::97][:8]
    assert paths, "no val images"
    for path in paths:
        d = diagnoser.diagnose(imageio.read(path))
        assert d.prediction.label in diagnoser.classifier.labels
        assert d.quality.blur > 0 and d.total_ms > 0
