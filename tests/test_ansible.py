"""ansible/: syntax, lint, and real runs of every role against localhost into throwaway roots.

Each inventory host (broker1, cloud1, kiosk-a, then kiosk-c added with one line) installs into its own
folder under tmp (skinscan_root), over a local connection. Packages, users, time sync and starting
services need a live systemd host and are not exercised here (the common role refuses a live run on a
host that systemd does not run); everything else runs for real: release archive, venv and install,
model, credentials, certificates, broker config, units and their enablement. The second run must
change nothing; the broker the broker role configured must accept the credentials the kiosk role
installed, over TLS with the fleet CA.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from settings import load_cloud, load_device
from tests.support.broker import free_port, wait_port
from tests.support.systemd import need_systemd_analyze, prepare_root, verify

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE = ROOT / "ansible"
BIN = Path(sys.executable).parent
SYSTEM_PYTHON = "/usr/bin/python3"
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)

pytestmark = pytest.mark.slow


def _tool(name: str) -> str:
    exe = BIN / name
    if not exe.exists():
        pytest.skip(f"{name} is not installed in {BIN} (pip install -e .[dev])")
    return str(exe)


def _playbook(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(Path.home()), "LANG": "C.UTF-8",
           "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run([_tool("ansible-playbook"), *args], cwd=ANSIBLE, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _recap(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    return {host: {"ok": int(ok), "changed": int(ch), "unreachable": int(un), "failed": int(fa)}
            for host, ok, ch, un, fa in RECAP.findall(result.stdout)}


@dataclass
class Fleet:
    base: Path
    runs: list[dict[str, dict[str, int]]] = field(default_factory=list)

    def root(self, host: str) -> Path:
        return self.base / "roots" / host


def _fake_model(folder: Path) -> None:
    folder.mkdir()
    files = {}
    for role, name in (("int8", "skin_int8.tflite"), ("float", "skin_float.tflite")):
        (folder / name).write_bytes(role.encode() * 1000)
        files[role] = {"path": name, "sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest()}
    (folder / "model.json").write_text(json.dumps({"version": "test", "files": files}))


INVENTORY = """\
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: {python}
    ansible_become: false
  children:
    broker:
      hosts:
        broker1: {{ansible_host: 127.0.0.1}}
    cloud:
      hosts:
        cloud1: {{cloud_consumer_workers: 2}}
    kiosks:
      hosts:
        kiosk-a: {{}}
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Fleet:
    _tool("ansible-playbook")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import ensurepip, setuptools, wheel"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"{SYSTEM_PYTHON} needs venv, setuptools and wheel to build the release offline "
                    "(apt-get install python3-venv python3-setuptools python3-wheel)")
    fleet = Fleet(tmp_path_factory.mktemp("fleet"))
    _fake_model(fleet.base / "models")
    inventory = fleet.base / "inventory.yml"
    inventory.write_text(INVENTORY.format(python=sys.executable))
    # Extra vars beat playbook group_vars, so these reach every host whatever group_vars say.
    overrides = fleet.base / "overrides.json"
    overrides.write_text(json.dumps({
        "skinscan_root": str(fleet.base / "roots") + "/{{ inventory_hostname }}",
        "skinscan_model_dir": str(fleet.base / "models"),
        "skinscan_python": SYSTEM_PYTHON,
        # Offline: install the release alone; its dependencies come from PyPI on a real host. The
        # build backend then comes from the system's site-packages, so both venvs see them here.
        "skinscan_pip_args": ["--no-deps", "--no-index", "--no-build-isolation"],
        "app_site_packages": True,
    }))
    args = ["-i", str(inventory), "-e", f"@{overrides}", "site.yml"]
    fleet.runs.append(_recap(_playbook(*args)))
    fleet.runs.append(_recap(_playbook(*args)))
    # Adding a device: one inventory line, one command (README.md).
    inventory.write_text(inventory.read_text() + "        kiosk-c: {kiosk_locale: ar}\n")
    fleet.runs.append(_recap(_playbook(*args[:-1], "--limit", "broker,kiosk-c", "site.yml")))
    # Scaling the consumers down, and switching the kiosk screen off, disables what is no longer wanted.
    fleet.runs.append(_recap(_playbook(*args[:-1], "-e", "cloud_consumer_workers=1", "-e", "kiosk_browser=false",
                                       "--limit", "cloud1,kiosk-a", "site.yml")))
    return fleet


def test_syntax_check():
    result = _playbook("--syntax-check", "-i", "inventory/example.ini", "site.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_is_clean():
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(Path.home()), "LANG": "C.UTF-8", "NO_COLOR": "1"}
    result = subprocess.run([_tool("ansible-lint"), "--offline"], cwd=ANSIBLE, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_first_run_installs_every_host(fleet):
    first = fleet.runs[0]
    assert set(first) == {"broker1", "cloud1", "kiosk-a"}
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in first.values())
    assert all(r["changed"] > 0 for r in first.values()), first


