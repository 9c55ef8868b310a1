"""The dermatologists' dashboard, the paired phone page and the feedback relay: ``create_app(cfg)``."""

from cloud.dashboard.app import create_app

__all__ = ["create_app"]
