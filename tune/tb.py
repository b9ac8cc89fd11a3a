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
# TensorBoard's HParams table ticks the first 5 hyperparameters of the experiment, after sorting
# them by `differs` (True first) and then by name (tensorboard 2.21: backend_context.py,
# _sort_and_reduce_to_hparams_limit; the query pane's _computeHParams). Without an experiment
# record of our own, stop_reason and stop_step sorted after the optim.* names and sat unticked.
TB_DEFAULT_COLUMNS = 5


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

    def __init__(self, param_keys: list[str], max_t: int, experiment: bool = False):
        # Not calling super().__init__: this class writes with torch's SummaryWriter.
        self._param_keys = list(param_keys)
        self._max_t = max_t
        # the search's runs also say which columns the HParams table shows (experiment_summary);
        # a confirmation's or final run's must not, or TensorBoard may take theirs for the search's
        self._experiment = experiment
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
        exp, start, end = hparams(hp, dict.fromkeys(HPARAM_METRICS, 0.0))
        # Only the search's runs carry an experiment record: TensorBoard takes the first one it
        # finds for the whole table, and a confirmation's (candidate, seed) would replace the
        # search's columns whenever its run is listed first.
        for summary in ((experiment_summary(exp, hp), start, end) if self._experiment else (start, end)):
            w.file_writer.add_summary(summary)
        w.close()

    def on_experiment_end(self, trials, **info) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()


def experiment_summary(exp, hp: dict):
    """torch's HParams experiment record `exp`, reordered: stop_reason and stop_step first, then
    the searched parameters; `differs` set on the first TB_DEFAULT_COLUMNS only. TensorBoard
    sorts by `differs`, then by name, and ticks the first five: these are the columns its table
    shows without a click (the others are one tick away in the left panel)."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    value = exp.value[0]
    data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
    infos = {info.name: info for info in data.experiment.hparam_infos}
    order = ["stop_reason", "stop_step", *(k for k in hp if k not in ("stop_reason", "stop_step"))]
    ordered = [infos[k] for k in order if k in infos]
    for i, info in enumerate(ordered):
        info.differs = i < TB_DEFAULT_COLUMNS
    del data.experiment.hparam_infos[:]
    data.experiment.hparam_infos.extend(ordered)
    value.metadata.plugin_data.content = data.SerializeToString()
    return exp


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _hparam(v):
    return v if isinstance(v, (int, float, str, bool)) else str(v)
