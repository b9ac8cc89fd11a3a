"""--confirm-top K --seeds S: re-run the K best configurations of a search with S new seeds
at the search budget (max_t epochs, no early stopping), so the exported configuration is not
a lucky seed. Results: results/<name>/confirm/ (Ray trials) and confirm.json (per config:
the values of each seed, mean, std); the report then picks the best config by mean.

Ctrl-C safe: an interrupted confirmation writes no confirm.json (no mean of half-run seeds);
the same command continues it from the trials' checkpoints (confirm/plan.json says what was
being confirmed). A finished one with the same configs and seeds is not run again.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

from ray import tune

from refdet.io import atomic_write_text
from tune.console import confirm_console, trial_dirname
from tune.output import say
from tune.ranking import choose, rank_key
from tune.results import ReportError, collect_trials, read_confirm, read_results, run_value
from tune.session import ran_to_the_end, ray_session, run_config
from tune.tb import TrialTensorBoard
from tune.trainable import confirm_trainable

SEED_BASE = 1000  # confirmation seeds: 1000, 1001, ... (searches use small seeds)


def confirm_top(exp: Path, spec, k: int, seeds: int, address: str | None = None) -> list[dict] | None:
    """The confirmation table (also written to confirm.json), or None if interrupted."""
    every = collect_trials(exp, spec)
    rows = [r for r in every if r.best is not None and r.reason in ("completed", "asha")]
    top = sorted(rows, key=rank_key(spec))[:k]
    plan = {"trials": [r.trial_id for r in top], "seeds": [SEED_BASE + i for i in range(seeds)], "max_t": spec.max_t}
    if choose(every, spec).unresolved:  # re-running K of many equals would choose among them by luck
        print("confirm: skipped; the best trials tie and nothing separates them (see below)")
        atomic_write_text(exp / "confirm.json", json.dumps({"plan": plan, "configs": []}, indent=2))
        return []
    if not top:
        print("confirm: no healthy trial to confirm")
        atomic_write_text(exp / "confirm.json", json.dumps({"plan": plan, "configs": []}, indent=2))
        return []
    done = _finished(exp, plan)
    if done is not None:
        print(f"confirm: {exp / 'confirm.json'} already holds these {len(top)} configs x {seeds} seeds")
        return done
    candidates = [r.params for r in top]
    folder = exp / "confirm"
    with ray_session(address, log=exp / "driver.log"):
        trainable = tune.with_resources(tune.with_parameters(confirm_trainable, spec=spec, candidates=candidates),
                                        {"cpu": spec.cpu, "gpu": spec.gpu})
        if _read_json(folder / "plan.json") == plan and (folder / "tuner.pkl").is_file():
            say(f"confirm: continuing the interrupted confirmation in {folder}")
            tuner = tune.Tuner.restore(str(folder), trainable)  # a re-run that raised for good stays failed
        else:
            shutil.rmtree(folder, ignore_errors=True)  # another plan's trials: not this confirmation's
            folder.mkdir(parents=True)
            atomic_write_text(folder / "plan.json", json.dumps(plan))
            tuner = tune.Tuner(
                trainable,
                param_space={"candidate": tune.grid_search(list(range(len(candidates)))),
                             "seed": tune.grid_search(plan["seeds"])},
                tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent, reuse_actors=True,
                                            trial_dirname_creator=trial_dirname),
                run_config=run_config("confirm", str(exp),
                                      callbacks=[TrialTensorBoard(["candidate", "seed"], max_t=spec.max_t)],
                                      console=confirm_console(spec, plan["trials"], seeds, folder)),
            )
        grid = tuner.fit()
    if len(grid) < len(candidates) * seeds or not all(ran_to_the_end(res, spec.max_t) for res in grid):
        return None  # Tune caught a Ctrl-C and returned early
    out = _table(grid, top, spec)
    atomic_write_text(exp / "confirm.json", json.dumps({"plan": plan, "configs": out}, indent=2))
    failed = sum(c["failed"] for c in out)
    if failed:
        print(f"confirm: {failed} of {len(grid)} re-runs raised (not counted in the means); see {folder}")
    return out


def _table(grid, top, spec) -> list[dict]:
    """Per config: each finished seed's value (its best measured value; a seed that a health
    rule stopped scores the penalty, whatever it measured before, and its stop reason is
    listed in `health_stops`); re-runs that raised are counted in `failed`, never averaged in."""
    values: dict[int, list[float]] = {i: [] for i in range(len(top))}
    stops: dict[int, list[str]] = {i: [] for i in range(len(top))}
    failed = dict.fromkeys(values, 0)
    for res in grid:
        cand = res.config["candidate"]
        value, stop = run_value(read_results(Path(res.path) / "result.json"), spec) if not res.error else (None, None)
        if value is None:
            failed[cand] += 1
            continue
        values[cand].append(value)
        if stop is not None:
            stops[cand].append(stop)
    return [{"source_trial": r.trial_id, "params": r.params, "search_value": r.best, "values": values[i],
             "mean": statistics.fmean(values[i]) if values[i] else math.nan,
             "std": statistics.pstdev(values[i]) if len(values[i]) > 1 else 0.0, "failed": failed[i],
             "health_stops": stops[i]}
            for i, r in enumerate(top)]


def _finished(exp: Path, plan: dict) -> list[dict] | None:
    try:
        saved_plan, configs = read_confirm(exp)
    except ReportError:  # unreadable: this confirmation rewrites it
        return None
    return configs if saved_plan == plan else None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
