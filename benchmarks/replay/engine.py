"""Replays a search against a curve source on a simulated clock: a strategy's searcher and
scheduler (the project's own, for the default) make every decision; the source answers the
training.

The loop is a small TuneController: it calls the searcher and scheduler in the order Ray Tune
2.60's controller does (ray/tune/execution/tune_controller.py):

  a reported epoch    decision = scheduler.on_trial_result(controller, trial, result)
                      STOP     -> scheduler.on_trial_complete, searcher.on_trial_complete(result)
                                  (the searcher never sees this result in on_trial_result)
                      CONTINUE -> searcher.on_trial_result(result); the next epoch starts
                      PAUSE    -> searcher.on_trial_result(result); the trial leaves its slot
                                  (HyperBand) until scheduler.choose_trial_to_run picks it again
  trainable returns   (after its last report: max_t, or a fatal report the scheduler let
                      through) -> scheduler.on_trial_complete, searcher.on_trial_complete
  trial raises        scheduler.on_trial_error, searcher.on_trial_complete(error=True)
  controller.stop_trial (a scheduler stopping a PAUSED or PENDING trial) ->
                      scheduler.on_trial_remove, searcher.on_trial_complete(trial_id)
  new trials          searcher.suggest -> PENDING, scheduler.on_trial_add; with a concurrency
                      limit (Tune's max_concurrent_trials) at most `concurrency` live trials,
                      otherwise (a variant generator) up to `max_pending` PENDING ones
  a free slot         scheduler.choose_trial_to_run(controller) -> RUNNING

Compute is the sum of the epoch times run (worker-seconds); the clock runs with `concurrency`
slots. The incumbent after each finished trial is the trial the project's report would export
(tune.results.best_row: the best-over-epochs value among trials that completed or were stopped
early); its true value is the source's (the mean over seeds, at full budget).
"""

from __future__ import annotations

import heapq
import warnings
from dataclasses import dataclass, field

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from tune.results import TrialRow, best_row

# Stopped before max_t by a scheduler (ASHA, HyperBand, the pruner): the report's "asha".
EARLY = "asha"


@dataclass
class Finished:
    """One trial as the replay saw it end."""

    trial_id: str
    params: dict
    key: tuple | None  # the source's tag of what it trained on (recorded config, seed)
    epochs: int
    reason: str  # completed | asha | <health stop reason> | error
    best: float | None  # best fresh, healthy metric value it reported
    compute_s: float  # compute spent by the whole search when it finished
    own_s: float = 0.0  # compute this trial used
    stop_step: int | None = None  # the step of a health stop


@dataclass
class Timeline:
    """Incumbent after each finished trial: (compute_s, wall_s, true value, search value)."""

    points: list[tuple[float, float, float, float]] = field(default_factory=list)
    trials: list[Finished] = field(default_factory=list)
    compute_s: float = 0.0
    wall_s: float = 0.0
    pauses: int = 0  # PAUSE decisions honoured (HyperBand)
    export: dict | None = None  # {"params", "true", "confirmed", "compute_s"}


class SimTrial:
    """What Tune's schedulers read of a trial: its id, status and config (hashable by identity,
    as HyperBand keys its brackets by trial)."""

    def __init__(self, trial_id: str, params: dict, curve):
        self.trial_id, self.params, self.config, self.curve = trial_id, params, params, curve
        self.status = Trial.PENDING
        self.is_saving = False
        self.epoch, self.values, self.own_s = 0, [], 0.0
        self.last_result: dict = {}

    def __repr__(self) -> str:
        return self.trial_id


