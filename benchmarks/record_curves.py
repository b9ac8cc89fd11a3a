"""Record learning curves once, so searches can be replayed against them (replay_search.py).

    python benchmarks/record_curves.py --space smoke --n 36 --seeds 3 --seeded 12
    python benchmarks/record_curves.py --space hazard --n 16
    python benchmarks/record_curves.py --space smoke --n 100 --seeds 4 --seeded 12 --extend   # add to a table

Runs `n` configurations of the space -- its initial points first, then a scrambled Sobol
design over the space (Optuna's QMCSampler: space-filling, log where the space is log) -- each
to max_t through the project's own trainable (Ray Tune, FIFO: no early stopping, every health
rule live). The first `seeded` configurations also run with `seeds - 1` more seeds (base seed
+1, +2, ...), so the replay can draw a seed per trial and measure seed noise. `--top K` extends
an existing table instead: its K best configurations get the missing seeds, so the values that
decide the benchmark (the best configurations') are means over seeds, not lucky single runs. Writes the table
described in benchmarks/replay/sources/table.py (default benchmarks/curves/<space>.jsonl) and prints how
long recording took. Ray's trial folders go to benchmarks/out/record/<space>-<time>. A Ctrl-C
writes nothing (exit 130): a run cut short is not a learning curve.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.replay.sources.table import CurveError, Run, read_table, write_table  # noqa: E402

SERIES = ("val/st_iou", "val/ap50", "val/recall", "val/loss", "val/fresh", "train/loss", "train/loss_bbox",
          "train/loss_cls", "train/loss_dfl", "train/loss_cpe", "health/grad_norm_pre_max", "health/mem_rss_gb")


def design(spec, n: int, seed: int) -> list[dict]:
    """The space's initial points, then a scrambled Sobol sequence over its distributions."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    points = [dict(p) for p in spec.initial_points][:n]
    study = optuna.create_study(sampler=optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed))
    dists = {k: p.distribution() for k, p in spec.params.items()}
    while len(points) < n:
        t = study.ask(dists)
        spec.trial_config(t.params)  # each must make a valid TrainConfig
        points.append(dict(t.params))
        study.tell(t, 0.0)
    return points


def existing_table(out: Path, option: str):
    """The table an option extends, or None after saying why it cannot be read."""
    try:
        return read_table(out)
    except CurveError as exc:
        print(f"error: {option}: {exc}", file=sys.stderr)
        return None


def record_trainable(config: dict, spec=None, runs=None, points=None) -> None:
    """One recorded run: configuration `runs[i][0]` with seed `runs[i][1]`, to max_t."""
    from tune.trainable import confirm_trainable

    config_index, seed = runs[config["run"]]
    confirm_trainable({"candidate": config_index, "seed": seed}, spec=spec, candidates=points)


def run_record(spec, points: list[dict], runs: list[tuple[int, int]], storage: Path, name: str):
    from ray import tune

    from tune.session import ray_session, run_config

    with ray_session(None):
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(record_trainable, spec=spec, runs=runs, points=points),
                                {"cpu": spec.cpu, "gpu": spec.gpu}),
            param_space={"run": tune.grid_search(list(range(len(runs))))},
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent, reuse_actors=True),
            run_config=run_config(name, str(storage), callbacks=[], keep=1, max_failures=1,
                                  reporter=tune.CLIReporter(metric_columns={"training_iteration": "epoch",
                                                                            spec.metric: "metric"},
                                                            max_report_frequency=60)),
        )
        return tuner.fit()


