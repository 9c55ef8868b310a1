"""Over-the-air model updates on the device, and the model slot the live stream reads.

On a :class:`contract.ModelAnnouncement` (retained on ``Topics.model_current``) the updater

1. ignores it if that version is already serving (retained messages arrive again on every
   reconnect: that is also how a device that was offline catches up) or already failed here;
2. verifies the Ed25519 signature over (version, sha256) with the configured public key,
   before downloading anything;
3. downloads the bundle over HTTP(S) to a temporary file (size limit, timeout, length check) and
   verifies its sha256;
4. unpacks only the expected members into ``VERSIONS_DIR/<version>/model/`` (no traversal,
   bounded size), keeping the verified zip and the announcement beside them;
5. loads the model beside the running one and self-tests it (device.selftest);
6. swaps it into the :class:`ModelSlot` atomically, records current and previous version in
   ``VERSIONS_DIR/state.json`` (atomic replace), and deletes older versions.

Any failure leaves the running model serving and logs one clear reason. At start-up
:meth:`Updater.load_active` re-verifies the installed bundle before loading it and falls back to
the previous version, then to the factory model, if it fails to verify, load or self-test.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import ssl
import tempfile
import threading
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import Literal

from contract import ContractError, ModelAnnouncement, decode, encode
from contract.signing import SignatureError, verify
from device import selftest
from device.inference import BackendError, Classifier
from models import manifest as manifest_mod
from runtime.files import atomic_write

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
BUNDLE_FILE = "bundle.zip"
ANNOUNCEMENT_FILE = "announcement.json"
MODEL_SUBDIR = "model"
CHUNK = 1 << 16
# Unpacked size may exceed the download (deflate), but not by more than this factor (zip bombs).
MAX_UNPACK_RATIO = 4


class UpdateError(Exception):
    """Why an announced model was not installed; the running model keeps serving."""


@dataclass(frozen=True)
class UpdateResult:
    # installed: now serving; unchanged: already serving (no-op); rejected: failed a check, will not be
    # retried for this sha256; failed: could not fetch it now, a later announcement retries.
    outcome: Literal["installed", "unchanged", "rejected", "failed"]
    version: str
    reason: str = ""


class ModelSlot:
    """The classifier the live stream uses. Read it once per frame with :meth:`get`; a swap takes
    effect on the next frame and a frame in flight finishes on the model it started with."""

    def __init__(self, classifier: Classifier | None = None) -> None:
        self._lock = threading.Lock()
        self._classifier = classifier

    def get(self) -> Classifier:
        with self._lock:
            if self._classifier is None:
                raise RuntimeError("no model loaded")
            return self._classifier

    @property
    def version(self) -> str | None:
        with self._lock:
            return self._classifier.version if self._classifier else None

    def swap(self, classifier: Classifier) -> Classifier | None:
        with self._lock:
            old, self._classifier = self._classifier, classifier
        return old


def _sha256(path: Path) -> str:
    return manifest_mod.sha256_file(path)


class Updater:
    def __init__(self, slot: ModelSlot, versions_dir: str | Path, public_key_pem: bytes, *,
                 factory_manifest: str | Path | None = None, threads: int = 1,
                 max_bytes: int = 64 * 1024 * 1024, timeout_s: float = 60.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.slot = slot
        self.versions_dir = Path(versions_dir)
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self.public_key = public_key_pem
        self.factory_manifest = Path(factory_manifest) if factory_manifest else None
        self.threads = threads
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.ssl_context = ssl_context
        self.last_result: UpdateResult | None = None
        # Why start-up did not serve the installed current version (shown on the kiosk), else None.
        self.rollback: str | None = None
        self._lock = threading.Lock()  # one update at a time
        self._pending: ModelAnnouncement | bytes | None = None
        self._wake = threading.Condition()
        self._worker: threading.Thread | None = None
        self._busy = False
        self._closed = False

    @classmethod
    def from_config(cls, cfg) -> Updater:
        """An updater for a :class:`settings.schema.DeviceConfig`, with the active model loaded."""
        up = cfg.updates
        if not Path(up.public_key).is_file():
            raise UpdateError(f"{up.public_key}: the cloud's model-signing public key is missing (updates.public_key; "
                              "made by `skinscan-cloud model-keygen`)")
        context = ssl.create_default_context(cafile=str(up.ca_file)) if up.ca_file else None
        updater = cls(ModelSlot(), up.versions_dir, Path(up.public_key).read_bytes(),
                      factory_manifest=cfg.model.manifest, threads=cfg.model.threads,
                      max_bytes=up.max_bundle_bytes, timeout_s=up.download_timeout_s, ssl_context=context)
        updater.load_active()
        return updater

    # ----- state -----------------------------------------------------------------------------

    def state(self) -> dict:
        path = self.versions_dir / STATE_FILE
        try:
            data = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return {"current": None, "previous": None, "rejected": {}}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            log.error("%s is unreadable (%s); starting from the factory model", path, exc)
            return {"current": None, "previous": None, "rejected": {}}
        data.setdefault("rejected", {})
        return data

    def summary(self) -> dict[str, object]:
        """What the kiosk page and logs show: the version serving, the previous one kept, the last
        update's outcome and any start-up rollback."""
        last = self.last_result
        return {"version": self.slot.version, "previous": self.state().get("previous"),
                "last_update": None if last is None else {"outcome": last.outcome, "version": last.version,
                                                          "reason": last.reason},
                "rollback": self.rollback}

    def _save_state(self, state: dict) -> None:
        atomic_write(self.versions_dir / STATE_FILE, (json.dumps(state, indent=2) + "\n").encode())

    def _model_json(self, version: str) -> Path:
        return self.versions_dir / version / MODEL_SUBDIR / "model.json"

    # ----- start-up ---------------------------------------------------------------------------

    def load_active(self) -> Classifier:
        """Load the persisted current version, falling back to the previous one and then to the factory
        model; each installed version is re-verified (signature, sha256, unpacked files) first."""
        state = self.state()
        errors = []
        for slot_name in ("current", "previous"):
            version = state.get(slot_name)
            if not version:
                continue
            try:
                self._verify_installed(version)
                classifier = self._load(self._model_json(version))
            except (UpdateError, SignatureError, manifest_mod.ManifestError, BackendError, zipfile.BadZipFile,
                    selftest.SelfTestError, OSError, ValueError) as exc:
                log.error("installed model %s cannot serve: %s", version, exc)
                errors.append(f"{version}: {exc}")
                continue
            if slot_name == "previous":
                log.warning("rolled back to the previous model %s", version)
                self.rollback = f"rolled back to {version}: " + "; ".join(errors)
                state = {**state, "current": version, "previous": None}
                self._save_state(state)
            self.slot.swap(classifier)
            return classifier
        if self.factory_manifest is None:
            raise UpdateError("no installed model can serve and there is no factory model: " + "; ".join(errors))
        classifier = self._load(self.factory_manifest)
        if state.get("current") or state.get("previous"):
            self._save_state({**state, "current": None, "previous": None})
            self.rollback = f"rolled back to the factory model {classifier.version}: " + "; ".join(errors)
        self.slot.swap(classifier)
        log.info("serving the factory model %s", classifier.version)
        return classifier

    def _verify_installed(self, version: str) -> None:
        folder = self.versions_dir / version
        ann = decode((folder / ANNOUNCEMENT_FILE).read_bytes(), expect=ModelAnnouncement)
        if ann.version != version:
            raise UpdateError(f"{folder}: announcement is for {ann.version}")
        verify(self.public_key, ann.version, ann.sha256, ann.signature)
        bundle = folder / BUNDLE_FILE
        if _sha256(bundle) != ann.sha256:
            raise UpdateError(f"{bundle}: sha256 differs from the signed announcement")
        with zipfile.ZipFile(bundle) as zf:
            for info in zf.infolist():
                on_disk = folder / MODEL_SUBDIR / info.filename
                if not on_disk.is_file() or _sha256(on_disk) != hashlib.sha256(zf.read(info)).hexdigest():
                    raise UpdateError(f"{on_disk}: differs from the verified bundle")

    def _load(self, model_json: Path) -> Classifier:
        classifier = Classifier(model_json, role="int8", threads=self.threads)
        selftest.run(classifier, model_json.parent)
        return classifier

    # ----- updates ----------------------------------------------------------------------------

    def handle_payload(self, payload: bytes) -> UpdateResult:
        """An MQTT payload from ``Topics.model_current``; malformed ones are rejected with the reason."""
        try:
            announcement = decode(payload, expect=ModelAnnouncement)
        except ContractError as exc:
            return self._done(UpdateResult("rejected", "?", f"malformed announcement: {exc}"))
        return self.handle(announcement)

    def handle(self, ann: ModelAnnouncement) -> UpdateResult:
        with self._lock:
            return self._done(self._handle(ann))

    def _done(self, result: UpdateResult) -> UpdateResult:
        self.last_result = result
        level = logging.INFO if result.outcome in ("installed", "unchanged") else logging.ERROR
        log.log(level, "model update %s: %s%s", result.version, result.outcome,
                f" ({result.reason})" if result.reason else "")
        return result

    def _handle(self, ann: ModelAnnouncement) -> UpdateResult:
        if ann.version == self.slot.version:
            return UpdateResult("unchanged", ann.version, "already serving")
        state = self.state()
        earlier = state["rejected"].get(ann.version)
        if earlier and earlier.get("sha256") == ann.sha256:
            return UpdateResult("rejected", ann.version, f"failed here before: {earlier.get('reason')}")
        try:
            verify(self.public_key, ann.version, ann.sha256, ann.signature)
        except SignatureError as exc:
            return UpdateResult("rejected", ann.version, f"bad signature: {exc}")
        try:
            download = self._download(ann)
        except UpdateError as exc:
            return UpdateResult("failed", ann.version, str(exc))
        try:
            if _sha256(download) != ann.sha256:
                return UpdateResult("rejected", ann.version,
                                    "sha256 of the download differs from the signed one (tampered or truncated)")
            try:
                folder = self._install(ann, download)
            except (UpdateError, zipfile.BadZipFile, manifest_mod.ManifestError, OSError) as exc:
                return UpdateResult("rejected", ann.version, f"bad bundle: {exc}")
        finally:
            download.unlink(missing_ok=True)
        try:
            classifier = self._load(folder / MODEL_SUBDIR / "model.json")
        except (manifest_mod.ManifestError, BackendError, ValueError, OSError) as exc:
            return self._reject(state, ann, folder, f"does not load: {exc}")
        except selftest.SelfTestError as exc:
            return self._reject(state, ann, folder, f"self-test failed: {exc}")
        old = self.slot.swap(classifier)
        state = {**state, "current": ann.version, "previous": state.get("current")}
        state["rejected"].pop(ann.version, None)
        self._save_state(state)
        self._prune(state)
        return UpdateResult("installed", ann.version,
                            f"replaced {old.version if old else 'nothing'}; previous kept: {state['previous']}")

    def _reject(self, state: dict, ann: ModelAnnouncement, folder: Path, reason: str) -> UpdateResult:
        """A verified bundle whose model cannot serve: remember it so the retained announcement does not
        make every reconnect download it again; the running model stays."""
        shutil.rmtree(folder, ignore_errors=True)
        state["rejected"][ann.version] = {"sha256": ann.sha256, "reason": reason}
        self._save_state(state)
        return UpdateResult("rejected", ann.version, f"{reason}; still serving {self.slot.version}")

    def _download(self, ann: ModelAnnouncement) -> Path:
        scheme = ann.url.split(":", 1)[0].lower()
        if scheme not in ("http", "https"):
            raise UpdateError(f"refusing {scheme!r} URL {ann.url}: only http and https")
        fd, name = tempfile.mkstemp(dir=self.versions_dir, prefix=".download-", suffix=".zip")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                request = urllib.request.Request(ann.url, headers={"User-Agent": "skinscan-device"})
                with urllib.request.urlopen(request, timeout=self.timeout_s, context=self.ssl_context) as resp:
                    length = resp.headers.get("Content-Length")
                    expected = int(length) if length and length.isdigit() else None
                    if expected is not None and expected > self.max_bytes:
                        raise UpdateError(f"bundle is {expected} bytes, limit {self.max_bytes}")
                    total = 0
                    while chunk := resp.read(CHUNK):
                        total += len(chunk)
                        if total > self.max_bytes:
                            raise UpdateError(f"download exceeds the limit of {self.max_bytes} bytes")
                        fh.write(chunk)
                    if expected is not None and total != expected:
                        raise UpdateError(f"truncated download: {total} of {expected} bytes")
        except UpdateError:
            path.unlink(missing_ok=True)
            raise
        except (urllib.error.URLError, HTTPException, OSError, ValueError) as exc:
            path.unlink(missing_ok=True)
            raise UpdateError(f"download of {ann.url} failed: {exc}") from None
        return path

    def _install(self, ann: ModelAnnouncement, download: Path) -> Path:
        """Unpack a verified bundle into ``<version>/`` via a staging folder; returns that folder."""
        staging = Path(tempfile.mkdtemp(dir=self.versions_dir, prefix=".staging-"))
        try:
            model_dir = staging / MODEL_SUBDIR
            model_dir.mkdir()
            with zipfile.ZipFile(download) as zf:
                infos = zf.infolist()
                total = sum(i.file_size for i in infos)
                if total > self.max_bytes * MAX_UNPACK_RATIO:
                    raise UpdateError(f"bundle unpacks to {total} bytes, limit {self.max_bytes * MAX_UNPACK_RATIO}")
                names = {i.filename for i in infos}
                if len(names) != len(infos):
                    raise UpdateError("bundle holds a member twice")
                if "model.json" not in names:
                    raise UpdateError("bundle has no model.json")
                (model_dir / "model.json").write_bytes(zf.read("model.json"))
                manifest = manifest_mod.load(model_dir / "model.json")
                if manifest.version != ann.version:
                    raise UpdateError(f"bundle holds model {manifest.version}, announced {ann.version}")
                allowed = {"model.json"} | {f.path for f in manifest.files.values()}
                if manifest.self_test is not None:
                    allowed |= {c.path for c in manifest.self_test.cases}
                for name in sorted(names - {"model.json"}):
                    if name not in allowed:
                        raise UpdateError(f"unexpected member {name!r} in the bundle")
                    parts = PurePosixPath(name).parts
                    if name.startswith("/") or ".." in parts or "\\" in name or not parts:
                        raise UpdateError(f"unsafe member name {name!r} in the bundle")
                    target = model_dir.joinpath(*parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(name))
            shutil.copyfile(download, staging / BUNDLE_FILE)
            (staging / ANNOUNCEMENT_FILE).write_bytes(encode(ann))
            folder = self.versions_dir / ann.version
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(staging, folder)
            return folder
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _prune(self, state: dict) -> None:
        keep = {state.get("current"), state.get("previous")}
        for child in self.versions_dir.iterdir():
            if child.is_dir() and child.name not in keep and not child.name.startswith("."):
                shutil.rmtree(child, ignore_errors=True)
                log.info("removed old model version %s", child.name)

    # ----- background worker (MQTT callbacks must not block on a download) ---------------------

    def submit(self, message: ModelAnnouncement | bytes) -> None:
        """Queue an announcement (or a raw payload) for the worker thread; a newer one replaces an
        older one still waiting."""
        with self._wake:
            if self._closed:
                raise RuntimeError("updater is closed")
            self._pending = message
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="model-updater", daemon=True)
                self._worker.start()
            self._wake.notify_all()

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._pending is None and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                message, self._pending = self._pending, None
                self._busy = True
            try:
                if isinstance(message, bytes):
                    self.handle_payload(message)
                else:
                    self.handle(message)
            except Exception:
                log.exception("model update crashed; the running model keeps serving")
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """True once no submitted announcement is waiting or being handled (tests, orderly shutdown)."""
        with self._wake:
            return self._wake.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def close(self, timeout: float = 5.0) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if self._worker is not None:
            self._worker.join(timeout)