class Replay:
    """One search on `source`: `searcher` and `scheduler` as a strategy built them,
    `concurrency` slots, until `budget_s` of compute is spent or `max_trials` trials ran.
    `health_as_error`: a health stop raises in the trainable instead of reporting (told FAIL, as
    a crash). `max_pending`: None = a concurrency-limited searcher; N = a variant generator that
    keeps N trials PENDING (Tune's default for random sampling)."""

    def __init__(self, source, searcher, scheduler, concurrency: int, budget_s: float, seed: int,
                 health_as_error: bool = False, max_trials: int | None = None, max_pending: int | None = None):
        self.source, self.searcher, self.scheduler = source, searcher, scheduler
        self.concurrency, self.budget_s, self.max_trials, self.max_pending = concurrency, budget_s, max_trials, max_pending
        self.rng = np.random.default_rng(seed)
        self.health_as_error = health_as_error
        self.sign = 1 if source.mode == "max" else -1
        self.trials: list[SimTrial] = []
        self.live: list[SimTrial] = []  # PENDING, RUNNING or PAUSED, in creation order
        self.by_id: dict[str, SimTrial] = {}
        self.queue: list[tuple[float, int, str]] = []
        self.tl = Timeline()
        self.spec = None
        self._inc: TrialRow | None = None
        self._inc_true: float | None = None

    # -- what schedulers call on the controller ------------------------------------------------

    def get_trials(self) -> list[SimTrial]:
        """The live trials (Tune's lists every trial; schedulers pick only PENDING or PAUSED ones)."""
        return list(self.live)

    def stop_trial(self, t: SimTrial) -> None:
        if t.status in (Trial.PENDING, Trial.PAUSED):
            self.scheduler.on_trial_remove(self, t)
            self.searcher.on_trial_complete(t.trial_id)
            self._finish(t, self._reason(t, t.last_result) if t.epoch else EARLY)
        elif t.status == Trial.RUNNING:
            self.scheduler.on_trial_complete(self, t, t.last_result)
            self.searcher.on_trial_complete(t.trial_id, result=t.last_result)
            self._finish(t, self._reason(t, t.last_result))

    # -- the loop ------------------------------------------------------------------------------

    def run(self, spec) -> Timeline:
        self.spec = spec
        with warnings.catch_warnings():
            # the pruner strategy reports a rung's value before the searcher does; Optuna keeps the first
            warnings.filterwarnings("ignore", message=".*is already reported.*")
            self._fill()
            while self.queue and self.tl.compute_s < self.budget_s:
                now, _, tid = heapq.heappop(self.queue)
                t = self.by_id[tid]
                if t.status != Trial.RUNNING:
                    continue  # stopped by a scheduler while its epoch was under way
                self.tl.wall_s = now
                self._step(t, now)
                self._fill()
        return self.tl

    def _fill(self) -> None:
        while self._can_create():
            tid = f"sim_{len(self.trials):05d}"
            config = self.searcher.suggest(tid)
            if config is None or config == "FINISHED":
                break
            params = {k: config[k] for k in self.spec.params}
            t = SimTrial(tid, params, self.source.draw(params, self.rng))
            self.trials.append(t)
            self.live.append(t)
            self.by_id[tid] = t
            self.scheduler.on_trial_add(self, t)
        running = sum(t.status == Trial.RUNNING for t in self.live)
        while running < self.concurrency and self.tl.compute_s < self.budget_s:
            t = self.scheduler.choose_trial_to_run(self)
            if t is None:
                break
            t.status = Trial.RUNNING
            running += 1
            self._schedule(t, self.tl.wall_s)

    def _can_create(self) -> bool:
        if self.tl.compute_s >= self.budget_s or (self.max_trials is not None and len(self.trials) >= self.max_trials):
            return False
        if self.max_pending is None:
            return len(self.live) < self.concurrency
        return sum(t.status == Trial.PENDING for t in self.live) < self.max_pending

    def _schedule(self, t: SimTrial, now: float) -> None:
        c = t.curve
        dt = c.at(t.epoch + 1)["time_s"] if c.epochs > t.epoch else 0.0
        heapq.heappush(self.queue, (now + dt, int(t.trial_id[4:]), t.trial_id))

    def _step(self, t: SimTrial, now: float) -> None:
        c = t.curve
        if c.epochs == 0:  # raised before its first report
            return self._error(t)
        t.epoch += 1
        res = self._result(t)
        self.tl.compute_s += res["time_this_iter_s"]
        t.own_s += res["time_this_iter_s"]
        t.last_result = res
        fatal = bool(res["health/fatal"])
        if fatal and self.health_as_error:  # told FAIL; still counted as the health stop it was
            return self._error(t, str(res["health/stop_reason"]))
        if not fatal and res.get("val/fresh", 1.0):
            t.values.append(res[self.source.metric])
        decision = self.scheduler.on_trial_result(self, t, res)
        if decision == TrialScheduler.STOP:
            self.scheduler.on_trial_complete(self, t, res)
            self.searcher.on_trial_complete(t.trial_id, result=res)
            return self._finish(t, self._reason(t, res))
        self.searcher.on_trial_result(t.trial_id, res)
        if t.epoch >= c.epochs:  # the trainable returned (or raised) after this report
            if c.error is not None:
                return self._error(t)
            self.scheduler.on_trial_complete(self, t, res)
            self.searcher.on_trial_complete(t.trial_id, result=res)
            return self._finish(t, self._reason(t, res))
        if decision == TrialScheduler.PAUSE:
            t.status = Trial.PAUSED
            self.tl.pauses += 1
        else:
            self._schedule(t, now)

    def _result(self, t: SimTrial) -> dict:
        """The report of the trial's run at its current epoch, as the trainable sends it."""
        c, e = t.curve, t.epoch
        res = dict(c.at(e))
        res.update(training_iteration=e, time_this_iter_s=res.pop("time_s"))
        res.setdefault("val/fresh", 1.0)
        if c.stop is not None and e == c.epochs:
            res.update({"health/fatal": 1.0, "health/stop_reason": c.stop["reason"], "health/rule": c.stop["rule"],
                        "health/step": float(c.stop["step"]), self.source.metric: self.source.penalty})
        else:
            res["health/fatal"] = 0.0
        return res

    def _reason(self, t: SimTrial, res: dict) -> str:
        if res.get("health/fatal"):
            return str(res["health/stop_reason"])
        return "completed" if t.epoch >= self.source.max_t else EARLY

    def _error(self, t: SimTrial, reason: str = "error") -> None:
        self.scheduler.on_trial_error(self, t)
        self.searcher.on_trial_complete(t.trial_id, error=True)
        self._finish(t, reason)

    def _finish(self, t: SimTrial, reason: str) -> None:
        t.status = Trial.ERROR if reason == "error" else Trial.TERMINATED
        self.live.remove(t)
        best = None
        if t.values and reason in ("completed", EARLY):
            best = float(max(t.values) if self.sign > 0 else min(t.values))
        stop = t.curve.stop if reason not in ("completed", EARLY, "error") else None
        self.tl.trials.append(Finished(t.trial_id, t.params, t.curve.key, t.epoch, reason, best, self.tl.compute_s,
                                       t.own_s, stop.get("step") if stop else None))
        row = TrialRow(t.trial_id, t.params)
        row.best, row.reason, row.epochs = best, reason, t.epoch
        inc = best_row([r for r in (self._inc, row) if r is not None], self.spec)
        if inc is not None and inc is not self._inc:
            self._inc, self._inc_true = inc, self.source.true_value(inc.params)
        if self._inc is not None:
            self.tl.points.append((self.tl.compute_s, self.tl.wall_s, self._inc_true, self._inc.best))


    def export(self, confirm: tuple[int, int] = (0, 0)) -> dict | None:
        """The configuration the search exports, scored by its true value. With `confirm` =
        (K, S) (tune/confirm.py): the K best healthy trials are re-run with S new seeds at full
        budget (their compute counted in the export's `compute_s`, beside the search's), and the
        best mean is exported; re-runs that crashed are not averaged in. Otherwise the incumbent."""
        k, seeds = confirm
        rows = [f for f in self.tl.trials if f.best is not None and f.reason in ("completed", EARLY)]
        if not rows:
            return None
        confirmed, spent = False, self.tl.compute_s
        pick = self._inc.params
        if k and seeds:
            means = []
            for f in sorted(rows, key=lambda f: -self.sign * f.best)[:k]:
                values = []
                for _ in range(seeds):
                    curve = self.source.draw(f.params, self.rng)
                    spent += sum(curve.at(e)["time_s"] for e in range(1, curve.epochs + 1))
                    if curve.error is None:
                        values.append(full_value(curve, self.source))
                if values:
                    means.append((self.sign * sum(values) / len(values), f.params))
            if means:
                pick, confirmed = max(means, key=lambda m: m[0])[1], True
        self.tl.export = {"params": pick, "true": self.source.true_value(pick), "confirmed": confirmed,
                          "compute_s": spent}
        return self.tl.export


def full_value(curve, source) -> float:
    """A run's value as confirm.py records it: its best fresh metric over the epochs; a
    health-stopped run scores the penalty."""
    if curve.stop is not None:
        return source.penalty
    vals = [r[source.metric] for r in (curve.at(e) for e in range(1, curve.epochs + 1)) if r.get("val/fresh", 1.0)]
    if not vals:
        return source.penalty
    return float(max(vals) if source.mode == "max" else min(vals))


def seed_everything(seed: int) -> None:
    """Ray's ASHA draws its bracket from NumPy's global generator."""
    np.random.seed(seed)
