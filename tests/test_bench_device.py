"""bench/device.py runs and prints every figure it promises (the figures themselves are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_device_benchmark_prints_its_figures(model_manifest: Path):
    env = dict(os.environ, SKINSCAN_MODEL__THREADS="1")
    proc = subprocess.run([sys.executable, "bench/device.py", "--model", str(model_manifest), "--images", "9",
                           "--seconds", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.startswith("Machine: ")
    assert "overlaid video delivered to a viewer" in out and "model classifications" in out
    if "skipping the latency benchmark" not in out:
        for stage in ("decode", "quality", "crop", "denoise+resize", "inference", "report", "capture -> report"):
            assert f"  {stage} " in out, stage