def test_second_run_changes_nothing(fleet):
    second = fleet.runs[1]
    assert set(second) == {"broker1", "cloud1", "kiosk-a"}
    assert {h: r["changed"] for h, r in second.items()} == {"broker1": 0, "cloud1": 0, "kiosk-a": 0}


def test_adding_a_device_touches_only_the_broker_and_the_new_kiosk(fleet):
    third = fleet.runs[2]
    assert set(third) == {"broker1", "kiosk-c"}
    assert third["broker1"]["changed"] == 2  # passwd and acl, nothing else
    broker = fleet.root("broker1") / "var/lib/skinscan/broker"
    assert "kiosk-c:$7$" in (broker / "passwd").read_text()
    assert "topic write skinscan/v1/devices/kiosk-c/captures" in (broker / "acl").read_text()
    assert load_device(fleet.root("kiosk-c") / "etc/skinscan/device.toml").kiosk.locale == "ar"


def test_device_config_is_valid_and_per_device(fleet):
    cfg = load_device(fleet.root("kiosk-a") / "etc/skinscan/device.toml", environ={})
    assert cfg.device_id == "kiosk-a" and cfg.mqtt.username == "kiosk-a"
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls) == ("127.0.0.1", 8883, True)
    assert cfg.mqtt.password_file == Path("/etc/skinscan/credentials/kiosk-a.secret")
    assert cfg.mqtt.ca_file == Path("/etc/skinscan/tls/ca.crt")
    assert cfg.camera.source == "picamera2"
    assert cfg.outbox.path == Path("/var/lib/skinscan/device/outbox.sqlite3")
    assert cfg.model.manifest == Path("/var/lib/skinscan/models/model.json")
    secrets = {h: (fleet.root(h) / f"etc/skinscan/credentials/{h}.secret").read_text().strip()
               for h in ("kiosk-a", "kiosk-c")}
    assert len(set(secrets.values())) == 2 and all(len(s) == 40 for s in secrets.values())
    assert (fleet.root("kiosk-a") / "etc/skinscan/credentials/kiosk-a.secret").stat().st_mode & 0o777 == 0o640
    assert "camera_auto_detect=1" in (fleet.root("kiosk-a") / "boot/firmware/config.txt").read_text()


def test_cloud_config_is_valid(fleet):
    cfg = load_cloud(fleet.root("cloud1") / "etc/skinscan/cloud.toml", environ={})
    assert cfg.mqtt.username == "cloud" and cfg.mqtt.tls and cfg.mqtt.port == 8883
    assert cfg.database.url == "sqlite:////var/lib/skinscan/cloud/skinscan.sqlite3"
    assert cfg.storage.image_dir == Path("/var/lib/skinscan/cloud/images")


def test_each_host_gets_its_model_file_only(fleet):
    kiosk = fleet.root("kiosk-a") / "var/lib/skinscan/models"
    cloud = fleet.root("cloud1") / "var/lib/skinscan/models"
    assert sorted(p.name for p in kiosk.iterdir()) == ["model.json", "skin_int8.tflite"]
    assert sorted(p.name for p in cloud.iterdir()) == ["model.json", "skin_float.tflite"]
    assert (kiosk / "skin_int8.tflite").read_bytes() == (fleet.base / "models/skin_int8.tflite").read_bytes()


