"""Replays a search against a recorded curve table on a simulated clock: the project's own
searcher, scheduler and state-telling make every decision; the table answers the training.

The event loop calls the searcher and scheduler in the order Ray Tune 2.60's TuneController
does (read from ray/tune/execution/tune_controller.py):

  a reported epoch    decision = scheduler.on_trial_result(result)
                      STOP     -> scheduler.on_trial_complete(result), searcher.on_trial_complete(result)
                                  (the searcher never sees this result in on_trial_result)
                      CONTINUE -> searcher.on_trial_result(result); the next epoch starts
  trainable returns   (after its last report: max_t, or a fatal report the scheduler let
                      through) -> scheduler.on_trial_complete, searcher.on_trial_complete
  trial raises        scheduler.on_trial_error, searcher.on_trial_complete(error=True)
  a free slot         searcher.suggest(trial_id); scheduler.on_trial_add

A proposed configuration is answered by the recorded configuration nearest to it in
normalised coordinates (log where the space is log; benchmarks/curves.py:Nearest); where that
configuration was recorded with several seeds, each trial draws one of them. An epoch's
simulated duration is its recorded wall time. Compute is the sum of epoch times run (worker-
seconds); the clock advances with `concurrency` trials in flight.

The incumbent after each finished trial is the trial the project's report would export
(tune.results.best_row: best-over-epochs value among trials that completed or ASHA stopped);
its *full-budget value* is the table's value for its configuration (the mean over the recorded
seeds of each run's best-over-epochs value; a health-stopped seed scores the penalty).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
from ray.tune.schedulers import TrialScheduler

from benchmarks.curves import CurveTable, Nearest, Run
from tune.results import TrialRow, best_row


@dataclass
class Finished:
    """One trial as the replay saw it end."""

    trial_id: str
    config: int
    seed: int
    epochs: int
    reason: str  # completed | asha | <health stop reason> | error
    best: float | None  # best fresh, healthy metric value it reported
    compute_s: float  # compute spent by the whole search when it finished
    own_s: float = 0.0  # compute this trial used


@dataclass
class Timeline:
    """Incumbent after each finished trial: (compute_s, wall_s, full-budget value, search value)."""

    points: list[tuple[float, float, float, float]] = field(default_factory=list)
    trials: list[Finished] = field(default_factory=list)
    compute_s: float = 0.0
    wall_s: float = 0.0

    def value_at(self, compute_s: float, before: float) -> float:
        """The incumbent's full-budget value once `compute_s` was spent (`before` until the
        first trial finished)."""
        v = before
        for c, _, full, _ in self.points:
            if c > compute_s:
                break
            v = full
        return v


def result_at(table: CurveTable, run: Run, epoch: int) -> dict:
    """The report of `run` at `epoch` (1-based), as the trainable sends it to Tune."""
    res = {k: v[epoch - 1] for k, v in run.series.items()}
    res.update(training_iteration=epoch, time_this_iter_s=run.series["time_s"][epoch - 1])
    res.setdefault("val/fresh", 1.0)
    if run.stop is not None and epoch == run.epochs:
        res.update({"health/fatal": 1.0, "health/stop_reason": run.stop["reason"], "health/rule": run.stop["rule"],
                    "health/step": float(run.stop["step"]), table.metric: table.penalty})
    else:
        res["health/fatal"] = 0.0
    return res


class Replay:
    """One search: `searcher` and `scheduler` as a strategy built them, `concurrency` trials at
    a time, until `budget_s` of compute is spent or `max_trials` trials ran. `health_as_error`: a health stop raises in
    the trainable instead of reporting (the stock integration's view of a failed trial)."""

    def __init__(self, table: CurveTable, searcher, scheduler, concurrency: int, budget_s: float, seed: int,
                 health_as_error: bool = False, nearest: Nearest | None = None, max_trials: int | None = None):
        self.table, self.searcher, self.scheduler = table, searcher, scheduler
        self.concurrency, self.budget_s, self.max_trials = concurrency, budget_s, max_trials
        self.rng = random.Random(seed)
        self.health_as_error = health_as_error
        self.nearest = nearest or Nearest(table)
        self.groups = table.configs()
        self.metric, self.sign, self.max_t = table.metric, table.sign, table.max_t

    def run(self, spec) -> Timeline:
        tl = Timeline()
        queue: list[tuple[float, int, str]] = []
        live: dict[str, SimpleNamespace] = {}
        rows: list[TrialRow] = []
        n = 0

        def fill():
            nonlocal n
            while (len(live) < self.concurrency and tl.compute_s < self.budget_s
                   and (self.max_trials is None or n < self.max_trials)):
                tid = f"sim_{n:05d}"
                config = self.searcher.suggest(tid)
                if config is None or config == "FINISHED":
                    return
                n += 1
                params = {k: config[k] for k in self.table.header["params"]}
                c = self.nearest(params)
                run = self.rng.choice(self.groups[c])
                t = SimpleNamespace(trial_id=tid, config=c, run=run, params=params, epoch=0, values=[])
                live[tid] = t
                self.scheduler.on_trial_add(None, t)
                self._next(queue, t, tl.wall_s)

        def finish(t, reason: str):
            live.pop(t.trial_id)
            best = None
            if t.values and reason in ("completed", "asha"):
                best = float(max(t.values) if self.sign > 0 else min(t.values))
            tl.trials.append(Finished(t.trial_id, t.config, t.run.seed, t.epoch, reason, best, tl.compute_s,
                                      sum(t.run.series["time_s"][: t.epoch])))
            row = TrialRow(t.trial_id, t.params)
            row.best, row.reason, row.epochs = best, reason, t.epoch
            row.config = t.config
            rows.append(row)
            inc = best_row(rows, spec)
            if inc is not None:
                tl.points.append((tl.compute_s, tl.wall_s, self.table.config_value(inc.config), inc.best))

        fill()
        while queue and tl.compute_s < self.budget_s:
            now, _, tid = heapq.heappop(queue)
            t = live[tid]
            tl.wall_s = now
            if t.run.epochs == 0:  # raised before its first report
                self._error(t, finish)
                fill()
                continue
            t.epoch += 1
            tl.compute_s += t.run.series["time_s"][t.epoch - 1]
            res = result_at(self.table, t.run, t.epoch)
            fatal = bool(res["health/fatal"])
            if fatal and self.health_as_error:
                self._error(t, finish)
                fill()
                continue
            if not fatal and res.get("val/fresh", 1.0):
                t.values.append(res[self.metric])
            decision = self.scheduler.on_trial_result(None, t, res)
            if decision == TrialScheduler.STOP:
                self.scheduler.on_trial_complete(None, t, res)
                self.searcher.on_trial_complete(tid, result=res)
                finish(t, self._reason(t, res))
            else:
                self.searcher.on_trial_result(tid, res)
                if t.epoch < t.run.epochs:
                    self._next(queue, t, now)
                elif t.run.error is not None:
                    self._error(t, finish)
                else:  # the trainable returned: Tune's duplicate last result is a STOP
                    self.scheduler.on_trial_complete(None, t, res)
                    self.searcher.on_trial_complete(tid, result=res)
                    finish(t, self._reason(t, res))
            fill()
        return tl

    def _reason(self, t, res: dict) -> str:
        if res["health/fatal"]:
            return str(res["health/stop_reason"])
        return "completed" if t.epoch >= self.max_t else "asha"

    def _next(self, queue, t, now: float) -> None:
        dt = t.run.series["time_s"][t.epoch] if t.run.epochs > t.epoch else 0.0
        heapq.heappush(queue, (now + dt, int(t.trial_id[4:]), t.trial_id))

    def _error(self, t, finish) -> None:
        self.scheduler.on_trial_error(None, t)
        self.searcher.on_trial_complete(t.trial_id, error=True)
        finish(t, "error")


def seed_everything(seed: int) -> None:
    """Ray's ASHA draws its bracket from NumPy's global generator."""
    np.random.seed(seed)
