"""Jinja filters for the SkinScan playbooks."""

from __future__ import annotations

import base64
import hashlib
import hmac

# Mosquitto 2's password file format: $7$ITERATIONS$base64(salt)$base64(PBKDF2-HMAC-SHA512(password)).
# 101 iterations is what mosquitto_passwd writes; the secrets are 192-bit random, so a slow hash would
# buy nothing but CPU on every reconnect storm.
_ITERATIONS = 101
_SALT_BYTES = 12


def mosquitto_passwd_hash(secret: str, username: str) -> str:
    """The passwd entry hash for ``secret``. The salt is derived from the secret and the user name,
    so the rendered file is the same on every run (an idempotent template) yet differs per user."""
    salt = hmac.new(secret.encode(), b"skinscan-mosquitto-salt:" + username.encode(), hashlib.sha256).digest()
    salt = salt[:_SALT_BYTES]
    digest = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, _ITERATIONS, 64)
    return f"$7${_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


class FilterModule:
    def filters(self):
        return {"mosquitto_passwd_hash": mosquitto_passwd_hash}
