"""Reads TOML + environment into the validated models, with errors that name the key."""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from settings.schema import CloudConfig, DeviceConfig

T = TypeVar("T", bound=BaseModel)
ENV_PREFIX = "SKINSCAN_"
# Relative paths in a config file are taken from the project root on a laptop checkout,
# so `make run` works from a clean clone without editing anything.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """Invalid configuration; the message lists every problem, one per line."""


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _env_overrides(environ: dict[str, str], model: type[BaseModel]) -> dict[str, Any]:
    """``SKINSCAN_MQTT__PORT=1884`` -> ``{"mqtt": {"port": 1884}}``; unknown top-level names are
    left alone so the device and cloud can share one environment."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        if path[0] not in model.model_fields:
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _parse_env_value(raw)
    return out


def _describe(err: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "config"
    ctx = err.get("ctx") or {}
    got = err.get("input")
    kind = err["type"]
    if kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}:
        return f"{where} {err['msg'].replace('Input should', 'must')}, got {got!r}"
    if kind == "missing":
        return f"{where} is required"
    if kind == "extra_forbidden":
        return f"{where} is not a known setting"
    if kind == "string_pattern_mismatch":
        return f"{where} must match {ctx.get('pattern')}, got {got!r}"
    return f"{where}: {err['msg']}, got {got!r}"


def _load(role: str, model: type[T], path: str | os.PathLike[str] | None, environ: dict[str, str] | None) -> T:
    env = dict(os.environ if environ is None else environ)
    defaults = tomllib.loads(resources.files("settings").joinpath(f"{role}.toml").read_text("utf-8"))
    data = defaults
    chosen = path or env.get(f"{ENV_PREFIX}{role.upper()}_CONFIG")
    if chosen:
        try:
            with open(chosen, "rb") as fh:
                data = _deep_merge(data, tomllib.load(fh))
        except FileNotFoundError:
            raise ConfigError(f"config file {chosen} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {chosen} is not valid TOML: {exc}") from None
    data = _deep_merge(data, _env_overrides(env, model))
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(e) for e in exc.errors())) from None
    return _absolutise(config)


def _absolutise(config: T) -> T:
    """Make relative paths relative to the project root, recursively."""
    updates: dict[str, Any] = {}
    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, Path) and not value.is_absolute():
            updates[name] = PROJECT_ROOT / value
        elif isinstance(value, BaseModel):
            updates[name] = _absolutise(value)
    return config.model_copy(update=updates)


def load_device(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> DeviceConfig:
    return _load("device", DeviceConfig, path, environ)


def load_cloud(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> CloudConfig:
    return _load("cloud", CloudConfig, path, environ)
