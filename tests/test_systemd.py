"""systemd/: the units verify cleanly, carry the restart/watchdog/hardening the fleet relies on, and
start exactly the commands the other parts provide."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.broker import ROOT, free_port, wait_port
from tests.support.systemd import UNITS, exposure, need_systemd_analyze, prepare_root, verify

SERVICES = {
    # unit file: (instance to verify, ExecStart, config variable)
    "skinscan-kiosk.service": ("skinscan-kiosk.service", "/opt/skinscan/venv/bin/skinscan-device kiosk",
                               "SKINSCAN_DEVICE_CONFIG=/etc/skinscan/device.toml"),
    "skinscan-uplink.service": ("skinscan-uplink.service", "/opt/skinscan/venv/bin/skinscan-device uplink",
                                "SKINSCAN_DEVICE_CONFIG=/etc/skinscan/device.toml"),
    "skinscan-consumer@.service": ("skinscan-consumer@1.service", "/opt/skinscan/venv/bin/skinscan-cloud consume",
                                   "SKINSCAN_CLOUD_CONFIG=/etc/skinscan/cloud.toml"),
    "skinscan-dashboard.service": ("skinscan-dashboard.service", "/opt/skinscan/venv/bin/skinscan-cloud dashboard",
                                   "SKINSCAN_CLOUD_CONFIG=/etc/skinscan/cloud.toml"),
}


def _settings(path: Path) -> dict[str, list[str]]:
    """Unit file as key -> values (keys repeat in systemd), continuation lines joined."""
    out: dict[str, list[str]] = {}
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory) -> Path:
    need_systemd_analyze()
    root = prepare_root(tmp_path_factory.mktemp("sysroot"))
    dest = root / "etc/systemd/system"
    shutil.copytree(UNITS, dest, ignore=shutil.ignore_patterns("*.md"))
    return root


@pytest.mark.parametrize("unit", [*(v[0] for v in SERVICES.values()), "skinscan-browser.service",
                                  "mosquitto.service"])
def test_systemd_analyze_verify_is_clean(unit_root, unit):
    if unit == "mosquitto.service" and not (unit_root / "usr/lib/systemd/system/mosquitto.service").is_file():
        pytest.skip("Debian's mosquitto.service is not installed here (apt-get install mosquitto)")
    result = verify(unit_root, unit)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_verify_catches_a_broken_unit(unit_root, tmp_path):
    """The check above can fail: a typo in a unit is reported."""
    root = prepare_root(tmp_path / "root")
    (root / "etc/systemd/system").mkdir(parents=True)
    broken = (UNITS / "skinscan-kiosk.service").read_text().replace("ProtectSystem=", "ProtectSytem=")
    (root / "etc/systemd/system/skinscan-kiosk.service").write_text(broken)
    assert "Unknown key 'ProtectSytem'" in verify(root, "skinscan-kiosk.service").stderr


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_contract(name):
    _, exec_start, config_env = SERVICES[name]
    s = _settings(UNITS / name)
    assert s["ExecStart"] == [exec_start]
    assert config_env in s["Environment"]
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert int(s["WatchdogSec"][0]) > 0
    assert s["Restart"] == ["on-failure"]
    assert s["User"] == ["skinscan"]
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    writable = s["ReadWritePaths"][0].split()
    assert all(p.startswith("/var/lib/skinscan/") for p in writable)
    assert s["StandardOutput"] == ["journal"] and s["StandardError"] == ["journal"]


def test_writable_paths_cover_what_each_service_writes():
    rw = {name: set(_settings(UNITS / name)["ReadWritePaths"][0].split()) for name in SERVICES}
    assert {"/var/lib/skinscan/device", "/var/lib/skinscan/models"} <= rw["skinscan-kiosk.service"]
    assert "/var/lib/skinscan/device" in rw["skinscan-uplink.service"]  # the outbox
    assert {"/var/lib/skinscan/cloud", "/var/lib/skinscan/models"} <= rw["skinscan-consumer@.service"]
    assert "/var/lib/skinscan/cloud" in rw["skinscan-dashboard.service"]


def test_mosquitto_dropin_runs_the_project_config():
    s = _settings(UNITS / "mosquitto.service.d" / "skinscan.conf")
    # An empty ExecStart= first clears Debian's, otherwise systemd refuses two for a simple service.
    assert s["ExecStart"] == ["", "/usr/sbin/mosquitto -c /var/lib/skinscan/broker/mosquitto.conf"]
    assert "WatchdogSec" not in s  # Mosquitto 2.0 sends READY=1 but never WATCHDOG=1
    assert s["ProtectSystem"] == ["strict"] and s["NoNewPrivileges"] == ["yes"]


@pytest.mark.parametrize("unit", [v[0] for v in SERVICES.values()])
def test_services_are_locked_down(unit_root, unit):
    # systemd-analyze security rates 0 (locked down) to 10; below 3 is its "OK" band.
    assert exposure(unit_root, unit) < 3.0


def test_dropin_lowers_the_brokers_exposure(unit_root, tmp_path):
    if not (unit_root / "usr/lib/systemd/system/mosquitto.service").is_file():
        pytest.skip("Debian's mosquitto.service is not installed here")
    bare = prepare_root(tmp_path / "bare")
    assert exposure(unit_root, "mosquitto.service") < exposure(bare, "mosquitto.service") - 3


def _render_broker(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "broker" / "run"), "--render-only", "--data-dir", str(data), *args],
                          capture_output=True, text=True, timeout=30)


def test_broker_run_render_only_writes_a_config_a_system_mosquitto_runs(tmp_path):
    """What the drop-in's ExecStart runs: `mosquitto -c DATA/mosquitto.conf` on a config rendered by
    `broker/run --render-only`, which must return instead of starting Mosquitto itself."""
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    data = tmp_path / "broker"
    port, ws_port = free_port(), free_port()
    result = _render_broker(data, "--port", str(port), "--ws-port", str(ws_port), "--device", "kiosk-z")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(data / "mosquitto.conf")
    assert {p.name for p in data.iterdir()} == {"mosquitto.conf", "passwd", "acl", "credentials"}
    log = open(tmp_path / "mosquitto.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["mosquitto", "-c", str(data / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port)
        secret = (data / "credentials" / "kiosk-z.secret").read_text().strip()
        pub = subprocess.run(["mosquitto_pub", "-p", str(port), "-u", "kiosk-z", "-P", secret, "-q", "1",
                              "-t", "skinscan/v1/devices/kiosk-z/status", "-m", "online"],
                             capture_output=True, text=True, timeout=10)
        assert pub.returncode == 0, pub.stderr
        bad = subprocess.run(["mosquitto_pub", "-p", str(port), "-u", "kiosk-z", "-P", "wrong", "-q", "1",
                              "-t", "skinscan/v1/devices/kiosk-z/status", "-m", "online"],
                             capture_output=True, text=True, timeout=10)
        assert bad.returncode != 0
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_broker_run_render_only_for_another_user(tmp_path):
    """--user mosquitto (as root): Mosquitto drops to that user before reading passwd and acl, so they
    and the data dir become its own; the secrets stay root's."""
    if os.geteuid() != 0:
        pytest.skip("needs root to hand files to another user")
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user (apt-get install mosquitto)")
    data = tmp_path / "broker"
    result = _render_broker(data, "--user", "mosquitto")
    assert result.returncode == 0, result.stderr
    owner = {p: pwd.getpwuid((data / p).stat().st_uid).pw_name for p in (".", "passwd", "acl", "credentials")}
    assert owner == {".": "mosquitto", "passwd": "mosquitto", "acl": "mosquitto", "credentials": "root"}
    assert "\nuser mosquitto\n" in (data / "mosquitto.conf").read_text()
