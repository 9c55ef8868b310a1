"""An offline systemd root for `systemd-analyze --root=... verify`: the host's vendor units (so
dependencies like sysinit.target resolve) plus empty stand-ins for the executables our units start,
which do not exist on a development machine (verify checks ExecStart= binaries exist)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
VENDOR_UNITS = Path("/usr/lib/systemd/system")
STAND_INS = (
    "opt/skinscan/venv/bin/skinscan-device",
    "opt/skinscan/venv/bin/skinscan-cloud",
    "usr/sbin/mosquitto",
    "usr/bin/cage",
    "usr/bin/mkdir",
    "usr/bin/chown",
    "usr/bin/kill",
)


def need_systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    if not (VENDOR_UNITS / "sysinit.target").is_file():
        pytest.skip(f"{VENDOR_UNITS} has no systemd units to verify against")
    return exe


def prepare_root(root: Path) -> Path:
    """Make ``root`` verifiable: vendor units, merged-/usr links and executable stand-ins."""
    (root / "usr/lib/systemd").mkdir(parents=True, exist_ok=True)
    if not (root / "usr/lib/systemd/system").exists():
        shutil.copytree(VENDOR_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    for link in ("lib", "bin", "sbin"):
        if not (root / link).exists():
            (root / link).symlink_to(f"usr/{link}")
    for rel in STAND_INS:
        exe = root / rel
        if not exe.exists():
            exe.parent.mkdir(parents=True, exist_ok=True)
            exe.write_text("#!/bin/sh\nexit 0\n")
            exe.chmod(0o755)
    return root


def verify(root: Path, unit: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", f"--root={root}", "verify", unit],
                          capture_output=True, text=True, timeout=60)


def exposure(root: Path, unit: str) -> float:
    """systemd-analyze security's overall exposure (0 = locked down, 10 = fully exposed)."""
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}", unit],
                         capture_output=True, text=True, timeout=60)
    for line in out.stdout.splitlines():
        if "Overall exposure level" in line:
            return float(line.split(":", 1)[1].split()[0])
    raise AssertionError(f"no exposure level in systemd-analyze security output:\n{out.stdout}{out.stderr}")
