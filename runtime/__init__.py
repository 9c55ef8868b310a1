"""Process runtime helpers shared by the long-running services (systemd integration)."""
