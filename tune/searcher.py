"""OptunaSearch that tells Optuna what really happened to each trial.

Stock `ray.tune.search.optuna.OptunaSearch` tells an ASHA-stopped trial COMPLETE with its
early value, tells NaN (which leaves the trial RUNNING forever) and drops the last
intermediate value (measured with Ray 2.60 and Optuna 5: docs/design.md). Here:

  completed at max_t          -> COMPLETE with the metric
  stopped by ASHA at a rung   -> PRUNED, with its intermediate values (the last one included)
  stopped by a health rule    -> COMPLETE with the penalty and constraint `health` = 1
                                 (infeasible: TPE learns to avoid the region; best_trial skips it)
  crashed (retries used up)   -> FAIL
  never NaN; any tell that raises falls back to FAIL, so nothing stays RUNNING.

An ASHA stop is recognised because Tune withholds the stopping result from
`on_trial_result` but passes it to `on_trial_complete`: its iteration is then past the last
one seen, and below max_t. After `Tuner.restore` the searcher reconciles the journal:
RUNNING trials it does not track (asked after the last snapshot) are told FAIL. Whether a
trial was already told is read from the journal itself, not from the pickled searcher: a
trial told before a driver kill (after the last snapshot), or told FAIL and resumed by
`resume_errored`, that then ends differently is recorded again as a new trial tagged
`supersedes` (Optuna cannot change a finished trial); the newest record of a Ray trial is
its state.
"""

from __future__ import annotations

import logging
import math

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from tune.sampler import make_sampler

