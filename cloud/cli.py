"""``skinscan-cloud``: the cloud side's command line. Heavy modules are imported per subcommand."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from settings import ConfigError, load_cloud


def _config(args: argparse.Namespace) -> int:
    print(json.dumps(load_cloud(args.config).model_dump(mode="json"), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skinscan-cloud", description="SkinScan cloud services.")
    parser.add_argument("--config", help="cloud TOML file (default: $SKINSCAN_CLOUD_CONFIG, else built-in defaults)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("config", help="print the effective configuration (defaults + file + environment)")
    p.set_defaults(func=_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"skinscan-cloud: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
