"""ASHA on epochs that also stops, at once, any trial whose report says `health/fatal`.

The trainer already ends a fatal trial within the step (its trainable returns after that
report); stopping it here as well covers a trainable that would carry on, and keeps the
decision visible to Tune (the trial's last result is the fatal one).
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, TrialScheduler


class HealthAwareASHA(ASHAScheduler):
    """A fatal trial leaves its bracket without recording its penalty value in a rung, so
    health stops do not lower the cutoffs that healthy trials are compared against."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("health/fatal", 0.0):
            self._trial_info.pop(trial.trial_id, None)
            self._num_stopped += 1
            return TrialScheduler.STOP
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._trial_info.pop(trial.trial_id, None)


def build_scheduler(spec) -> HealthAwareASHA:
    return HealthAwareASHA(time_attr="training_iteration", metric=spec.metric, mode=spec.mode, max_t=spec.max_t,
                           grace_period=spec.grace_period, reduction_factor=spec.reduction_factor,
                           stop_last_trials=True)
