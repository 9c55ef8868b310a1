"""``skinscan-device``: the kiosk's command line. Heavy modules are imported per subcommand."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING

from settings import ConfigError, load_device

if TYPE_CHECKING:
    from device.kiosk import CloudUplink
    from settings.schema import DeviceConfig

log = logging.getLogger("skinscan.device")


def _config(args: argparse.Namespace) -> int:
    cfg = load_device(args.config)
    print(json.dumps(cfg.model_dump(mode="json"), indent=2))
    return 0


def _classify(args: argparse.Namespace) -> int:
    from device import imageio, report
    from device.diagnose import Diagnoser
    from device.inference import BackendError
    from models.manifest import ManifestError

    cfg = load_device(args.config)
    if args.hair_removal:
        cfg = cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update={"hair_removal": True})})
    try:
        diagnoser = Diagnoser.from_config(cfg)
    except (ManifestError, BackendError) as exc:
        print(f"skinscan-device: cannot load the model: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for path in args.images:
        try:
            result = diagnoser.diagnose(imageio.read(path))
        except Exception as exc:  # one bad image must not stop the batch nor print a traceback
            message = str(exc)
            if not isinstance(exc, imageio.ImageError):
                log.debug("unexpected failure on %s", path, exc_info=True)
                message = f"{path}: cannot classify ({type(exc).__name__}: {exc})"
            failed += 1
            if args.json:
                print(json.dumps({"path": path, "error": message}), flush=True)
            else:
                print(f"{path}: error: {message}", flush=True)
            continue
        if args.json:
            print(json.dumps({"path": path, **result.as_json()}), flush=True)
        else:
            print(report.as_text(path, result.report), flush=True)
    return 1 if failed else 0


def _uplink(cfg: DeviceConfig) -> CloudUplink | None:
    """The MQTT uplink (device/uplink.py, its own issue) when present; the kiosk also runs without one."""
    try:
        from device.uplink import Uplink
    except ImportError as exc:
        log.warning("no cloud uplink (%s): the kiosk runs offline", exc)
        return None
    factory = getattr(Uplink, "from_config", Uplink)
    try:
        uplink = factory(cfg)
        if hasattr(uplink, "start"):
            uplink.start()
    except Exception as exc:  # a broken cloud link must not keep the offline kiosk from starting
        log.error("cloud uplink not started (%s): the kiosk runs offline", exc)
        return None
    return uplink


def _kiosk(args: argparse.Namespace) -> int:
    import signal

    from werkzeug.serving import make_server

    from device.kiosk import create_app

    cfg = load_device(args.config)
    if args.port is not None:
        cfg = cfg.model_copy(update={"kiosk": cfg.kiosk.model_copy(update={"port": args.port})})
    uplink = None if args.offline else _uplink(cfg)
    app = create_app(cfg, uplink)
    kiosk = app.extensions["skinscan_kiosk"]
    try:
        server = make_server(cfg.kiosk.host, cfg.kiosk.port, app, threaded=True)
    except OSError as exc:
        kiosk.stop()
        print(f"skinscan-device: cannot listen on {cfg.kiosk.host}:{cfg.kiosk.port}: {exc}", file=sys.stderr)
        return 1

    def on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    print(f"kiosk on http://{cfg.kiosk.host}:{cfg.kiosk.port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        kiosk.stop()
        for closer in ("stop", "close"):
            if uplink is not None and hasattr(uplink, closer):
                getattr(uplink, closer)()
                break
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skinscan-device", description="SkinScan kiosk device.")
    parser.add_argument("--config", help="device TOML file (default: $SKINSCAN_DEVICE_CONFIG, else built-in defaults)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("config", help="print the effective configuration (defaults + file + environment)")
    p.set_defaults(func=_config)

    p = sub.add_parser("classify", help="classify image files offline and print a report for each")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--hair-removal", action="store_true",
                   help="remove hairs before classifying (default: preprocess.hair_removal)")
    p.set_defaults(func=_classify)

    p = sub.add_parser("kiosk", help="run the kiosk: camera, live diagnosis and the local web page")
    p.add_argument("--port", type=int, help="listen on this port (default: kiosk.port)")
    p.add_argument("--offline", action="store_true", help="do not start the cloud uplink")
    p.set_defaults(func=_kiosk)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    default_level = logging.INFO if args.command == "kiosk" else logging.WARNING
    logging.basicConfig(level=logging.DEBUG if args.verbose else default_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"skinscan-device: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
