"""``skinscan-device``: the kiosk's command line. Heavy modules are imported per subcommand."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from settings import ConfigError, load_device

log = logging.getLogger("skinscan.device")


def _config(args: argparse.Namespace) -> int:
    cfg = load_device(args.config)
    print(json.dumps(cfg.model_dump(mode="json"), indent=2))
    return 0


def _classify(args: argparse.Namespace) -> int:
    from device import imageio, report
    from device.diagnose import Diagnoser

    cfg = load_device(args.config)
    diagnoser = Diagnoser.from_config(cfg)
    failed = 0
    for path in args.images:
        try:
            result = diagnoser.diagnose(imageio.read(path))
        except imageio.ImageError as exc:
            failed += 1
            if args.json:
                print(json.dumps({"path": path, "error": str(exc)}), flush=True)
            else:
                print(f"{path}: error: {exc}", flush=True)
            continue
        if args.json:
            print(json.dumps({"path": path, **result.as_json()}), flush=True)
        else:
            print(report.as_text(path, result.report), flush=True)
    return 1 if failed else 0


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
    p.set_defaults(func=_classify)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
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
