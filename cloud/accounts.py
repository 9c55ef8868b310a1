"""Broker accounts: ``skinscan-cloud add-device`` gives each kiosk its own secret.

The ACL needs no per-device edit: its ``pattern`` lines use ``%u`` (the username, which for a
kiosk is its device_id), so a new account can reach exactly its own topics the moment the broker
reads the new password file. Secrets are hashed by ``mosquitto_passwd -U`` from a private file,
never passed on a command line; the password file is replaced atomically and the running broker
(its pid is in DATA_DIR/mosquitto.pid, written by broker/run) is sent SIGHUP to reload it.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from contract.topics import check_device_id
from runtime.files import atomic_write
from settings.loader import PROJECT_ROOT

# Service accounts (broker/run creates them); a device may never take one of these names.
RESERVED = frozenset({"cloud", "dashboard"})
MAKE_CERTS = PROJECT_ROOT / "broker" / "make-certs"


class AccountError(ValueError):
    pass


@dataclass(frozen=True)
class DeviceAccount:
    device_id: str
    secret_file: Path
    cert_file: Path | None
    key_file: Path | None
    reloaded_pid: int | None

    def as_json(self) -> dict[str, object]:
        return {"device_id": self.device_id, "secret_file": str(self.secret_file),
                "cert_file": str(self.cert_file) if self.cert_file else None,
                "key_file": str(self.key_file) if self.key_file else None,
                "broker_reloaded": self.reloaded_pid is not None, "broker_pid": self.reloaded_pid}


def _write_private(path: Path, text: str) -> None:
    atomic_write(path, text.encode())  # mode 600, like every secret here


def _hash_line(credentials: Path, name: str, secret: str) -> str:
    if shutil.which("mosquitto_passwd") is None:
        raise AccountError("mosquitto_passwd is not installed (apt-get install mosquitto)")
    fd, plain = tempfile.mkstemp(dir=credentials, prefix=".plain-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{name}:{secret}\n")
        subprocess.run(["mosquitto_passwd", "-U", plain], check=True, capture_output=True, text=True)
        return Path(plain).read_text().strip()
    except subprocess.CalledProcessError as exc:
        raise AccountError(f"mosquitto_passwd failed: {exc.stderr.strip() or exc}") from None
    finally:
        Path(plain).unlink(missing_ok=True)


def has_account(broker_dir: Path, name: str) -> bool:
    passwd = broker_dir / "passwd"
    return passwd.is_file() and any(line.split(":", 1)[0] == name for line in passwd.read_text().splitlines())


def reload_broker(broker_dir: Path) -> int | None:
    """SIGHUP the broker started by broker/run on this data dir; its pid, or None if none runs."""
    try:
        pid = int((broker_dir / "mosquitto.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    if b"mosquitto" not in cmdline:
        return None  # a stale pid file naming some other process
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return None
    return pid


def add_device(broker_dir: str | Path, device_id: str, *, rotate: bool = False) -> DeviceAccount:
    """Create (or with ``rotate``, replace) one device's broker account; reload a running broker."""
    broker_dir = Path(broker_dir)
    check_device_id(device_id)
    if device_id in RESERVED:
        raise AccountError(f"{device_id!r} is a reserved service account name; choose another device id")
    credentials = broker_dir / "credentials"
    credentials.mkdir(parents=True, exist_ok=True)
    os.chmod(credentials, 0o700)
    passwd = broker_dir / "passwd"
    with open(broker_dir / "passwd.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lines = passwd.read_text().splitlines() if passwd.is_file() else []
        exists = any(line.split(":", 1)[0] == device_id for line in lines)
        if exists and not rotate:
            raise AccountError(f"device {device_id!r} already has an account; use --rotate to give it a new secret")
        secret = secrets.token_hex(24)
        secret_file = credentials / f"{device_id}.secret"
        _write_private(secret_file, secret + "\n")
        kept = [line for line in lines if line.split(":", 1)[0] != device_id]
        _write_private(passwd, "\n".join([*kept, _hash_line(credentials, device_id, secret)]) + "\n")
    cert = key = None
    tls = broker_dir / "tls"
    if (tls / "ca.key").is_file() and MAKE_CERTS.is_file():
        cert, key = tls / "clients" / f"{device_id}.crt", tls / "clients" / f"{device_id}.key"
        if rotate:
            cert.unlink(missing_ok=True)
            key.unlink(missing_ok=True)
        subprocess.run([str(MAKE_CERTS), "--dir", str(tls), device_id], check=True, capture_output=True)
    return DeviceAccount(device_id, secret_file, cert, key, reload_broker(broker_dir))
