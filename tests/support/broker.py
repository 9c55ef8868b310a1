"""A real Mosquitto started with the project's broker/ config on a free port."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Broker:
    data_dir: Path
    devices: list[str]
    port: int = field(default_factory=free_port)
    ws_port: int = field(default_factory=free_port)
    tls_port: int | None = None  # also start the TLS listener (certificates made by broker/make-certs)
    proc: subprocess.Popen | None = None

    def secret(self, user: str) -> str:
        return (self.data_dir / "credentials" / f"{user}.secret").read_text().strip()

    def start(self) -> Broker:
        args = [str(ROOT / "broker" / "run"), "--port", str(self.port), "--ws-port", str(self.ws_port),
                "--data-dir", str(self.data_dir)]
        for d in self.devices:
            args += ["--device", d]
        if self.tls_port:
            args += ["--tls-port", str(self.tls_port), "--tls-bind", "127.0.0.1"]
        self.log = open(self.data_dir.parent / f"mosquitto-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port)
            if self.tls_port:
                wait_port(self.tls_port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start; see {self.log.name}") from None
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    def restart(self, kill: bool = False) -> None:
        """Stop (SIGTERM saves the persistence file; ``kill`` is a crash that loses what was not saved) and start."""
        if kill and self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stop()
        self.start()
