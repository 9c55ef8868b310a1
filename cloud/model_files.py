"""Flask blueprint that serves model bundles to devices: ``GET /models/<version>/bundle.zip``.

Only a version matching the contract's pattern and a file that really is
``BUNDLE_DIR/<version>/bundle.zip`` is served (no path traversal); Flask's ``send_file`` sets
Content-Length, an ETag and Last-Modified and answers Range requests, so a device can detect a
truncated download by the length and its signed sha256.

    app.register_blueprint(model_files.blueprint(cfg.updates.bundle_dir))
"""

from __future__ import annotations

import re
from pathlib import Path

from flask import Blueprint, abort, send_file

from cloud.bundles import BUNDLE_NAME
from contract.messages import MODEL_VERSION_PATTERN


def blueprint(bundle_dir: str | Path, name: str = "model_files") -> Blueprint:
    root = Path(bundle_dir).resolve()
    bp = Blueprint(name, __name__)

    @bp.get(f"/models/<version>/{BUNDLE_NAME}")
    def bundle(version: str):
        if not re.fullmatch(MODEL_VERSION_PATTERN, version):
            abort(404)
        path = (root / version / BUNDLE_NAME).resolve()
        if path.parent.parent != root or not path.is_file():
            abort(404)
        # Bundles never change once written, so clients and proxies may keep them.
        return send_file(path, mimetype="application/zip", as_attachment=True,
                         download_name=f"skinscan-model-{version}.zip", max_age=3600, conditional=True)

    return bp
