"""Helpers for the self-learning / OTA tests: tiny trained models and a real bundle HTTP server."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flask import Flask
from werkzeug.serving import make_server

from cloud import model_files

TINY_TRAINING = ["--weights-dir", "none", "--head-epochs", "1", "--fine-epochs", "1", "--target-views", "20",
                 "--max-views", "2", "--workers", "2"]


@contextmanager
def serve_bundles(bundle_dir: Path) -> Iterator[str]:
    """The real cloud.model_files blueprint on a real HTTP server on a free loopback port."""
    app = Flask("bundles-under-test")
    app.register_blueprint(model_files.blueprint(bundle_dir))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


@contextmanager
def serve_truncated(blob: bytes) -> Iterator[str]:
    """A server that promises the whole ``blob`` in Content-Length and sends half of it."""

    class Half(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob[: len(blob) // 2])
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Half)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/models/x/bundle.zip"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