def to_runs(grid, spec, points: list[dict], runs: list[tuple[int, int]]) -> list[Run]:
    from tune.results import read_results

    out = []
    for res in grid:
        config_index, seed = runs[res.config["run"]]
        rows = read_results(Path(res.path) / "result.json")
        series = {"time_s": [float(r.get("time_this_iter_s", 0.0)) for r in rows]}
        for k in SERIES:
            series[k] = [float(r.get(k, float("nan"))) if isinstance(r.get(k), (int, float)) else float("nan")
                         for r in rows]
        stop = None
        if rows and rows[-1].get("health/fatal"):
            last = rows[-1]
            stop = {"reason": str(last.get("health/stop_reason")), "rule": str(last.get("health/rule")),
                    "step": int(last.get("health/step", 0))}
        error = str(res.error).splitlines()[0][:200] if res.error else None
        out.append(Run(config_index, seed, points[config_index], series, stop, error))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", required=True)
    ap.add_argument("--n", type=int, default=32, help="configurations (initial points first)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per seeded configuration")
    ap.add_argument("--seeded", type=int, default=8, help="how many configurations (the first) get --seeds seeds")
    ap.add_argument("--top", type=int, default=0,
                    help="extend the existing table instead: give its K best configurations --seeds seeds")
    ap.add_argument("--extend", action="store_true",
                    help="add to the existing table the runs --n/--seeds/--seeded ask for that it lacks")
    ap.add_argument("--design-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/curves/<space>.jsonl")
    ap.add_argument("--storage", type=Path, default=ROOT / "benchmarks" / "out" / "record")
    args = ap.parse_args(argv)

    from refdet.data.synthetic import ensure_dataset
    from tune.space import SpaceError, load_space

    if args.n < 1 or args.seeds < 1 or args.seeded < 0 or args.top < 0 or (args.top and args.extend):
        print("error: --n and --seeds must be >= 1, --seeded and --top >= 0; --top and --extend exclude each other",
              file=sys.stderr)
        return 2
    try:
        spec = load_space(args.space)
    except SpaceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or ROOT / "benchmarks" / "curves" / f"{spec.name}.jsonl"
    base_seed = spec.base.seed
    if args.top:
        table = existing_table(out, "--top extends a table")
        if table is None:
            return 2
        groups = table.configs()
        points = [groups[c][0].params for c in sorted(groups)]
        ranked = sorted(groups, key=lambda c: -table.sign * table.config_value(c))[: args.top]
        have = {(r.config, r.seed) for r in table.runs}
        runs = [(c, base_seed + s) for c in ranked for s in range(args.seeds) if (c, base_seed + s) not in have]
        header, previous = table.header, table.runs
    else:
        points = design(spec, args.n, args.design_seed)
        runs = [(i, base_seed) for i in range(len(points))]
        runs += [(i, base_seed + s) for i in range(min(args.seeded, len(points))) for s in range(1, args.seeds)]
        header, previous = table_header(spec, args, base_seed), []
        if args.extend:  # record only what the table lacks (the design is deterministic: same first points)
            table = existing_table(out, "--extend")
            if table is None:
                return 2
            groups = table.configs()
            if any(c >= len(points) or groups[c][0].params != points[c] for c in groups):
                print(f"error: --extend: {out} was not recorded with this space and --design-seed", file=sys.stderr)
                return 2
            have = {(r.config, r.seed) for r in table.runs}
            runs = [r for r in runs if r not in have]
            header, previous = table.header, table.runs
            header["recorded"] = dict(header["recorded"], configs=max(args.n, int(header["recorded"]["configs"])))
    if spec.base.data.synthetic:
        ensure_dataset(spec.base.data)
    name = f"{spec.name}-{time.strftime('%m%d-%H%M%S')}"
    print(f"recording {len(runs)} runs of {spec.max_t} epochs ({len({c for c, _ in runs})} configurations), "
          f"{spec.max_concurrent} at a time -> {args.storage / name}")
    t0 = time.time()
    grid = run_record(spec, points, runs, args.storage, name) if runs else []
    wall = time.time() - t0
    from tune.session import ran_to_the_end  # imports Ray, like run_record

    if len(grid) < len(runs) or not all(ran_to_the_end(res, spec.max_t) for res in grid):
        ended = sum(ran_to_the_end(res, spec.max_t) for res in grid)
        print(f"interrupted: {ended} of {len(runs)} runs ended; nothing written to {out} "
              f"(Ray's trial folders: {args.storage / name})", file=sys.stderr)
        return 130
    recorded = to_runs(grid, spec, points, runs)
    rec = dict(header.get("recorded", {}))
    rec["wall_s"] = round(float(rec.get("wall_s", 0.0)) + wall, 1)
    rec["runs"] = len(previous) + len(recorded)
    rec["seeds"] = seeds_summary(previous + recorded)
    if args.top or args.extend:
        what = f"seeds for the top {args.top}" if args.top else f"--n {args.n} --seeds {args.seeds} --seeded {args.seeded}"
        rec["extended"] = (rec.get("extended", "") + f"; {time.strftime('%Y-%m-%d')}: {what} "
                           f"({len(recorded)} runs, {wall:.0f} s)").lstrip("; ")
    write_table(out, {k: v for k, v in header.items() if k not in ("table", "version")} | {"recorded": rec},
                previous + recorded)
    stops = sum(r.stop is not None for r in recorded)
    errors = sum(r.error is not None for r in recorded)
    print(f"recorded {len(recorded)} runs in {wall:.0f} s ({wall / 60:.1f} min): {stops} health-stopped, "
          f"{errors} errored -> {out}")
    return 0


def seeds_summary(runs: list[Run]) -> str:
    """What the table holds, counted from its runs (an --extend or --top changes it):
    "seeds 0-3 for 12 configurations, 0-2 for 18 configurations, 0 for 70 configurations"."""
    by_config: dict[int, set[int]] = {}
    for r in runs:
        by_config.setdefault(r.config, set()).add(r.seed)
    kinds: dict[str, int] = {}
    for seeds in by_config.values():
        lo, hi = min(seeds), max(seeds)
        label = (f"{lo}-{hi}" if hi > lo else f"{lo}") if len(seeds) == hi - lo + 1 else ",".join(map(str, sorted(seeds)))
        kinds[label] = kinds.get(label, 0) + 1
    parts = sorted(kinds.items(), key=lambda kv: (-len(kv[0]), kv[0]))
    return "seeds " + ", ".join(f"{label} for {n} configuration{'s' if n != 1 else ''}" for label, n in parts)


def table_header(spec, args, base_seed: int) -> dict:
    return {"space": spec.name, "space_file": str(spec.path.relative_to(ROOT)) if spec.path.is_relative_to(ROOT)
            else str(spec.path), "metric": spec.metric, "mode": spec.mode, "max_t": spec.max_t,
            "penalty": spec.penalty,
            "params": {k: {"type": p.type, "low": p.low, "high": p.high, "log": p.log or p.type == "loguniform",
                           "values": list(p.values)} for k, p in spec.params.items()},
            "recorded": {"date": time.strftime("%Y-%m-%d"), "wall_s": 0.0, "runs": 0,
                         "configs": args.n, "concurrency": spec.max_concurrent, "cpu_per_trial": spec.cpu,
                         "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                         "design": f"initial points + scrambled Sobol (seed {args.design_seed})",
                         "seeds": f"{base_seed} for all" + (f"; +1..+{args.seeds - 1} for configs 0..{args.seeded - 1}"
                                                            if args.seeds > 1 and args.seeded else "")}}


if __name__ == "__main__":
    sys.exit(main())
