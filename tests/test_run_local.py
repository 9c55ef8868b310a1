"""`make run`'s launcher starts every part and Ctrl-C leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt

from tests.support.broker import ROOT, free_port, wait_port


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.split("\n"):
        if line.strip():
            p, pp = map(int, line.split())
            children.setdefault(pp, []).append(p)
    found, stack = set(), [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            found.add(c)
            stack.append(c)
    return found


def test_run_local_starts_broker_and_ctrl_c_stops_everything(tmp_path: Path):
    port, ws, kiosk, dashboard = free_port(), free_port(), free_port(), free_port()
    env = dict(os.environ, SKINSCAN_MQTT__PORT=str(port), SKINSCAN_BROKER_WS_PORT=str(ws),
               SKINSCAN_KIOSK__PORT=str(kiosk), SKINSCAN_DASHBOARD__PORT=str(dashboard),
               SKINSCAN_RUN_DIR=str(tmp_path / "var"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run_local.py")], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "run_local exited early:\n" + "".join(lines)
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        wait_port(port, timeout=1)
        secret = (tmp_path / "var" / "broker" / "credentials" / "kiosk-01.secret").read_text().strip()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe")
        client.username_pw_set("kiosk-01", secret)
        assert client.connect("127.0.0.1", port) == 0
        client.disconnect()
        with urllib.request.urlopen(f"http://127.0.0.1:{kiosk}/api/live", timeout=10) as resp:
            assert json.load(resp)["camera"]["message"]  # the kiosk answers (live, or why not)
        with urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/login", timeout=10) as resp:
            assert b"Medical staff login" in resp.read()
        children = _descendants(proc.pid)
        assert children, "run_local started no children"
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    output = "".join(lines) + output
    assert proc.returncode == 0, output
    assert "SkinScan is running" in output
    assert f"mqtt://127.0.0.1:{port}" in output
    assert f"http://127.0.0.1:{kiosk}/" in output
    assert f"http://127.0.0.1:{dashboard}/" in output
    time.sleep(0.2)
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()
             and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()]
    assert not alive, f"left behind: {alive}"