def test_release_is_installed_in_the_venv(fleet):
    for host, entry in (("kiosk-a", "skinscan-device"), ("cloud1", "skinscan-cloud")):
        opt = fleet.root(host) / "opt/skinscan"
        assert (opt / "venv/bin" / entry).is_file()
        src = opt / "src"
        assert src.is_symlink() and (src / "pyproject.toml").is_file()
        version = subprocess.run([str(opt / "venv/bin/python"), "-c",
                                  "import importlib.metadata as m; print(m.version('skinscan'))"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        assert version == "0.1.0"
    cfg = (fleet.root("kiosk-a") / "opt/skinscan/venv/pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in cfg  # apt's python3-picamera2 must be importable


@pytest.mark.parametrize(("host", "units"), [
    ("kiosk-a", ["skinscan-kiosk.service", "skinscan-uplink.service"]),
    ("cloud1", ["skinscan-dashboard.service", "skinscan-consumer@1.service"]),
])
def test_installed_units_verify_and_are_enabled(fleet, host, units):
    need_systemd_analyze()
    root = prepare_root(fleet.root(host))
    for unit in units:
        result = verify(root, unit)
        assert result.returncode == 0 and not result.stderr.strip(), result.stderr
        state = subprocess.run(["systemctl", f"--root={root}", "is-enabled", unit], capture_output=True, text=True)
        assert state.stdout.strip() == "enabled", (unit, state.stdout, state.stderr)


def test_units_no_longer_wanted_are_disabled(fleet):
    # Each host: exactly one enablement link removed, nothing else.
    assert {h: r["changed"] for h, r in fleet.runs[3].items()} == {"cloud1": 1, "kiosk-a": 1}
    wants = fleet.root("cloud1") / "etc/systemd/system/multi-user.target.wants"
    assert sorted(p.name for p in wants.iterdir()) == ["skinscan-consumer@1.service", "skinscan-dashboard.service"]
    root = fleet.root("kiosk-a")
    assert (root / "etc/systemd/system/skinscan-browser.service").is_file()
    assert not (root / "etc/systemd/system/graphical.target.wants/skinscan-browser.service").exists()


class _Client:
    def __init__(self, port: int, user: str, password: str, ca: Path) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self.reason = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, password)
        self.client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, msg: self.messages.append((msg.topic, msg.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, _c, _u, _f, reason, _p) -> None:
        self.reason = reason
        self.connected.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_broker_accepts_the_installed_credentials_over_tls(fleet, tmp_path):
    """Start Mosquitto on the broker role's own config (paths and ports moved to this test), then
    connect as the kiosks and the cloud with the secrets and CA the other roles installed."""
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    data = fleet.root("broker1") / "var/lib/skinscan/broker"
    conf = (data / "mosquitto.conf").read_text().replace("/var/lib/skinscan/broker", str(data))
    conf = conf.replace("user mosquitto", "user root")
    ports = {p: free_port() for p in (1883, 9001, 8883, 9443)}
    for port, new in ports.items():
        conf, n = re.subn(rf"^listener {port} \S+$", f"listener {new} 127.0.0.1", conf, flags=re.M)
        assert n == 1, f"no listener {port} in the rendered config"
    (tmp_path / "mosquitto.conf").write_text(conf)
    log = open(tmp_path / "mosquitto.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["mosquitto", "-c", str(tmp_path / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT)
    clients: list[_Client] = []
    try:
        wait_port(ports[8883])

        def connect(host: str, user: str, password: str | None = None) -> _Client:
            secret = password or (fleet.root(host) / f"etc/skinscan/credentials/{user}.secret").read_text().strip()
            c = _Client(ports[8883], user, secret, fleet.root(host) / "etc/skinscan/tls/ca.crt")
            clients.append(c)
            assert c.connected.wait(10), f"{user}: no CONNACK; see {log.name}"
            return c

        cloud = connect("cloud1", "cloud")
        assert not cloud.reason.is_failure, cloud.reason
        cloud.client.subscribe("skinscan/v1/devices/+/captures", qos=1)
        assert connect("kiosk-a", "kiosk-a", "not-the-secret").reason.is_failure
        kiosk_a = connect("kiosk-a", "kiosk-a")
        kiosk_c = connect("kiosk-c", "kiosk-c")
        assert not kiosk_a.reason.is_failure and not kiosk_c.reason.is_failure
        time.sleep(0.3)
        kiosk_a.client.publish("skinscan/v1/devices/kiosk-c/captures", b"spoofed", qos=1).wait_for_publish(5)
        kiosk_a.client.publish("skinscan/v1/devices/kiosk-a/captures", b"from a", qos=1).wait_for_publish(5)
        kiosk_c.client.publish("skinscan/v1/devices/kiosk-c/captures", b"from c", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while len(cloud.messages) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert sorted(cloud.messages) == [("skinscan/v1/devices/kiosk-a/captures", b"from a"),
                                          ("skinscan/v1/devices/kiosk-c/captures", b"from c")]
    finally:
        for c in clients:
            c.close()
        proc.terminate()
        proc.wait(10)
        log.close()


def test_live_run_is_refused_where_systemd_does_not_run(tmp_path):
    """Without skinscan_root the roles manage the live system; on a host that systemd does not run
    (a container, this test machine) they must stop before touching anything. --check so that even a
    broken guard changes nothing here."""
    if Path("/run/systemd/system").is_dir():
        pytest.skip("this host runs systemd: a live run would be legitimate here")
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(INVENTORY.format(python=sys.executable))
    result = _playbook("--check", "--diff", "-i", str(inventory), "--limit", "kiosk-a", "site.yml")
    assert result.returncode != 0
    assert "is not run by systemd" in result.stdout
    # The guard is the first task: nothing changed, one failure.
    assert [(h, int(ch), int(fa)) for h, _ok, ch, _un, fa in RECAP.findall(result.stdout)] == [("kiosk-a", 0, 1)]
