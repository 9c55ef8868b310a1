"""Make the demo camera stream of `make run` (settings/device.toml: camera.uri = tests/fixtures/stream).

Synthetic skin photos drawn from code (tests/support/samples.py), never dataset images.
    python scripts/make_stream_fixture.py [--if-missing] [--out DIR] [--video FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import samples  # noqa: E402 - needs the project root on sys.path first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "stream")
    parser.add_argument("--count", type=int, default=48, help="frames (played at camera.fps)")
    parser.add_argument("--video", type=Path, help="also write a Motion-JPEG AVI of the same scene here")
    parser.add_argument("--if-missing", action="store_true", help="do nothing when --out already has images")
    args = parser.parse_args(argv)
    if args.if_missing and args.out.is_dir() and any(args.out.glob("*.jpg")):
        return 0
    paths = samples.write_folder(args.out, args.count)
    print(f"wrote {len(paths)} frames to {args.out}")
    if args.video:
        print(f"wrote {samples.write_video(args.video)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
