"""From a retrained candidate to the announcement devices act on: registry + bundle + signature.

``release`` is the step after ``python -m models.retrain``: it records the candidate and its
decision in the registry, and when the decision promotes it, builds the signed bundle and returns
the :class:`contract.ModelAnnouncement` the caller publishes retained on ``Topics.model_current``.
``announcement_for`` re-signs the announcement of any promoted version (re-publishing the current
model, or rolling back to an older one after ``Registry.promote``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from cloud import bundles
from cloud.registry import ModelRecord, Registry, RegistryError
from contract import ModelAnnouncement, signing, utc_now
from models.manifest import sha256_file

log = logging.getLogger(__name__)


def release(registry: Registry, model_json: str | Path, decision: dict | None, *, actor: str,
            bundle_dir: str | Path, base_url: str, private_key_pem: bytes,
            override: str | None = None) -> tuple[ModelRecord, ModelAnnouncement | None]:
    """Register the model at ``model_json``; promote it when ``decision`` says so (or when a person
    gives an ``override`` reason), else reject it with the decision's reasons."""
    record = registry.register(model_json, actor=actor, decision=decision)
    promote = bool(decision and decision.get("promote")) or override is not None
    if not promote:
        reasons = "; ".join(decision.get("reasons", [])) if decision else "no promotion decision"
        return registry.reject(record.version, actor=actor, reason=reasons), None
    bundle = bundles.build_bundle(model_json, bundle_dir)
    url = bundles.bundle_url(base_url, bundle.version)
    registry.set_bundle(record.version, sha256=bundle.sha256, url=url)
    record = registry.promote(record.version, actor=actor, reason=override)
    return record, bundles.announce(bundle, url, private_key_pem)


def announcement_for(registry: Registry, version: str, bundle_dir: str | Path,
                     private_key_pem: bytes) -> ModelAnnouncement:
    """A fresh signed announcement of a promoted version whose bundle is still intact on disk."""
    record = registry.get(version)
    if record is None or record.status != "promoted":
        raise RegistryError(f"model {version} is not a promoted version")
    if not record.bundle_sha256 or not record.bundle_url:
        raise RegistryError(f"model {version} has no bundle")
    path = Path(bundle_dir) / version / bundles.BUNDLE_NAME
    if not path.is_file() or sha256_file(path) != record.bundle_sha256:
        raise RegistryError(f"{path}: missing or differs from the registered sha256; refusing to announce it")
    return ModelAnnouncement(version=version, url=record.bundle_url, sha256=record.bundle_sha256,
                             signature=signing.sign(private_key_pem, version, record.bundle_sha256),
                             published_at=utc_now())
