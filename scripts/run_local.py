"""Start the whole system locally (`make run`): broker, cloud services, one kiosk.

Every child runs in its own process group; Ctrl-C (or SIGTERM) stops them all, newest first,
and waits for each, so nothing is left behind.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
VAR = Path(os.environ.get("SKINSCAN_RUN_DIR", ROOT / "var"))
log = logging.getLogger("run-local")


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    url: str | None = None
    ready_port: int | None = None  # started once something listens here
    env: dict[str, str] = field(default_factory=dict)  # added to this service's environment


def services(env: dict[str, str]) -> list[Service]:
    broker_port = env.get("SKINSCAN_MQTT__PORT", "1884")
    return [
        Service("broker", [str(ROOT / "broker" / "run"), "--port", broker_port, "--ws-port",
                           env.get("SKINSCAN_BROKER_WS_PORT", "9001"), "--data-dir", str(VAR / "broker"),
                           "--device", env.get("SKINSCAN_DEVICE_ID", "kiosk-01")],
                f"mqtt://127.0.0.1:{broker_port}", int(broker_port)),
        *_cloud_consumer(env),
        dashboard_service(env),
        kiosk_service(env),
    ]


def kiosk_service(env: dict[str, str]) -> Service:
    """One kiosk, fed by the demo stream (camera.uri in settings/device.toml) unless env says otherwise."""
    port = env.get("SKINSCAN_KIOSK__PORT", "8080")
    device_id = env.get("SKINSCAN_DEVICE_ID", "kiosk-01")
    return Service("kiosk", [sys.executable, "-m", "device.cli", "kiosk"], f"http://127.0.0.1:{port}/", int(port),
                   env={"SKINSCAN_MQTT__USERNAME": device_id,
                        # the QR code's phone link points at this run's dashboard
                        "SKINSCAN_KIOSK__PUBLIC_URL": env.get("SKINSCAN_KIOSK__PUBLIC_URL", _dashboard_url(env)),
                        "SKINSCAN_MQTT__PASSWORD_FILE": str(VAR / "broker" / "credentials" / f"{device_id}.secret"),
                        "SKINSCAN_DATA_DIR": str(VAR / "device"),
                        "SKINSCAN_OUTBOX__PATH": str(VAR / "device" / "outbox.sqlite3"),
                        "SKINSCAN_UPDATES__PUBLIC_KEY": str(VAR / "device" / "model-signing.pub"),
                        "SKINSCAN_UPDATES__VERSIONS_DIR": str(VAR / "device" / "models")})


def prepare() -> None:
    """Make generated inputs that are not committed: the kiosk's demo camera stream, and the key pair that
    signs model updates (the kiosk gets the public half)."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_stream_fixture.py"), "--if-missing"],
                   cwd=ROOT, check=True)
    from contract.signing import generate_keypair

    private, public = VAR / "cloud" / "model-signing.pem", VAR / "cloud" / "model-signing.pub"
    if not private.exists():
        generate_keypair(private, public)
    installed = VAR / "device" / "model-signing.pub"
    installed.parent.mkdir(parents=True, exist_ok=True)
    installed.write_bytes(public.read_bytes())


def _cloud_consumer(env: dict[str, str]) -> list[Service]:
    """`skinscan-cloud consume`, on the run dir's broker account and database (needs the model)."""
    manifest = Path(env.get("SKINSCAN_MODEL__MANIFEST", ROOT / "models" / "model.json"))
    if not manifest.is_file():
        log.warning("no model at %s: the cloud consumer is not started (captures wait in the broker)", manifest)
        return []
    cloud = VAR / "cloud"
    return [Service("consumer", [sys.executable, "-m", "cloud.cli", "consume"], env={
        "SKINSCAN_MQTT__PASSWORD_FILE": str(VAR / "broker" / "credentials" / "cloud.secret"),
        "SKINSCAN_BROKER__DATA_DIR": str(VAR / "broker"),
        "SKINSCAN_DATABASE__URL": env.get("SKINSCAN_DATABASE__URL", f"sqlite:///{cloud / 'skinscan.sqlite3'}"),
        "SKINSCAN_STORAGE__IMAGE_DIR": str(cloud / "images"),
        "SKINSCAN_UPDATES__SIGNING_KEY_FILE": str(cloud / "model-signing.pem"),
        "SKINSCAN_UPDATES__BUNDLE_DIR": str(cloud / "bundles"),
        "SKINSCAN_UPDATES__MODELS_DIR": str(cloud / "models"),
    })]


def _dashboard_url(env: dict[str, str]) -> str:
    return f"http://127.0.0.1:{env.get('SKINSCAN_DASHBOARD__PORT', '8090')}"


def dashboard_service(env: dict[str, str]) -> Service:
    """`skinscan-cloud dashboard`: staff dashboard, phone pages, model bundles (accounts: `skinscan-cloud add-user`)."""
    cloud = VAR / "cloud"
    url = _dashboard_url(env)
    return Service("dashboard", [sys.executable, "-m", "cloud.cli", "dashboard"], url + "/",
                   int(url.rsplit(":", 1)[1]), env={
        "SKINSCAN_MQTT__PASSWORD_FILE": str(VAR / "broker" / "credentials" / "cloud.secret"),
        "SKINSCAN_DATABASE__URL": env.get("SKINSCAN_DATABASE__URL", f"sqlite:///{cloud / 'skinscan.sqlite3'}"),
        "SKINSCAN_STORAGE__IMAGE_DIR": str(cloud / "images"),
        "SKINSCAN_DASHBOARD__SECRET_KEY_FILE": str(cloud / "secret_key"),
        "SKINSCAN_DASHBOARD__PUBLIC_URL": env.get("SKINSCAN_DASHBOARD__PUBLIC_URL", url),
        "SKINSCAN_UPDATES__BUNDLE_DIR": str(cloud / "bundles"),
    })


def _wait_ready(service: Service, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Later services need earlier ones up (the broker writes the credentials clients read)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited with status {proc.returncode} while starting")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", service.ready_port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{service.name} not listening on port {service.ready_port} after {timeout:.0f} s")


def _stop(procs: list[tuple[Service, subprocess.Popen]]) -> None:
    for _, proc in reversed(procs):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for service, proc in reversed(procs):
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in 15 s; killing it", service.name)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.info("%s stopped", service.name)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    VAR.mkdir(exist_ok=True)
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    procs: list[tuple[Service, subprocess.Popen]] = []

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    prepare()
    try:
        for service in services(env):
            proc = subprocess.Popen(service.argv, cwd=ROOT, env={**env, **service.env}, start_new_session=True)
            procs.append((service, proc))
            log.info("started %s (pid %d)", service.name, proc.pid)
            if service.ready_port:
                _wait_ready(service, proc)
        print("\nSkinScan is running:", flush=True)
        for service, _ in procs:
            if service.url:
                print(f"  {service.name:<10} {service.url}", flush=True)
        if any(service.name == "dashboard" for service, _ in procs):
            print("  (dashboard accounts: python -m cloud.cli add-user NAME --role dermatologist|admin)", flush=True)
        print("Press Ctrl-C to stop.\n", flush=True)
        while True:
            for service, proc in procs:
                if proc.poll() is not None:
                    log.error("%s exited with status %s; stopping everything", service.name, proc.returncode)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        log.info("stopping")
        return 0
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    finally:
        _stop(procs)


if __name__ == "__main__":
    raise SystemExit(main())
