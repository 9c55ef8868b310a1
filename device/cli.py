"""``skinscan-device``: the kiosk's command line. Heavy modules are imported per subcommand."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from runtime.sdnotify import supervised
from settings import ConfigError, load_device

if TYPE_CHECKING:
    from device.updater import Updater
    from device.uplink import Uplink
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


def _updater(cfg: DeviceConfig) -> Updater | None:
    """Over-the-air updates with the installed model loaded (falling back to the previous, then the
    factory model); None when updates cannot run (no public key, no model), so the kiosk still starts."""
    from device.inference import BackendError
    from device.selftest import SelfTestError
    from device.updater import UpdateError, Updater
    from models.manifest import ManifestError

    try:
        return Updater.from_config(cfg)
    except (UpdateError, ManifestError, BackendError, SelfTestError, OSError) as exc:
        log.error("over-the-air model updates are off: %s", exc)
        return None


def _start_uplink(cfg: DeviceConfig, updater: Updater | None = None) -> Uplink | None:
    """The MQTT outbox and link; a broken cloud link must not keep the offline kiosk from starting."""
    from device.uplink import Uplink

    try:
        uplink = Uplink(cfg, updater)
        uplink.start()
    except Exception as exc:
        log.error("cloud uplink not started (%s): the kiosk runs offline", exc)
        return None
    return uplink


def _uplink_healthy(uplink: Uplink | None) -> Callable[[], bool]:
    """The watchdog is fed while the outbox answers: a wedged database or link thread ends in a restart."""
    if uplink is None:
        return lambda: True
    return lambda: uplink.stats() is not None


def _kiosk(args: argparse.Namespace) -> int:
    import signal

    from werkzeug.serving import make_server

    from device.kiosk import create_app

    cfg = load_device(args.config)
    if args.port is not None:
        cfg = cfg.model_copy(update={"kiosk": cfg.kiosk.model_copy(update={"port": args.port})})
    # Offline there are no announcements, but the updater still serves the installed (updated) version.
    updater = _updater(cfg)
    uplink = None if args.offline else _start_uplink(cfg, updater)
    app = create_app(cfg, uplink, updater=updater)
    kiosk = app.extensions["skinscan_kiosk"]

    def close() -> None:
        kiosk.stop()
        if uplink is not None:
            uplink.close()
        if updater is not None:
            updater.close()

    try:
        server = make_server(cfg.kiosk.host, cfg.kiosk.port, app, threaded=True)
    except OSError as exc:
        close()
        print(f"skinscan-device: cannot listen on {cfg.kiosk.host}:{cfg.kiosk.port}: {exc}", file=sys.stderr)
        return 1

    def on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    url = f"http://{cfg.kiosk.host}:{cfg.kiosk.port}/"
    print(f"kiosk on {url}", flush=True)
    try:
        with supervised(f"kiosk on {url}", _uplink_healthy(uplink)):
            server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        close()


def _send(args: argparse.Namespace) -> int:
    from device import capture_file
    from device.outbox import Outbox, OutboxError

    cfg = load_device(args.config)
    diagnoser = capture_file.diagnoser_or_none(cfg)
    outbox = Outbox(cfg.outbox.path, cfg.outbox.max_bytes)
    queued: list[str] = []
    failed = 0
    for path in args.images:
        try:
            capture = capture_file.capture_from_file(path, cfg, diagnoser)
            capture_id = outbox.put(capture)
        except (capture_file.ImageError, OutboxError) as exc:
            failed += 1
            print(json.dumps({"path": path, "error": str(exc)}) if args.json else f"{path}: error: {exc}", flush=True)
            continue
        queued.append(capture_id)
        print(json.dumps({"path": path, "capture_id": capture_id, "state": "queued"}) if args.json
              else f"{path}: {capture_id} queued", flush=True)
    if queued and args.wait > 0:
        capture_file.flush(cfg, queued, args.wait)
    return 1 if failed else 0


def _outbox(args: argparse.Namespace) -> int:
    from device.outbox import Outbox

    cfg = load_device(args.config)
    outbox = Outbox(cfg.outbox.path, cfg.outbox.max_bytes)
    rows = outbox.list(limit=args.limit)
    if args.json:
        for row in rows:
            print(json.dumps(row), flush=True)
        return 0
    c = outbox.counts()
    print(f"{cfg.outbox.path}: {c['queued']} queued, {c['sent']} sent, {c['answered']} answered; "
          f"images held until answered: {c['held_bytes']} of {c['max_bytes']} bytes")
    for row in rows:
        error = f"  last error: {row['last_error']}" if row["last_error"] else ""
        print(f"  {row['capture_id']}  {row['state']:<8} {row['bytes']:>9} B  attempts {row['attempts']}{error}")
    return 0


def _uplink(args: argparse.Namespace) -> int:
    import signal
    import threading

    from device.uplink import Uplink

    cfg = load_device(args.config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    updater = _updater(cfg)
    uplink = Uplink(cfg, updater)
    uplink.start()
    with supervised(f"uplink for {cfg.device_id}", _uplink_healthy(uplink)):
        while not stop.wait(1.0):
            pass
    uplink.close()
    if updater is not None:
        updater.close()
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

    p = sub.add_parser("send", help="queue image files for the cloud (with this kiosk's prediction) and send them")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--wait", type=float, default=10.0,
                   help="seconds to try sending now when no uplink is running (0: only queue); "
                        "anything unsent stays queued for the kiosk or `skinscan-device uplink`")
    p.set_defaults(func=_send)

    p = sub.add_parser("outbox", help="show the store-and-forward queue")
    p.add_argument("--json", action="store_true", help="one JSON object per capture per line")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=_outbox)

    p = sub.add_parser("uplink", help="run the link to the cloud (flush the outbox, keep status) until stopped")
    p.set_defaults(func=_uplink)
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
    except RuntimeError as exc:  # OutboxError, UplinkBusy, MqttSetupError: say what is wrong, no traceback
        if type(exc).__module__.split(".")[0] != "device":
            raise
        print(f"skinscan-device: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
