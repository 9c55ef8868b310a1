"""Model-update signatures: valid ones verify, anything altered is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.signing import SignatureError, generate_keypair, sign, verify


@pytest.fixture
def keys(tmp_path: Path) -> tuple[bytes, bytes]:
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    return (tmp_path / "k.pem").read_bytes(), (tmp_path / "k.pub").read_bytes()


def test_sign_and_verify(keys):
    private, public = keys
    sig = sign(private, "2", "ab" * 32)
    verify(public, "2", "ab" * 32, sig)


@pytest.mark.parametrize("change", ["version", "sha", "signature", "key"])
def test_any_change_is_refused(keys, tmp_path: Path, change: str):
    private, public = keys
    version, sha = "2", "ab" * 32
    sig = sign(private, version, sha)
    if change == "version":
        version = "3"
    elif change == "sha":
        sha = "cd" * 32
    elif change == "signature":
        sig = sig[:-4] + ("AAA=" if not sig.endswith("AAA=") else "BBB=")
    else:
        generate_keypair(tmp_path / "o.pem", tmp_path / "o.pub")
        public = (tmp_path / "o.pub").read_bytes()
    with pytest.raises(SignatureError):
        verify(public, version, sha, sig)


def test_garbage_signature_is_a_clear_error(keys):
    with pytest.raises(SignatureError):
        verify(keys[1], "2", "ab" * 32, "not base64 !!")
