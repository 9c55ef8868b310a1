"""Flask app factory: the dashboard, the phone page, model bundles, and the relay behind them."""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from flask import Flask, g

from cloud import model_files
from cloud.dashboard import auth, phone, views
from cloud.dashboard.events import Hub
from cloud.dashboard.relay import Relay
from cloud.dashboard.triage import LabelSet
from cloud.storage import Storage
from settings.schema import CloudConfig

log = logging.getLogger(__name__)


@dataclass
class DashboardState:
    cfg: CloudConfig
    storage: Storage
    hub: Hub
    labels: LabelSet
    relay: Relay | None

    def stop(self) -> None:
        self.hub.close()
        if self.relay is not None:
            self.relay.stop()


def secret_key(path: Path) -> bytes:
    """The session-signing key, made once (mode 600) so sessions survive a restart."""
    if path.is_file():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)  # fails if another process made it first: then use theirs
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return path.read_bytes().strip()


def label_set(cfg: CloudConfig, storage: Storage) -> LabelSet:
    """The model's classes and dangerous ones from model.json; without a model, the labels seen so far."""
    from models.manifest import ManifestError, load

    try:
        manifest = load(cfg.model.manifest)
        return LabelSet(list(manifest.labels), list(manifest.dangerous))
    except ManifestError as exc:
        seen = sorted({c["label"] for c in storage.cases(limit=1000) if c["label"]})
        log.warning("no model manifest (%s): doctors choose from the %d labels seen so far, none flagged "
                    "dangerous", exc, len(seen))
        return LabelSet(seen, [])


def create_app(cfg: CloudConfig, *, storage: Storage | None = None, relay: bool = True,
               labels: LabelSet | None = None) -> Flask:
    """The dashboard app. ``relay=False`` runs without MQTT (reviews then wait in the database)."""
    app = Flask(__name__)
    d = cfg.dashboard
    app.config.update(
        SECRET_KEY=secret_key(d.secret_key_file),
        SESSION_COOKIE_NAME="skinscan_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=d.public_url.startswith("https://"),
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=d.session_timeout_min),
        MAX_CONTENT_LENGTH=64 * 1024,  # forms and chat messages only; nothing large is uploaded here
    )
    if storage is None:
        storage = Storage(cfg.database.url, cfg.storage.image_dir)
    storage.migrate()
    hub = Hub()
    state = DashboardState(cfg, storage, hub, labels or label_set(cfg, storage), None)
    if relay:
        state.relay = Relay(cfg, storage, hub)
        state.relay.start()
    app.extensions["skinscan_dashboard"] = state
    timeout = timedelta(minutes=d.session_timeout_min)

    @app.before_request
    def _security() -> None:
        auth.load_user(timeout)
        auth.check_csrf()

    @app.after_request
    def _headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")  # phone links carry the token in the path
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Content-Security-Policy",
                                "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                "script-src 'self'; frame-ancestors 'none'")
        return resp

    @app.context_processor
    def _globals() -> dict[str, object]:
        return {"csrf_token": auth.csrf_token, "current_user": getattr(g, "user", None)}

    app.register_blueprint(auth.bp)
    app.register_blueprint(views.bp)
    app.register_blueprint(phone.bp)
    app.register_blueprint(model_files.blueprint(cfg.updates.bundle_dir))
    return app
