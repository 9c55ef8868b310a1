"""Ed25519 signatures on model announcements: the cloud signs, every device verifies.

The signed bytes bind the version to the bundle's hash, so a valid signature for one version
cannot be replayed for another: ``b"skinscan-model\\n" + version + b"\\n" + sha256``.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class SignatureError(ValueError):
    """A model announcement whose signature does not verify."""


def _payload(version: str, sha256: str) -> bytes:
    return b"skinscan-model\n" + version.encode("utf-8") + b"\n" + sha256.encode("ascii")


def generate_keypair(private_path: Path, public_path: Path) -> None:
    """Write a new key pair; the private key file is created with mode 600."""
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))


def sign(private_pem: bytes, version: str, sha256: str) -> str:
    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError("signing key is not an Ed25519 private key")
    return base64.b64encode(key.sign(_payload(version, sha256))).decode("ascii")


def verify(public_pem: bytes, version: str, sha256: str, signature: str) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is valid for (version, sha256)."""
    key = serialization.load_pem_public_key(public_pem)
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("verification key is not an Ed25519 public key")
    try:
        key.verify(base64.b64decode(signature, validate=True), _payload(version, sha256))
    except (InvalidSignature, ValueError):
        raise SignatureError(f"model {version}: signature does not verify") from None
