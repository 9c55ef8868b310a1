"""Shared fixtures: a real broker, temporary data dirs, and the ../shared data when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.broker import Broker

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SKINSCAN_SHARED", ROOT.parent / "shared"))
SKIN_DATA = SHARED / "data" / "skin"
WEIGHTS = SHARED / "weights"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def broker(tmp_path: Path):
    """Mosquitto with broker/ config (auth, ACL, persistence) on a free port; stopped afterwards."""
    b = Broker(tmp_path / "broker", devices=["kiosk-a", "kiosk-b"])
    b.data_dir.mkdir()
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def skin_data() -> Path:
    if not (SKIN_DATA / "val").is_dir():
        pytest.skip(f"real images not available: {SKIN_DATA} is absent")
    return SKIN_DATA


@pytest.fixture(scope="session")
def imagenet_weights() -> Path:
    if not (WEIGHTS / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5").is_file():
        pytest.skip(f"ImageNet weights not available: {WEIGHTS} is absent")
    return WEIGHTS


MODEL_MANIFEST = Path(os.environ.get("SKINSCAN_TEST_MODEL", ROOT / "models" / "model.json"))


@pytest.fixture(scope="session")
def model_manifest() -> Path:
    """The real TFLite model (models/model.json and its files); skips when not installed."""
    if not MODEL_MANIFEST.is_file():
        pytest.skip(f"model not available: {MODEL_MANIFEST} is absent (train one or copy it in)")
    return MODEL_MANIFEST


@pytest.fixture(scope="session")
def tiny_lineage(tmp_path_factory):
    """A tiny model trained by models.train and its child retrained by models.retrain on confirmed cases
    that include a class the parent does not know (``delta``). Trained once per test session."""
    from types import SimpleNamespace

    from models import retrain, train
    from tests.support.ota import TINY_TRAINING
    from tests.support.synthetic import make_dataset, make_tree

    root = tmp_path_factory.mktemp("lineage")
    data = make_dataset(root / "data", train=8, val=4)
    extra = make_tree(root / "confirmed", {"alpha": 3, "beta": 3, "delta": 4}, seed=5)
    parent, child = root / "v1", root / "v2"
    assert train.main(["--data", str(data), "--out", str(parent), "--arch", "v2", "--size", "64",
                       "--seed", "7", "--version", "tiny-1", *TINY_TRAINING]) == 0
    assert retrain.main(["--current", str(parent / "model.json"), "--data", str(data), "--extra", str(extra),
                         "--out", str(child), "--seed", "8", "--version", "tiny-2", "--max-recall-drop", "0.1",
                         *TINY_TRAINING]) == 0
    return SimpleNamespace(data=data, extra=extra, parent=parent, child=child, decision=child / "decision.json")
