"""A recorded curve table as a source: a proposal is answered by the recorded configuration
nearest to it in normalised coordinates (log where the space is log; table.Nearest), and a
trial draws one of that configuration's recorded seeds. Health stops and crashes replay as
recorded. The true value of a configuration is the mean over its seeds of each run's best
value (a health-stopped seed scores the penalty). Only as many distinct configurations as were
recorded exist: on a small table a search chooses among that many noisy arms.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.replay.sources import Curve, SourceError
from benchmarks.replay.sources.table import CurveTable, Nearest

ROOT = Path(__file__).resolve().parents[3]


def table_spec(table: CurveTable, budget: float, concurrency: int, seed: int):
    """The table's search space (the space file it was recorded from) as a SearchSpec for one
    replay: num_samples = the budget in full trials (it sets TPE's random start), the replay's
    concurrency and seed. The space file must still match what was recorded."""
    from tune.space import SpaceError, load_space

    try:
        spec = load_space(str(ROOT / table.header["space_file"]))
    except (KeyError, SpaceError) as exc:
        raise SourceError(f"{table.path}: its space file: {exc}") from None
    if spec.max_t != table.max_t or spec.metric != table.metric or set(spec.params) != set(table.header["params"]):
        raise SourceError(f"{table.path}: recorded for max_t {table.max_t}, {table.metric}, "
                          f"{sorted(table.header['params'])}; {spec.path} now differs")
    return replace(spec, num_samples=max(1, int(round(budget))), max_concurrent=concurrency, seed=seed)


def full_trial_s(table: CurveTable) -> float:
    """The median wall time of a recorded run that reached max_t (of all runs if none did)."""
    done = [sum(r.series["time_s"]) for r in table.runs if r.epochs == table.max_t and r.stop is None]
    return statistics.median(done) if done else statistics.median(sum(r.series["time_s"]) for r in table.runs)


class RecordedSource:
    def __init__(self, table: CurveTable):
        self.table = table
        self.name = str(table.header.get("space", Path(table.path).stem))
        self.metric, self.max_t, self.penalty = table.metric, table.max_t, table.penalty
        self.mode = table.header["mode"]
        self.full_trial_s = full_trial_s(table)
        self.nearest = Nearest(table)
        self.groups = table.configs()
        self.has_health_stops = any(r.stop is not None for r in table.runs)

    def spec(self, budget: float, concurrency: int, seed: int):
        return table_spec(self.table, budget, concurrency, seed)

    def draw(self, params: dict, rng: np.random.Generator) -> Curve:
        c = self.nearest(params)
        runs = self.groups[c]
        run = runs[int(rng.integers(len(runs)))]
        return Curve(run.series, run.stop, run.error, key=(c, run.seed))

    def true_value(self, params: dict) -> float:
        return self.table.config_value(self.nearest(params))

    def reference(self, rng: np.random.Generator | None = None, n: int | None = None) -> tuple[float, float]:
        """(worst, best) recorded configuration means: the table's own range."""
        values = [self.table.config_value(c) for c in self.groups]
        lo, hi = min(values), max(values)
        return (lo, hi) if self.table.sign > 0 else (hi, lo)
