"""Does the search earn its compute? Replays whole searches against a curve source.

    python benchmarks/replay_search.py lcbench:167168 --seeds 30
    python benchmarks/replay_search.py model:benchmarks/curves/smoke.jsonl --noise measured --seeds 30
    python benchmarks/replay_search.py benchmarks/curves/history/2026-12-02-hazard.jsonl --strategies default default_health_fail \\
        --concurrency 2 8 --budget 30 --seeds 100

SOURCE is `lcbench:TASK` (YAHPO Gym's LCBench surrogate, one of its 34 tasks),
`model:TABLE` (a continuous model of a recorded table, seed noise at `--noise`: a fraction of the
best value, 0.05, or `measured`) or a recorded table's path (benchmarks/replay/sources/). Each
strategy (benchmarks/replay/strategies.py) runs as a search on a simulated clock
(benchmarks/replay/engine.py) until `--budget` full trials' worth of compute is spent, once per
replication seed (`--seeds N` from `--seed-offset K`) and concurrency; seeds are paired across
strategies. Writes <out>/replay.json (benchmarks/replay/analysis.py: anytime mean rank and
normalised regret with 95 % bootstrap intervals, compute to reach random search's whole-budget
quality, the goals of #22; on a table with health stops the compute in doomed trials and the
time to the best), <out>/runs.jsonl (every replay), <out>/replay-c<N>.png, and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks.replay.sources import SourceError, open_source
from benchmarks.replay.strategies import EXTRA, STRATEGIES, VariantError, parse_variant

ROOT = Path(__file__).resolve().parents[2]
_SOURCES: dict = {}


def source_for(text: str, noise: str | None):
    """One source per process (the LCBench session and the model's fit are built once)."""
    if (text, noise) not in _SOURCES:
        _SOURCES[text, noise] = open_source(text, noise)
    return _SOURCES[text, noise]


def replay_one(job: tuple) -> dict:
    """One (strategy, variant, concurrency, seed) replay -> its record (picklable)."""
    from benchmarks.replay.engine import Replay, seed_everything
    from benchmarks.replay.strategies import apply_variant, build

    text, noise, strategy, variant, concurrency, seed, budget = job
    logging.getLogger("ray.tune.schedulers").setLevel(logging.WARNING)  # HyperBand logs each skipped bracket
    t0 = time.perf_counter()
    source = source_for(text, noise)
    spec = source.spec(budget, concurrency, seed)
    seed_everything(seed)
    b = build(strategy.split(":")[0], spec, seed, variant)
    full = source.full_trial_s
    replay = Replay(source, b.searcher, b.scheduler, concurrency, budget * full, seed,
                    health_as_error=b.health_as_error, max_pending=b.max_pending)
    tl = replay.run(apply_variant(spec, variant))
    export = replay.export(b.confirm)
    points, last = [], None
    for c, w, v, s in tl.points:  # only where the incumbent's true value changes
        if v != last:
            points.append((round(c / full, 4), round(w / full, 4), v, s))
            last = v
    by_reason: Counter = Counter()
    for t in tl.trials:
        by_reason[t.reason] += t.own_s / full
    return {"strategy": strategy, "concurrency": concurrency, "seed": seed, "points": points,
            "export": export and {"true": export["true"], "confirmed": export["confirmed"],
                                  "compute": round(export["compute_s"] / full, 4), "params": export["params"]},
            "compute": tl.compute_s / full, "wall": tl.wall_s / full, "trials": len(tl.trials),
            "reasons": dict(Counter(t.reason for t in tl.trials)), "compute_by_reason": dict(by_reason),
            "replay_s": round(time.perf_counter() - t0, 2)}


def run_jobs(jobs: list[tuple], workers: int) -> list[dict]:
    from tqdm import tqdm

    if workers <= 1:
        return [replay_one(j) for j in tqdm(jobs, desc="replays", unit="search")]
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers) as pool:
        return list(tqdm(pool.imap(replay_one, jobs), total=len(jobs), desc="replays", unit="search"))


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="lcbench:TASK, model:TABLE or a recorded table's path")
    ap.add_argument("--noise", default=None, help="model:TABLE only: 0, 0.05, ... or measured (default)")
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--seed-offset", type=int, default=0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[2])
    ap.add_argument("--budget", type=float, default=100.0, help="compute per search, in full trials")
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    ap.add_argument("--variant", action="append", default=[], help="the default with one setting changed")
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/out/replay-<source>")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--reference-samples", type=int, default=None,
                    help="configurations sampled for the regret normaliser (default: 5000 LCBench, 20000 model)")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="an earlier out folder of the same source and budget: its replays are not run again")
    ap.add_argument("--fit-report", action="store_true",
                    help="model:TABLE: add the leave-one-config-out error of the model (refits it per config)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.seeds < 1 or args.seed_offset < 0 or args.budget <= 0 or min(args.concurrency) < 1:
        print("error: --seeds, --budget and --concurrency must be positive, --seed-offset >= 0", file=sys.stderr)
        return 2
    unknown = [s for s in args.strategies if s not in STRATEGIES + EXTRA]
    if unknown:
        print(f"error: unknown strategy {unknown[0]!r} (known: {', '.join(STRATEGIES + EXTRA)})", file=sys.stderr)
        return 2
    if args.reference_samples is not None and args.reference_samples < 2:
        print("error: --reference-samples must be >= 2 (the normaliser needs a worst and a best)", file=sys.stderr)
        return 2
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        print(f"error: --out {args.out}: exists and is not a folder", file=sys.stderr)
        return 2
    try:
        source = source_for(args.source, args.noise)
        kinds = [(s, None) for s in args.strategies] + [parse_variant(v, source.max_t) for v in args.variant]
    except (SourceError, VariantError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seeds = range(args.seed_offset, args.seed_offset + args.seeds)
    jobs = [(args.source, args.noise, name, variant, c, seed, args.budget)
            for c in args.concurrency for seed in seeds for name, variant in kinds]
    try:
        done, reused_wall = reused(args, source.name)
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.time()
    todo = [j for j in jobs if (j[2], j[4], j[5]) not in done]
    runs = run_jobs(todo, args.workers) + [done[j[2], j[4], j[5]] for j in jobs if (j[2], j[4], j[5]) in done]
    out = args.out or ROOT / "benchmarks" / "out" / f"replay-{source.name}"
    wall = time.time() - t0
    # replay_wall_s: the time the evidence took, the reused replays' share (their folder's) included
    summary = write(out, source, args, runs, [k for k, _ in kinds], wall + reused_wall,
                    {"run": len(todo), "reused": len(jobs) - len(todo)})
    print(report_text(summary))
    print(f"\n{len(todo)} replays in {wall:.0f} s ({len(jobs) - len(todo)} reused) -> "
          f"{out / 'replay.json'}")
    return 0


def reused(args, name: str) -> tuple[dict, float]:
    """(strategy, concurrency, seed) -> replay record of `--reuse DIR` (same source, budget, noise),
    and the wall time those replays took."""
    if args.reuse is None:
        return {}, 0.0
    try:
        old = json.loads((args.reuse / "replay.json").read_text())
        runs = [json.loads(ln) for ln in (args.reuse / "runs.jsonl").read_text().splitlines() if ln.strip()]
    except (OSError, ValueError) as exc:
        raise SourceError(f"--reuse {args.reuse}: not a replay folder ({exc})") from None
    if (old.get("source"), old.get("budget"), old.get("noise")) != (name, args.budget, args.noise):
        raise SourceError(f"--reuse {args.reuse}: replays of {old.get('source')}, budget {old.get('budget')}, "
                          f"noise {old.get('noise')}; this run is {name}, budget {args.budget}, noise {args.noise}")
    return {(r["strategy"], r["concurrency"], r["seed"]): r for r in runs}, float(old.get("replay_wall_s") or 0.0)


def write(out: Path, source, args, runs: list[dict], names: list[str], wall: float, replays: dict | None = None) -> dict:
    import numpy as np

    from benchmarks.replay.analysis import health_summary, plot, summarise
    from refdet.io import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    sign = 1 if source.mode == "max" else -1
    reference = source.reference(np.random.default_rng(12345), *([args.reference_samples] if args.reference_samples else []))
    summary = {"source": source.name, "metric": source.metric, "mode": source.mode, "max_t": source.max_t,
               "full_trial_s": source.full_trial_s, "budget": args.budget, "noise": args.noise,
               "seeds": [args.seed_offset, args.seed_offset + args.seeds - 1], "replay_wall_s": round(wall, 1),
               "replays": replays or {"run": len(runs), "reused": 0},
               "replay_s_median": {n: float(np.median([r["replay_s"] for r in runs if r["strategy"] == n])) for n in names},
               "by_concurrency": {}}
    for c in args.concurrency:
        mine = [r for r in runs if r["concurrency"] == c]
        s = summarise(mine, reference, args.budget, sign, names)
        plot(s, out / f"replay-c{c}.png", f"{source.name}, concurrency {c}")
        s.pop("_curves")
        summary["by_concurrency"][str(c)] = s
    if source.has_health_stops:
        summary["health"] = health_summary(runs, reference, sign)
    if hasattr(source, "table") and source.__class__.__name__ == "RecordedSource":
        from benchmarks.replay.table_analysis import TIE_CANDIDATES, confirm_analysis, tie_analysis

        summary["ties"] = {sec: tie_analysis(source.table, list(range(1, source.max_t)), sec) for sec in TIE_CANDIDATES}
        summary["confirm"] = confirm_analysis(source.table)
    if hasattr(source, "loo"):
        summary["noise_level"] = source.level
        if args.fit_report:
            summary["model_fit"] = source.loo()
    atomic_write_text(out / "replay.json", json.dumps(summary, indent=1))
    atomic_write_text(out / "runs.jsonl", "".join(json.dumps(r) + "\n" for r in runs))
    return summary


def report_text(summary: dict) -> str:
    lines = [f"source {summary['source']} ({summary['metric']}, {summary['mode']}), budget {summary['budget']:g} "
             f"full trials, seeds {summary['seeds'][0]}-{summary['seeds'][1]}"]
    for c, s in summary["by_concurrency"].items():
        ref = s["reference"]
        lines += ["", f"concurrency {c}: reference worst {ref['worst']:.4g}, best {ref['best']:.4g}; "
                      f"random search's whole-budget quality {_f(s['target'])}",
                  f"{'strategy':<28} {'anytime rank [95 %]':>22} {'final regret [95 %]':>24} "
                  f"{'to target [95 %] reached':>30} {'s/search':>9} {'regret - default (paired; > 0 worse) [95 %]':>46}"]
        for name, e in s["strategies"].items():
            to = (f"{_f(e.get('to_target'))} [{_f(e['to_target_ci'][0])}, {_f(e['to_target_ci'][1])}] {e['reached']}"
                  if "to_target" in e else "n/a")
            lines.append(f"{name:<28} {e['anytime_rank']:>6.2f} [{e['anytime_rank_ci'][0]:.2f}, {e['anytime_rank_ci'][1]:.2f}]"
                         f"   {e['final_regret']:>8.4f} [{e['final_regret_ci'][0]:.4f}, {e['final_regret_ci'][1]:.4f}]"
                         f"   {to:>28} {summary['replay_s_median'].get(name, 0):>9.1f}"
                         + (f"   {e['regret_vs_default']:+20.4f} [{e['regret_vs_default_ci'][0]:+.4f}, "
                            f"{e['regret_vs_default_ci'][1]:+.4f}]" if "regret_vs_default" in e and name != "default" else ""))
        for k, g in s["goal"].items():
            verdict = ("PASS" if g["pass"] else "FAIL") + ("" if g.get("decides", True) else
                                                           ", undecided: random search itself passes")
            lines.append(f"  [{verdict}] {k}: {json.dumps({a: b for a, b in g.items() if a != 'pass'})}")
    for key, h in summary.get("health", {}).items():
        lines.append(f"health {key}: doomed {h['doomed_share']:.1%} of compute, memory-budget {h['memory_share']:.1%} "
                     f"({h['memory_stops']:.1f} stops), to the best {_f(h['to_best_compute'])} full trials "
                     f"({h['reached_best']}/{h['seeds']}), final regret median {h['final_regret']:.3f}, "
                     f"mean {h['final_regret_mean']:.3f}")
    return "\n".join(lines)


def _f(x) -> str:
    return "never" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))
