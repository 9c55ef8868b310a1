"""Configuration: one TOML file per role, documented defaults, environment overrides.

Load order (later wins): the packaged defaults (``settings/device.toml`` or
``settings/cloud.toml``), the file named by ``--config`` or ``SKINSCAN_<ROLE>_CONFIG``, then
environment variables ``SKINSCAN_<SECTION>__<KEY>=value`` (values are parsed as TOML literals
where they can be, so ``SKINSCAN_MQTT__PORT=1884`` is an int and ``SKINSCAN_MQTT__TLS=true`` a bool).
"""

from settings.loader import ConfigError, load_cloud, load_device
from settings.schema import CloudConfig, DeviceConfig

__all__ = ["CloudConfig", "ConfigError", "DeviceConfig", "load_cloud", "load_device"]
