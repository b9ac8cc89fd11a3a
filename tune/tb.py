"""TensorBoard for a search: one run per trial (its folder), the DESIGN.md metric names
unprefixed, and the HParams view (the searched parameters and the final metrics).

It subclasses Ray's TBXLoggerCallback only so that Tune does not add its own TensorBoard
logger beside it (Tune adds one unless a TBXLoggerCallback is present); that one prefixes
every tag with `ray/tune/`, which would break "the same names in console, JSON lines,
TensorBoard and Tune".
"""

from __future__ import annotations

import math

from ray.tune.logger import TBXLoggerCallback

HPARAM_METRICS = ("val/st_iou", "val/ap50", "val/recall", "train/loss", "health/fatal")


class TrialTensorBoard(TBXLoggerCallback):
    def __init__(self, param_keys: list[str]):
        # Not calling super().__init__: this class writes with torch's SummaryWriter.
        self._param_keys = list(param_keys)
        self._writers: dict = {}

    def log_trial_start(self, trial) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        if trial in self._writers:
            self._writers[trial].close()
        trial.init_local_path()
        w = SummaryWriter(trial.local_path, flush_secs=10)
        hp = {}
        for k in self._param_keys:
            v = trial.config.get(k)
            hp[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
        # HParams: the session's parameters, and the tags of its metric scalars.
        for summary in hparams(hp, dict.fromkeys(HPARAM_METRICS, 0.0)):
            w.file_writer.add_summary(summary)
        self._writers[trial] = w

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        if trial not in self._writers:
            self.log_trial_start(trial)
        w = self._writers[trial]
        step = int(result.get("training_iteration", iteration))
        for k, v in result.items():
            if "/" in k or k in ("lr", "epoch"):
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    w.add_scalar(k, v, step)
        w.flush()

    def log_trial_end(self, trial, failed: bool = False) -> None:
        w = self._writers.pop(trial, None)
        if w is not None:
            w.close()

    def on_experiment_end(self, trials, **info) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()
