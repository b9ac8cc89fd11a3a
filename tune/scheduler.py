"""ASHA on epochs that also stops, at once, any trial whose report says `health/fatal`, and
that can break ties on a flat metric with a secondary signal.

The trainer already ends a fatal trial within the step (its trainable returns after that
report); stopping it here as well covers a trainable that would carry on, and keeps the
decision visible to Tune (the trial's last result is the fatal one).

Tie-break (`scheduler.tie_break` in the space; val/ap50 by default for val/st_iou): early in training every trial
can score exactly the same (ST-IoU 0.0 for the first ~100 steps), and ASHA's rule -- stop a
trial below the rung's quantile -- then stops nothing. When a trial's value equals the rung's
cutoff exactly, the decision goes to the secondary signal instead: the trial is stopped if
its secondary value is worse than the same quantile of the secondary values of the trials
recorded at that rung with the same value. Trials above or below the cutoff are decided by
the metric alone, as in Ray's ASHA. A secondary value that is missing, stale (`val/fresh` 0)
or was non-finite (listed in `health/nonfinite_metrics`) is never used: such a tie stands.
"""

from __future__ import annotations

import math

import numpy as np
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from refdet.metrics import lower_is_better


class HealthAwareASHA(ASHAScheduler):
    """A fatal trial leaves its bracket without recording its penalty value in a rung, so
    health stops do not lower the cutoffs that healthy trials are compared against."""

    def __init__(self, *args, tie_break: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._tie_metric = tie_break
        self._tie_sign = (-1.0 if lower_is_better(tie_break) else 1.0) if tie_break else 1.0
        # (bracket index, rung) -> trial -> secondary; an index, not id(): it survives Tune's pickling
        self._tie_values: dict[tuple[int, float], dict[str, float]] = {}
        self._num_tie_stopped = 0
        # trial -> why ASHA stopped it at a rung: {rung, value, cutoff, tie} (the console says it)
        self.stops: dict[str, dict] = {}

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("health/fatal", 0.0):
            self._trial_info.pop(trial.trial_id, None)
            self._num_stopped += 1
            return TrialScheduler.STOP
        rung = self._rung_to_record(trial, result)
        action = super().on_trial_result(tune_controller, trial, result)
        if rung is not None:
            key, before = rung
            tie = self._loses_tie(key, before, trial, result) if action == TrialScheduler.CONTINUE else None
            if tie is not None:
                action = TrialScheduler.STOP
                self._num_stopped += 1
                self._num_tie_stopped += 1
            if action == TrialScheduler.STOP and result[self._time_attr] < self._max_t:
                self._note_stop(trial, key[1], before, result, tie)
            self._note_secondary(key, trial.trial_id, result)
        return action

    def _note_stop(self, trial, rung: float, before: dict, result: dict, tie) -> None:
        cutoff = self._trial_info[trial.trial_id].cutoff(before)
        self.__dict__.setdefault("stops", {})[trial.trial_id] = {  # setdefault: a scheduler pickled before it
            "rung": int(rung), "value": float(result[self._metric]),
            "cutoff": None if cutoff is None else float(self._metric_op * cutoff),
            "tie": tie and (self._tie_metric, self._tie_sign * tie[0], self._tie_sign * tie[1], tie[2])}

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if trial.trial_id in self._trial_info:
            rung = self._rung_to_record(trial, result)
            if rung is not None:
                self._note_secondary(rung[0], trial.trial_id, result)
            super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._trial_info.pop(trial.trial_id, None)

    # -- tie-break -------------------------------------------------------------------------

    def _rung_to_record(self, trial, result: dict):
        """((bracket, milestone), the rung's recorded values before this result) for the rung
        Ray's bracket will record this result in, or None (the same walk as _Bracket.on_result)."""
        if self._time_attr not in result or self._metric not in result:
            return None
        bracket = self._trial_info.get(trial.trial_id)
        if bracket is None:
            return None
        cur = result[self._time_attr]
        for milestone, recorded in bracket._rungs:
            if cur < milestone or trial.trial_id in recorded:
                continue
            return (self._brackets.index(bracket), milestone), dict(recorded)
        return None

    def _secondary(self, result: dict) -> float | None:
        v = result.get(self._tie_metric)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return None
        if self._tie_metric.startswith("val/") and not result.get("val/fresh", 1.0):
            return None
        if self._tie_metric in str(result.get("health/nonfinite_metrics", "")).split(","):
            return None
        return self._tie_sign * float(v)

    def _note_secondary(self, key, trial_id: str, result: dict) -> None:
        v = self._secondary(result)
        if v is not None:
            self._tie_values.setdefault(key, {})[trial_id] = v

    def _loses_tie(self, key, before: dict[str, float], trial, result: dict) -> tuple | None:
        """(its secondary, the tied trials' cutoff, how many tied) when this trial, tied at the
        rung's cutoff, loses on the secondary signal (signed: higher is better); else None."""
        if not before or self._tie_metric is None:
            return None
        value = self._metric_op * result[self._metric]
        bracket = self._trial_info[trial.trial_id]
        if value != bracket.cutoff(before):
            return None
        mine = self._secondary(result)
        known = self._tie_values.get(key, {})
        tied = [known[t] for t, v in before.items() if v == value and t in known]
        if mine is None or not tied:
            return None
        cut = float(np.percentile(tied, (1 - 1 / bracket.rf) * 100))
        return (mine, cut, len(tied)) if mine < cut else None


def build_scheduler(spec) -> HealthAwareASHA:
    return HealthAwareASHA(time_attr="training_iteration", metric=spec.metric, mode=spec.mode, max_t=spec.max_t,
                           grace_period=spec.grace_period, reduction_factor=spec.reduction_factor,
                           stop_last_trials=True, tie_break=spec.tie_break)
