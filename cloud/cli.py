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


def _model_keygen(args: argparse.Namespace) -> int:
    from contract.signing import generate_keypair

    cfg = load_cloud(args.config)
    private = cfg.updates.signing_key_file
    public = private.with_suffix(".pub")
    if private.exists():
        print(f"skinscan-cloud: {private} already exists; refusing to replace a signing key", file=sys.stderr)
        return 1
    generate_keypair(private, public)
    print(f"wrote {private} (keep secret) and {public} (install on every device as updates.public_key)")
    return 0


def _registry(cfg):
    from cloud.registry import Registry

    return Registry.connect(cfg.database.url)


def _model_release(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cloud.release import release
    from contract import encode

    cfg = load_cloud(args.config)
    decision = json.loads(Path(args.decision).read_text("utf-8")) if args.decision else None
    record, announcement = release(
        _registry(cfg), args.model_json, decision, actor=args.by, bundle_dir=cfg.updates.bundle_dir,
        base_url=cfg.updates.base_url, private_key_pem=cfg.updates.signing_key_file.read_bytes(),
        override=args.override)
    print(f"model {record.version}: {record.status}" + (f" ({record.reason})" if record.reason else ""),
          file=sys.stderr)
    if announcement is not None:
        # Publishing it retained on Topics.model_current is the MQTT service's job.
        print(encode(announcement).decode())
    return 0 if announcement is not None else 3


def _models(args: argparse.Namespace) -> int:
    cfg = load_cloud(args.config)
    for record in _registry(cfg).all():
        if args.json:
            print(json.dumps(record.as_json()))
        else:
            ba = record.metrics.get("val_int8", {}).get("balanced_accuracy")
            print(f"{record.version:24} {record.status:9} parent={record.parent or '-':20} "
                  f"val_int8_balanced_accuracy={ba if ba is None else round(ba, 4)} "
                  f"by={record.promoted_by or record.rejected_by or record.registered_by}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skinscan-cloud", description="SkinScan cloud services.")
    parser.add_argument("--config", help="cloud TOML file (default: $SKINSCAN_CLOUD_CONFIG, else built-in defaults)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("config", help="print the effective configuration (defaults + file + environment)")
    p.set_defaults(func=_config)
    p = sub.add_parser("model-keygen", help="create the Ed25519 key pair that signs model updates")
    p.set_defaults(func=_model_keygen)
    p = sub.add_parser("model-release", help="register a retrained model; if its decision promotes it, bundle and "
                                             "sign it and print the announcement (exit 3 when rejected)")
    p.add_argument("model_json", help="the candidate's model.json (models.retrain --out)")
    p.add_argument("--decision", help="decision.json from models.retrain")
    p.add_argument("--by", required=True, help="who releases it (recorded in the registry)")
    p.add_argument("--override", help="promote despite the decision; the reason is recorded")
    p.set_defaults(func=_model_release)
    p = sub.add_parser("models", help="list every model version in the registry")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_models)
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
