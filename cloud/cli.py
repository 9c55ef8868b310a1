"""``skinscan-cloud``: the cloud side's command line. Heavy modules are imported per subcommand."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from runtime.sdnotify import supervised
from settings import ConfigError, load_cloud

log = logging.getLogger("skinscan.cloud")


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


def _retrain(args: argparse.Namespace) -> int:
    import getpass
    from pathlib import Path

    from cloud.bundles import BundleError
    from cloud.model_updates import ModelUpdateError, retrain_and_release
    from cloud.registry import RegistryError
    from contract import encode

    cfg = load_cloud(args.config)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    try:
        outcome = retrain_and_release(cfg, Path(args.labelled), by=args.by or getpass.getuser(),
                                      data=Path(args.data) if args.data else None, version=args.version,
                                      train_args=train_args)
    except (ModelUpdateError, RegistryError, BundleError) as exc:
        print(f"skinscan-cloud retrain: {exc}", file=sys.stderr)
        return 1
    record = outcome.record
    print(f"model {record.version} (parent {record.parent}): {record.status}"
          + (f" ({record.reason})" if record.reason else ""), file=sys.stderr)
    if outcome.announcement is None:
        return 3
    print(encode(outcome.announcement).decode())
    return 0


def _publish_model(args: argparse.Namespace) -> int:
    from cloud.model_updates import ModelUpdateError, republish_current
    from contract import encode

    try:
        announcement = republish_current(load_cloud(args.config))
    except ModelUpdateError as exc:
        print(f"skinscan-cloud publish-model: {exc}", file=sys.stderr)
        return 1
    if announcement is None:
        print("no promoted model with a bundle: nothing to announce", file=sys.stderr)
        return 0
    print(encode(announcement).decode())
    return 0


def _export_labelled(args: argparse.Namespace) -> int:
    from cloud.labelled import LabelledExportError, export_labelled
    from cloud.storage import Storage

    cfg = load_cloud(args.config)
    storage = Storage(cfg.database.url, cfg.storage.image_dir)
    storage.migrate()
    try:
        counts = export_labelled(storage, args.out)
    except LabelledExportError as exc:
        print(f"skinscan-cloud export-labelled: {exc}", file=sys.stderr)
        return 1
    finally:
        storage.close()
    print(f"{sum(counts.values())} confirmed cases in {args.out}: "
          + ", ".join(f"{label} {n}" for label, n in sorted(counts.items())))
    return 0


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


def _consume(args: argparse.Namespace) -> int:
    import signal
    import threading

    cfg = load_cloud(args.config)
    if args.workers > 1:
        return _consume_many(args, cfg.consumer.worker_id)
    from cloud.consumer import Consumer
    from device.inference import BackendError
    from device.mqttclient import MqttSetupError
    from models.manifest import ManifestError

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    _announce_current(cfg)
    try:
        consumer = Consumer(cfg, worker_id=args.worker_id)
        with supervised(f"consumer {consumer.worker_id}", lambda: not stop.is_set()):
            consumer.run(stop)
    except (ManifestError, BackendError, MqttSetupError) as exc:
        print(f"skinscan-cloud consume: {exc}", file=sys.stderr)
        return 1
    log.info("consumer %s stopped: %s", consumer.worker_id, consumer.counts)
    return 0


def _announce_current(cfg) -> None:
    """Re-publish the current model's retained announcement, so a broker that lost its retained
    messages recovers; a failure is logged and the consumer starts anyway."""
    from sqlalchemy.exc import SQLAlchemyError

    from cloud.model_updates import ModelUpdateError, republish_current
    from cloud.registry import RegistryError

    try:
        republish_current(cfg)
    except (ModelUpdateError, RegistryError, SQLAlchemyError, OSError) as exc:
        log.warning("current model not re-announced: %s", exc)


def _consume_many(args: argparse.Namespace, configured_id: str) -> int:
    """N worker processes (each its own interpreter and model), each with its own session."""
    import signal
    import subprocess

    from cloud.consumer import default_worker_id

    base = args.worker_id or configured_id or default_worker_id()
    argv = [sys.executable, "-m", "cloud.cli"] + (["--config", args.config] if args.config else [])
    procs = [subprocess.Popen([*argv, "consume", "--worker-id", f"{base}-{i}"]) for i in range(args.workers)]

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(p.wait() for p in procs)


def _cases(args: argparse.Namespace) -> int:
    from cloud.storage import Storage

    cfg = load_cloud(args.config)
    storage = Storage(cfg.database.url, cfg.storage.image_dir)
    storage.migrate()
    for case in storage.cases(limit=args.limit, device_id=args.device):
        row = {"capture_id": case["capture_id"], "device_id": case["device_id"], "label": case["label"],
               "confidence": case["confidence"], "unsure": case["unsure"],
               "received_at": case["received_at"].isoformat(), "captured_at": case["captured_at"].isoformat(),
               "model_version": case["model_version"], "image_sha256": case["image_sha256"],
               "deliveries": case["deliveries"]}
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            conf = "-" if case["confidence"] is None else f"{case['confidence']:.2f}"
            print(f"{row['received_at']}  {row['capture_id']}  {row['device_id']:<16} {row['label'] or '(pending)'} "
                  f"{conf}{'  unsure' if case['unsure'] else ''}", flush=True)
    return 0


def _dead_letters(args: argparse.Namespace) -> int:
    from cloud.storage import Storage

    cfg = load_cloud(args.config)
    storage = Storage(cfg.database.url, cfg.storage.image_dir)
    storage.migrate()
    for row in storage.dead_letters(limit=args.limit):
        row = {**row, "received_at": row["received_at"].isoformat()}
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{row['received_at']}  #{row['id']}  {row['topic']}  {row['size']} B  {row['reason']}", flush=True)
    return 0


def _add_device(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cloud.accounts import AccountError, add_device
    from contract import ContractError

    broker_dir = Path(args.broker_dir) if args.broker_dir else load_cloud(args.config).broker.data_dir
    try:
        account = add_device(broker_dir, args.device_id, rotate=args.rotate)
    except (AccountError, ContractError) as exc:
        print(f"skinscan-cloud add-device: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(account.as_json()))
        return 0
    print(f"device {account.device_id}: secret in {account.secret_file} (copy it to the kiosk's mqtt.password_file)")
    if account.cert_file:
        print(f"  client certificate {account.cert_file}, key {account.key_file}")
    if account.reloaded_pid:
        print(f"  broker (pid {account.reloaded_pid}) reloaded its password file")
    else:
        print(f"  no running broker found for {broker_dir}; it reads the account when it starts")
    return 0


def _add_user(args: argparse.Namespace) -> int:
    import getpass
    from pathlib import Path

    from cloud.dashboard.auth import AccountError, add_user
    from cloud.storage import Storage, StorageError

    cfg = load_cloud(args.config)
    if args.password_file:
        password = Path(args.password_file).read_text("utf-8").rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.username}: ")
        if getpass.getpass("again: ") != password:
            print("skinscan-cloud add-user: the passwords differ", file=sys.stderr)
            return 1
    storage = Storage(cfg.database.url, cfg.storage.image_dir)
    storage.migrate()
    try:
        new = add_user(storage, args.username, password, args.role, replace=args.replace)
    except (AccountError, StorageError) as exc:
        print(f"skinscan-cloud add-user: {exc}", file=sys.stderr)
        return 1
    storage.audit("cli", "user.add" if new else "user.replace", args.username, f"role={args.role}")
    print(f"{'created' if new else 'updated'} {args.role} {args.username}")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from werkzeug.serving import make_server

    from cloud.dashboard import create_app

    cfg = load_cloud(args.config)
    host = args.host or cfg.dashboard.host
    port = args.port or cfg.dashboard.port
    from device.mqttclient import MqttSetupError

    try:
        app = create_app(cfg)
    except MqttSetupError as exc:
        print(f"skinscan-cloud dashboard: {exc}", file=sys.stderr)
        return 1
    # Werkzeug's threaded server: one thread per open page (the live streams hold theirs). Enough for a
    # clinic's staff and patients' phones; put a TLS reverse proxy in front of it on a real network.
    server = make_server(host, port, app, threaded=True)
    log.info("dashboard on http://%s:%d/ (phone links: %s/p/...)", host, server.server_port,
             cfg.dashboard.public_url.rstrip("/"))
    import signal

    def on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        with supervised(f"dashboard on {host}:{server.server_port}"):
            server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        app.extensions["skinscan_dashboard"].stop()
        server.server_close()
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
    p = sub.add_parser("retrain", help="fine-tune the current model on the original data plus labelled cases; "
                                       "if the candidate is promoted, bundle, sign and announce it to the devices "
                                       "(exit 3 when it is rejected)")
    p.add_argument("--labelled", required=True, help="folder-per-class tree of confirmed cases (export-labelled)")
    p.add_argument("--data", help="original data with train/ and val/ (default: updates.training_data)")
    p.add_argument("--by", help="who retrains (recorded in the registry; default: the login name)")
    p.add_argument("--version", help="the candidate's version (default: UTC date.time)")
    p.add_argument("train_args", nargs=argparse.REMAINDER,
                   help="after --: options passed to models.retrain (e.g. -- --fine-epochs 2)")
    p.set_defaults(func=_retrain)
    p = sub.add_parser("publish-model", help="announce the current model again (retained on models/current)")
    p.set_defaults(func=_publish_model)
    p = sub.add_parser("export-labelled", help="write doctor-confirmed cases as a folder-per-class tree with "
                                               "manifest.csv, for retrain --labelled")
    p.add_argument("out", metavar="DIR")
    p.set_defaults(func=_export_labelled)
    p = sub.add_parser("models", help="list every model version in the registry")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_models)

    p = sub.add_parser("consume", help="store and classify captures from the broker, answer each device")
    p.add_argument("--worker-id", help="this worker's session name (default: consumer.worker_id, else host name)")
    p.add_argument("--workers", type=int, default=1, help="start N worker processes (ids WORKER_ID-0..N-1)")
    p.set_defaults(func=_consume)

    p = sub.add_parser("cases", help="list stored cases, newest first")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--device", help="only this device's cases")
    p.set_defaults(func=_cases)

    p = sub.add_parser("dead-letters", help="list messages the consumer refused, with the reason")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--limit", type=int, default=None)
    p.set_defaults(func=_dead_letters)

    p = sub.add_parser("add-device", help="create a device's own broker account (secret, password entry, cert)")
    p.add_argument("device_id", metavar="DEVICE_ID")
    p.add_argument("--broker-dir", help="broker/run's data dir (default: broker.data_dir)")
    p.add_argument("--rotate", action="store_true", help="replace an existing device's secret")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_add_device)

    p = sub.add_parser("add-user", help="create a dashboard account (password from a prompt or --password-file)")
    p.add_argument("username", metavar="USERNAME")
    p.add_argument("--role", required=True, choices=["dermatologist", "admin"])
    p.add_argument("--password-file", help="read the password from this file (first line) instead of a prompt")
    p.add_argument("--replace", action="store_true", help="set a new password and role for an existing user")
    p.set_defaults(func=_add_user)

    p = sub.add_parser("dashboard", help="serve the dermatologists' dashboard, the phone pages and model bundles")
    p.add_argument("--host", help="default: dashboard.host")
    p.add_argument("--port", type=int, help="default: dashboard.port")
    p.set_defaults(func=_dashboard)
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
