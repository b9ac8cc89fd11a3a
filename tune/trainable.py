"""The Ray Tune trainable: the one place that calls `tune.report`.

config (from the searcher) = {dotted TrainConfig path: value}; `spec` (the validated
SearchSpec) comes through `tune.with_parameters`. Per epoch the trial reports every metric
of DESIGN.md, with the search metric always present and finite (a health-stopped trial
reports `spec.penalty` for it), and a checkpoint (Tune keeps the last two). A restarted
trial resumes from `tune.get_checkpoint()`.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import ray
from ray import tune

from refdet.config import TrainConfig
from refdet.engine.trainer import Trainer

CKPT_NAME = "trainer.pt"


def trial_threads(cpu: float) -> int:
    """Torch threads for a trial: its CPU allotment (at least 1), capped by the CPUs it may use."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        available = os.cpu_count() or 1
    return max(1, min(available, int(math.floor(cpu)) or 1))


def build_trial_config(spec, params: dict) -> TrainConfig:
    cfg = spec.trial_config(params)
    # "auto": CUDA when Ray gave the trial a GPU it can see, the CPU otherwise (a simulated
    # cluster's logical GPUs, or a GPU-less node) -- never a crash for want of CUDA.
    return cfg.with_overrides({"num_threads": trial_threads(spec.cpu), "device": "auto"})


def search_metrics(result_metrics: dict, metric: str, penalty: float, fatal: bool) -> dict:
    """The report: every metric, the search metric finite; a fatal trial reports the penalty.
    Other non-finite values (a NaN training loss) are reported as -1.0: Tune, ASHA and
    TensorBoard's HParams view all choke on NaN."""
    out = dict(result_metrics)
    value = out.get(metric)
    if fatal or not isinstance(value, float) or not math.isfinite(value):
        out[metric] = float(penalty)
    for k, v in list(out.items()):
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = -1.0
    return out


def refdet_trainable(config: dict, spec=None) -> None:
    """One search trial: base + sampled params, reported per epoch."""
    params = {k: v for k, v in config.items() if k in spec.params}
    run_trial(build_trial_config(spec, params), spec.metric, spec.penalty)


def confirm_trainable(config: dict, spec=None, candidates=None) -> None:
    """A --confirm-top re-run: candidate config number `candidate` with seed `seed`."""
    cfg = build_trial_config(spec, candidates[config["candidate"]]).with_overrides({"seed": int(config["seed"])})
    run_trial(cfg, spec.metric, spec.penalty)


def final_trainable(config: dict, cfg_dict=None, metric: str = "val/st_iou", penalty: float = 0.0) -> None:
    """The final run as one Ray trial (tune/final.py): the exported config, unchanged."""
    run_trial(TrainConfig.from_dict(cfg_dict), metric, penalty)


def run_trial(cfg: TrainConfig, metric: str, penalty: float) -> None:
    """Drives the trainer epoch by epoch: resume from Tune's checkpoint, report every epoch
    with a checkpoint, end at once on a fatal verdict (reported, never resumed).
    TensorBoard is written by the driver's TrialTensorBoard callback, not here."""
    trial_dir = Path(tune.get_context().get_trial_dir())
    trainer = Trainer(cfg, run_dir=trial_dir / "refdet", tensorboard=False)
    trainer.log.line(f"trial on node {ray.get_runtime_context().get_node_id()} device {trainer.device} "
                     f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}")
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            trainer.resume(Path(d) / CKPT_NAME)
        trainer.log.line(f"resumed from a Tune checkpoint at epoch {trainer.epoch}")
    try:
        for result in trainer.fit():
            fatal = result.verdict is not None
            metrics = search_metrics(result.metrics, metric, penalty, fatal)
            if fatal:
                metrics["health/verdict"] = result.verdict.message
                metrics["health/rule"] = result.verdict.rule
                metrics["health/step"] = float(result.verdict.step)
                tune.report(metrics)  # no checkpoint: the trial ends here and is never resumed
                return
            with tempfile.TemporaryDirectory() as tmp:
                trainer.save(Path(tmp) / CKPT_NAME)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
    finally:
        trainer.close()
