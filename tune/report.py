"""Write (or rewrite) the report of a search; optionally confirm its best configs first.

    python tune/report.py results/<name>                          # also on a running or interrupted search
    python tune/report.py results/<name> --confirm-top 2 --seeds 3

Writes leaderboard.csv, summary.md, health_report.md, plots/ and (for a finished search)
best_config.yaml into the experiment folder (see tune/results.py). Exit codes: 0 written; 2 not a
search folder (or an unreadable file in it); 130 interrupted (the same command continues a
confirmation from its checkpoints).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tune.results import ReportError, write_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python tune/report.py", description="Write the report of a search.")
    ap.add_argument("experiment", help="results/<name> folder")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--confirm-top", type=int, default=None, metavar="K",
                    help="re-run the K best configs with new seeds now, and export the best by mean; 0: export "
                         "without a confirmation. Default: the search's own plan (a planned confirmation that "
                         "has not finished means no best_config.yaml; `tune/run.py ... --resume` runs it)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--address", default=None, help="Ray cluster address for --confirm-top")
    args = ap.parse_args(argv)
    if (args.confirm_top is not None and args.confirm_top < 0) or args.seeds < 1:
        print("error: --confirm-top must be >= 0 and --seeds >= 1", file=sys.stderr)
        return 2
    exp = Path(args.experiment).resolve()  # Ray and pyarrow need absolute paths
    if not exp.is_dir():
        print(f"error: {exp}: {'not a folder' if exp.exists() else 'no such folder'}", file=sys.stderr)
        return 2
    try:
        report = write_report(exp, plots=not args.no_plots and not args.confirm_top, confirm_top=args.confirm_top)
        if args.confirm_top:
            from tune.confirm import confirm_top  # imports Ray: only when asked to confirm

            if confirm_top(exp, report.spec, args.confirm_top, args.seeds, address=args.address) is None:
                print("\ninterrupted while confirming; the same command continues it", file=sys.stderr)
                return 130
            report = write_report(exp, report.spec, plots=not args.no_plots, confirm_top=args.confirm_top)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune's loop started
        print("\ninterrupted; the same command continues it", file=sys.stderr)
        return 130
    print(report.console_summary())
    print(f"wrote leaderboard.csv, summary.md, health_report.md, plots/ in {exp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