log = logging.getLogger(__name__)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class RefDetOptunaSearch(OptunaSearch):
    def __init__(self, *args, max_t: int, penalty: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_t = max_t
        self._penalty = float(penalty)
        self._last_seen: dict[str, int] = {}

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            ot_trial.set_user_attr("ray_trial_id", trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        it = int(result.get("training_iteration", 0))
        self._last_seen[trial_id] = it
        value = result.get(self.metric)
        ot_trial = self._ot_trials.get(trial_id)
        # a carried-forward validation value is not a new measurement
        fresh = result.get("val/fresh", 1.0) if self.metric.startswith("val/") else 1.0
        if ot_trial is not None and fresh and _finite(value) and trial_id not in self._completed_trials:
            try:
                ot_trial.report(float(value), it)
            except Exception as exc:  # told before the last snapshot (see on_trial_complete)
                log.debug("intermediate value for %s not recorded: %s", trial_id, exc)

    def classify(self, trial_id: str, result: dict | None, error: bool) -> tuple[str, float | None, str]:
        """-> (outcome, value, stop reason); outcome in complete, pruned, infeasible, fail,
        unfinished (not told)."""
        if error or not result:
            return "fail", None, "error"
        if result.get("health/fatal"):
            return "infeasible", self._penalty, str(result.get("health/stop_reason", "health"))
        value = result.get(self.metric)
        if not _finite(value):
            return "fail", None, "error"
        it = int(result.get("training_iteration", 0))
        if it < self._max_t:
            if it > self._last_seen.get(trial_id, 0):
                return "pruned", float(value), "asha"
            # Ended below max_t on a result the searcher saw: nobody decided to stop it (the
            # driver is shutting down). A partial value is not an outcome: tell nothing, the
            # trial stays RUNNING in the journal and a resume finishes it.
            return "unfinished", None, "running"
        return "complete", float(value), "completed"

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            log.warning("trial %s completed but was never suggested by this searcher; not told", trial_id)
            return
        outcome, value, reason = self.classify(trial_id, result, error)
        if outcome == "unfinished":
            log.info("trial %s ended at a partial result; not told (a resume continues it)", trial_id)
            return
        # The journal, not this object, says whether the trial was told: after a driver kill
        # the restored searcher is the last snapshot's, and may not know what it told since.
        told = self._ot_study._storage.get_trial(ot_trial._trial_id)
        if told.state.is_finished():
            told = self._newest_record(trial_id, told)  # a restore may have superseded it already
            if not self._same_outcome(told, outcome, value, int((result or {}).get("training_iteration", 0))):
                self._supersede(trial_id, told, outcome, value, reason, result)
            self._completed_trials.add(trial_id)
            return
        try:
            ot_trial.set_user_attr("stop_reason", reason)
            it = int((result or {}).get("training_iteration", 0))
            if outcome == "fail":
                self._ot_study.tell(ot_trial, state=TrialState.FAIL, skip_if_finished=True)
            elif outcome == "infeasible":
                ot_trial.set_constraint("health", 1.0)
                self._ot_study.tell(ot_trial, value, skip_if_finished=True)
            elif outcome == "pruned":
                ot_trial.report(value, it)  # the stopping result never reached on_trial_result
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED, skip_if_finished=True)
            else:
                ot_trial.set_constraint("health", 0.0)
                self._ot_study.tell(ot_trial, value, skip_if_finished=True)
        except Exception as exc:  # never leave a trial RUNNING
            log.warning("telling Optuna %s for trial %s failed (%s); telling FAIL", outcome, trial_id, exc)
            self._ot_study.tell(ot_trial, state=TrialState.FAIL, skip_if_finished=True)
        self._completed_trials.add(trial_id)

    def _newest_record(self, trial_id: str, told):
        """The trial's newest record: `told` or the latest record that supersedes it (a trial
        can be restored more than once; each end is compared with what the journal says last)."""
        newer = [t for t in self._ot_study.get_trials(deepcopy=False)
                 if t.number > told.number and t.user_attrs.get("ray_trial_id") == trial_id and "supersedes" in t.user_attrs]
        return newer[-1] if newer else told

    @staticmethod
    def _same_outcome(told, outcome: str, value: float | None, it: int) -> bool:
        """Does the journal's record say what happened? A pruned trial: pruned at the same rung
        (its last intermediate step) with the same value."""
        if outcome == "fail":
            return told.state == TrialState.FAIL
        if outcome == "pruned":
            last = max(told.intermediate_values, default=-1)
            return told.state == TrialState.PRUNED and last == it and told.intermediate_values.get(last) == value
        infeasible = (told.constraints or {}).get("health", 0.0) > 0
        return told.state == TrialState.COMPLETE and told.value == value and infeasible == (outcome == "infeasible")

    def _supersede(self, trial_id, told, outcome, value, reason, result) -> None:
        """The trial ended differently from what the journal holds (it was told, then the
        driver died before its snapshot, and the resumed trial ran on; or it crashed, was told
        FAIL, and `resume_errored` ran it to the end). Optuna cannot change a finished trial,
        so its real outcome is added as a new trial `supersedes` the old number; the report
        and the tests read the newest record of each Ray trial."""
        state = {"complete": TrialState.COMPLETE, "infeasible": TrialState.COMPLETE,
                 "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}[outcome]
        inter = {k: v for k, v in told.intermediate_values.items() if _finite(v)}
        if outcome == "pruned":
            inter[int((result or {}).get("training_iteration", 0))] = value
        self._ot_study.add_trial(optuna.trial.create_trial(
            state=state, value=value if outcome != "fail" else None, params=told.params,
            distributions=told.distributions, intermediate_values=inter,
            user_attrs={"ray_trial_id": trial_id, "supersedes": told.number, "stop_reason": reason},
            constraints={"health": 1.0 if outcome == "infeasible" else 0.0} if outcome != "fail" else None))
        log.warning("trial %s: journal said %s, the trial ended %s; recorded as trial %s superseding %d",
                    trial_id, told.state.name, outcome, len(self._ot_study.get_trials(deepcopy=False)) - 1, told.number)

    def reconcile(self) -> int:
        """Tell FAIL to RUNNING journal trials this searcher does not track. Returns the count."""
        tracked = {t._trial_id for t in self._ot_trials.values()}
        orphans = 0
        for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t._trial_id not in tracked:
                self._ot_study._storage.set_trial_user_attr(t._trial_id, "stop_reason", "orphan")
                self._ot_study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                orphans += 1
        return orphans

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        # What the dead driver saw is not what this one will: a trial restored from a checkpoint
        # older than the snapshot's last result re-reports that epoch, and ASHA may stop it there
        # (no on_trial_result first). Kept, the old `_last_seen` made that stop look like a
        # shutdown ("unfinished", never told): a search stuck at "interrupted" (seen in CI).
        self._last_seen = {}
        n = self.reconcile()
        if n:
            log.warning("reconciled the Optuna journal on restore: %d orphan trial(s) told FAIL", n)


def build_searcher(spec, storage_path: str | None, sampler: optuna.samplers.BaseSampler | None = None):
    """TPE (seeded; random start for the first third of the trials, at most 10), the
    known-good configuration enqueued first, an Optuna journal file as storage (in memory
    without a path). `sampler` replaces TPE (the replay benchmark's baselines)."""
    storage = JournalStorage(JournalFileBackend(storage_path)) if storage_path else None
    space = {k: p.distribution() for k, p in spec.params.items()}
    return RefDetOptunaSearch(
        space=space, metric=spec.metric, mode=spec.mode, points_to_evaluate=list(spec.initial_points) or None,
        sampler=sampler or make_sampler(spec), storage=storage, study_name=spec.name, max_t=spec.max_t,
        penalty=spec.penalty,
    )
