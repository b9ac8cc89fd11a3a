"""TensorBoard for a search: one run per trial (its folder), the DESIGN.md metric names
unprefixed, per-step training signals, and the HParams view (the searched parameters, why
and when each trial stopped, and its final metrics).

It subclasses Ray's TBXLoggerCallback only so that Tune does not add its own TensorBoard
logger beside it (Tune adds one unless a TBXLoggerCallback is present); that one prefixes
every tag with `ray/tune/`, which would break "the same names in console, JSON lines,
TensorBoard and Tune".
"""

from __future__ import annotations

import math

from ray.tune.logger import TBXLoggerCallback

from refdet.metrics import VAL_METRICS

HPARAM_METRICS = (*VAL_METRICS, "train/loss", "health/fatal")


def stop_reason(result: dict, max_t: int, failed: bool) -> str:
    """Why a trial ended, from its own last result (the leaderboard's names)."""
    if failed:
        return "error"
    if result.get("health/fatal"):
        return str(result.get("health/stop_reason", "health"))
    return "completed" if int(result.get("training_iteration", 0)) >= max_t else "asha"


class TrialTensorBoard(TBXLoggerCallback):
    """Per trial: the epoch metrics (x = epoch), the step signals of each report's trace
    under step/* (x = optimizer step: every log_every-th step and every step of the stretch
    before a health stop), and -- when the trial ends -- its HParams row: the searched
    values, `stop_reason` and `stop_step` as columns. TensorBoard keeps the first HParams
    record of a run, so it is written once, at the end: a running trial has no row yet."""

    def __init__(self, param_keys: list[str], max_t: int):
        # Not calling super().__init__: this class writes with torch's SummaryWriter.
        self._param_keys = list(param_keys)
        self._max_t = max_t
        self._writers: dict = {}
        self._last_step: dict = {}

    def log_trial_start(self, trial) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if trial in self._writers:
            self._writers[trial].close()
        trial.init_local_path()
        self._writers[trial] = SummaryWriter(trial.local_path, flush_secs=10)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        if trial not in self._writers:
            self.log_trial_start(trial)
        w = self._writers[trial]
        epoch = int(result.get("training_iteration", iteration))
        stale = not result.get("val/fresh", 1.0)  # carried forward between validations: not a point
        for k, v in result.items():
            if ("/" in k or k == "lr") and _number(v) and not (stale and k.startswith("val/")):
                w.add_scalar(k, v, epoch)
        for row in result.get("trace/steps") or ():
            step = int(row.get("step", 0))
            self._last_step[trial] = step
            for k, v in row.items():
                if k != "step" and _number(v):
                    w.add_scalar(f"step/{k}", v, step)
        w.flush()

    def log_trial_end(self, trial, failed: bool = False) -> None:
        w = self._writers.pop(trial, None)
        if w is None:
            return
        from torch.utils.tensorboard.summary import hparams

        result = trial.last_result or {}
        hp = {k: _hparam(trial.config.get(k)) for k in self._param_keys}
        hp["stop_reason"] = stop_reason(result, self._max_t, failed)
        hp["stop_step"] = int(result.get("health/step") or self._last_step.pop(trial, 0))
        for summary in hparams(hp, dict.fromkeys(HPARAM_METRICS, 0.0)):
            w.file_writer.add_summary(summary)
        w.close()

    def on_experiment_end(self, trials, **info) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _hparam(v):
    return v if isinstance(v, (int, float, str, bool)) else str(v)
