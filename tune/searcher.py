"""OptunaSearch that tells Optuna what really happened to each trial.

Stock `ray.tune.search.optuna.OptunaSearch` tells an ASHA-stopped trial COMPLETE with its
early value, tells NaN (which leaves the trial RUNNING forever) and drops the last
intermediate value. Here (see ../shared/RAY-OPTUNA-FACTS.md for the measurements):

  completed at max_t          -> COMPLETE with the metric
  stopped by ASHA at a rung   -> PRUNED, with its intermediate values (the last one included)
  stopped by a health rule    -> COMPLETE with the penalty and constraint `health` = 1
                                 (infeasible: TPE learns to avoid the region; best_trial skips it)
  crashed (retries used up)   -> FAIL
  never NaN; any tell that raises falls back to FAIL, so nothing stays RUNNING.

An ASHA stop is recognised because Tune withholds the stopping result from
`on_trial_result` but passes it to `on_trial_complete`: its iteration is then past the last
one seen, and below max_t. After `Tuner.restore` the searcher reconciles the journal:
RUNNING trials it does not track (asked after the last snapshot) are told FAIL, and a trial
that was told FAIL and then resumed to the end is recorded again as a new trial tagged
`retry_of`.
"""

from __future__ import annotations

import logging
import math

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class RefDetOptunaSearch(OptunaSearch):
    def __init__(self, *args, max_t: int, penalty: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_t = max_t
        self._penalty = float(penalty)
        self._last_seen: dict[str, int] = {}
        self._told: dict[str, str] = {}  # ray trial id -> outcome told

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
        if ot_trial is not None and _finite(value) and trial_id not in self._completed_trials:
            ot_trial.report(float(value), it)

    def classify(self, trial_id: str, result: dict | None, error: bool) -> tuple[str, float | None, str]:
        """-> (outcome, value, stop reason); outcome in complete, pruned, infeasible, fail."""
        if error or not result:
            return "fail", None, "error"
        if result.get("health/fatal"):
            return "infeasible", self._penalty, str(result.get("health/stop_reason", "health"))
        value = result.get(self.metric)
        if not _finite(value):
            return "fail", None, "error"
        it = int(result.get("training_iteration", 0))
        if it > self._last_seen.get(trial_id, 0) and it < self._max_t:
            return "pruned", float(value), "asha"
        return "complete", float(value), "completed"

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            log.warning("trial %s completed but was never suggested by this searcher; not told", trial_id)
            return
        outcome, value, reason = self.classify(trial_id, result, error)
        if trial_id in self._completed_trials:
            if self._told.get(trial_id) == "fail" and outcome != "fail":
                self._record_retry(trial_id, ot_trial, outcome, value, reason, result)
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
            outcome = "fail"
            self._ot_study.tell(ot_trial, state=TrialState.FAIL, skip_if_finished=True)
        self._told[trial_id] = outcome
        self._completed_trials.add(trial_id)

    def _record_retry(self, trial_id, ot_trial, outcome, value, reason, result) -> None:
        frozen = self._ot_study._storage.get_trial(ot_trial._trial_id)
        state = {"complete": TrialState.COMPLETE, "infeasible": TrialState.COMPLETE,
                 "pruned": TrialState.PRUNED}[outcome]
        it = int((result or {}).get("training_iteration", 0))
        inter = dict(frozen.intermediate_values)
        inter.setdefault(it, value)
        self._ot_study.add_trial(optuna.trial.create_trial(
            state=state, value=value, params=frozen.params, distributions=frozen.distributions,
            intermediate_values=inter, user_attrs={"ray_trial_id": trial_id, "retry_of": frozen.number,
                                                   "stop_reason": reason},
            constraints={"health": 1.0 if outcome == "infeasible" else 0.0}))
        self._told[trial_id] = outcome

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
        n = self.reconcile()
        if n:
            log.warning("reconciled the Optuna journal on restore: %d orphan trial(s) told FAIL", n)


def build_searcher(spec, storage_path: str | None):
    """TPE (seeded; random start for the first third of the trials, at most 10), the
    known-good configuration enqueued first, an Optuna journal file as storage."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(storage_path)) if storage_path else None
    n_startup = max(2, min(10, spec.num_samples // 3))
    sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=n_startup)
    space = {k: p.distribution() for k, p in spec.params.items()}
    return RefDetOptunaSearch(
        space=space, metric=spec.metric, mode=spec.mode, points_to_evaluate=list(spec.initial_points) or None,
        sampler=sampler, storage=storage, study_name=spec.name, max_t=spec.max_t, penalty=spec.penalty,
    )
