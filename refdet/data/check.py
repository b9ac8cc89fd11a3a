"""Validate an AeroEyes-format dataset and print a summary.

    python -m refdet.data.check ROOT [--min-refs 3]

Exit 0 when the dataset is usable (warnings are printed with counts), 2 when it is not
(every problem is listed, naming the file, the video/frame and what is wrong).
"""

from __future__ import annotations

import argparse
import sys

from refdet.data import DatasetError, load_dataset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m refdet.data.check", description=__doc__.splitlines()[0])
    ap.add_argument("root", help="dataset folder (with samples/ and annotations/)")
    ap.add_argument("--min-refs", type=int, default=3, help="reference images required per video (default 3)")
    args = ap.parse_args(argv)
    try:
        ds = load_dataset(args.root, min_refs=args.min_refs)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(ds.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
