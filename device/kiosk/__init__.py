"""The kiosk's local web page: ``create_app(cfg, uplink=None)``."""

from device.kiosk.app import CloudUplink, Kiosk, create_app

__all__ = ["CloudUplink", "Kiosk", "create_app"]
