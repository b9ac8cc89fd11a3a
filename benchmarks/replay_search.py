"""Does the search earn its compute? Replays whole searches against a recorded curve table.

    python benchmarks/replay_search.py benchmarks/curves/smoke.jsonl --seeds 30 --concurrency 2 8

Each strategy runs as a search on a simulated clock (benchmarks/replay.py: the project's own
searcher, scheduler and Optuna state-telling decide; the table answers) until `--budget` full
trials' worth of compute is spent, once per seed and concurrency. The strategies -- (a) default,
(b) random_asha, (c) stock, (d) tpe_full, (e) evolve, (f) random_full, and `--variant KEY=VALUE`
of the default (grace_period, reduction_factor, tie_break, startup, multivariate=0|1: Optuna 5's
TPE is multivariate by default) -- are described in benchmarks/strategies.py.

Writes <out>/replay.json (per strategy and concurrency: the incumbent's full-budget value
against compute, median and interquartile range over seeds; the compute to come within 5 % of
the table's best and within one seed-noise std of it; the final regret next to the seed noise;
the share of compute spent in health-stopped trials; the tie and confirmation analyses),
<out>/replay.png (and replay-variants.png), and prints a summary (benchmarks/replay_analysis.py).
Compute is in full-trial equivalents (one = the median wall time of a recorded run that
reached max_t).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.curves import CurveError, CurveTable, read_table  # noqa: E402
from benchmarks.replay_analysis import (  # noqa: E402
    TIE_CANDIDATES,  # noqa: E402
    confirm_analysis,
    plot,
    report_text,
    summarise,
    tie_analysis,
)
from benchmarks.strategies import STRATEGIES, build, load_spec, parse_variant  # noqa: E402


def replay_one(job: tuple) -> dict:
    """One (strategy, variant, concurrency, seed) replay -> its timeline (picklable)."""
    from benchmarks.replay import Replay, seed_everything

    table_path, strategy, variant, concurrency, seed, budget, full_s = job
    table = read_table(table_path)
    spec = load_spec(table, budget, concurrency, seed, variant)
    seed_everything(seed)
    searcher, scheduler, as_error = build(strategy.split(":")[0], spec, seed, variant)
    tl = Replay(table, searcher, scheduler, concurrency, budget * full_s, seed, health_as_error=as_error).run(spec)
    return {"strategy": strategy, "concurrency": concurrency, "seed": seed,
            "points": [(c / full_s, w / full_s, v, s) for c, w, v, s in tl.points],
            "trials": len(tl.trials), "reasons": dict(Counter(t.reason for t in tl.trials)),
            "unhealthy_s": sum(t.own_s for t in tl.trials if t.reason not in ("completed", "asha")) / full_s,
            "finished_s": sum(t.own_s for t in tl.trials) / full_s}


def full_trial_s(table: CurveTable) -> float:
    done = [sum(r.series["time_s"]) for r in table.runs if r.epochs == table.max_t and r.stop is None]
    return statistics.median(done) if done else statistics.median(sum(r.series["time_s"]) for r in table.runs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("curves", type=Path)
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--budget", type=float, default=40.0, help="compute per search, in full trials")
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    ap.add_argument("--variant", action="append", default=[], help="the default with one setting changed")
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/out/replay-<space>")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    try:
        table = read_table(args.curves)
    except CurveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.seeds < 1 or args.budget <= 0 or min(args.concurrency) < 1:
        print("error: --seeds, --budget and --concurrency must be positive", file=sys.stderr)
        return 2
    unknown = [s for s in args.strategies if s not in STRATEGIES]
    if unknown:
        print(f"error: unknown strategy {unknown[0]!r} (known: {', '.join(STRATEGIES)})", file=sys.stderr)
        return 2
    full_s = full_trial_s(table)
    kinds = [(s, None) for s in args.strategies] + [parse_variant(v) for v in args.variant]
    jobs = [(str(args.curves), name, variant, c, seed, args.budget, full_s)
            for name, variant in kinds for c in args.concurrency for seed in range(args.seeds)]
    t0 = time.time()
    from tqdm import tqdm

    if args.workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.workers) as pool:
            runs = list(tqdm(pool.imap(replay_one, jobs, chunksize=max(1, len(jobs) // (16 * args.workers))),
                             total=len(jobs), desc="replays", unit="search"))
    else:
        runs = [replay_one(j) for j in tqdm(jobs, desc="replays", unit="search")]
    summary = summarise(table, runs, args.budget)
    summary["full_trial_s"] = full_s
    summary["ties"] = {sec: tie_analysis(table, list(range(1, table.max_t)), sec) for sec in TIE_CANDIDATES}
    summary["confirm"] = confirm_analysis(table)
    summary["replay_wall_s"] = round(time.time() - t0, 1)
    out = args.out or ROOT / "benchmarks" / "out" / f"replay-{table.header['space']}"
    out.mkdir(parents=True, exist_ok=True)
    from refdet.io import atomic_write_text

    atomic_write_text(out / "replay.json", json.dumps(summary, indent=1))
    plot(summary, out / "replay.png")
    if args.variant:
        plot(summary, out / "replay-variants.png", variants=True)
    print(report_text(summary, args.concurrency))
    print(f"\n{len(jobs)} replays in {summary['replay_wall_s']:.0f} s -> {out / 'replay.json'}, {out / 'replay.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
