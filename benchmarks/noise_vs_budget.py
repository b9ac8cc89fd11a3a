"""How large is seed noise against the differences a search ranks on, at each training budget?

    python benchmarks/noise_vs_budget.py benchmarks/curves/smoke.jsonl [--min-seeds 3]

For every epoch budget E of a curve table: each multi-seed configuration's value after its
first E epochs (best fresh metric so far, as the search records it), the pooled seed std
over those configurations, the best configuration's mean, the std as a share of that best,
and the seeds a configuration would need for the std of its mean to fall to 5 % of the best
((std / 0.05 best)^2) -- what "within 5 % of the best" needs before it can be measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.replay.sources.table import CurveError, CurveTable, read_table  # noqa: E402


def noise_by_budget(table: CurveTable, min_seeds: int = 3) -> list[dict]:
    groups = {c: rs for c, rs in table.configs().items() if len(rs) >= min_seeds}
    out = []
    for e in range(1, table.max_t + 1):
        values = {c: [table.run_value(r, e) for r in rs] for c, rs in groups.items()}
        if not values:
            break
        sd = statistics.fmean(statistics.variance(v) for v in values.values()) ** 0.5
        means = {c: statistics.fmean(v) for c, v in values.items()}
        best = max(means.values()) if table.sign > 0 else min(means.values())
        share = sd / abs(best) if best else float("inf")
        out.append({"epochs": e, "configs": len(values), "seed_std": sd, "best_mean": best, "std_share": share,
                    "seeds_for_5pct": (share / 0.05) ** 2})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("table", type=Path)
    ap.add_argument("--min-seeds", type=int, default=3, help="configurations with at least this many seeds")
    args = ap.parse_args(argv)
    if args.min_seeds < 2:
        print("error: --min-seeds must be >= 2 (a std needs two seeds)", file=sys.stderr)
        return 2
    try:
        table = read_table(args.table)
    except CurveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = noise_by_budget(table, args.min_seeds)
    if not rows:
        print(f"error: {args.table}: no configuration has {args.min_seeds} seeds", file=sys.stderr)
        return 2
    print(f"{args.table}: {table.metric}, configurations with >= {args.min_seeds} seeds")
    print("| epochs | configs | seed std | best mean | std / best | seeds for 5 % |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['epochs']} | {r['configs']} | {r['seed_std']:.4f} | {r['best_mean']:.4f} | "
              f"{100 * r['std_share']:.0f} % | {r['seeds_for_5pct']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
