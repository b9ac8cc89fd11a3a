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
from refdet.engine.device import cpu_threads, is_out_of_memory, oom_verdict, release_memory
from refdet.engine.health import Verdict
from refdet.engine.trainer import Trainer

CKPT_NAME = "trainer.pt"


def build_trial_config(spec, params: dict) -> TrainConfig:
    cfg = spec.trial_config(params)
    # "auto": CUDA when Ray gave the trial a GPU it can see, the CPU otherwise (a simulated
    # cluster's logical GPUs, or a GPU-less node) -- never a crash for want of CUDA.
    # device_share: the trial's CUDA memory budget is its share of the device.
    return cfg.with_overrides({"num_threads": cpu_threads(spec.cpu), "device": "auto",
                               "device_share": min(1.0, spec.gpu) if spec.gpu > 0 else 1.0})


def search_metrics(result_metrics: dict, metric: str, penalty: float, fatal: bool) -> dict:
    """The report: every metric, the search metric finite; a fatal trial reports the penalty.
    A non-finite search metric on a healthy epoch is a fatal `nonfinite` verdict (see
    run_trial), never a feasible value. Other non-finite values (a NaN training loss) are
    reported as -1.0 (Tune, ASHA and TensorBoard's HParams view all choke on NaN) and named in
    `health/nonfinite_metrics` (comma-separated), so no decision reads the -1.0 as a value."""
    out = dict(result_metrics)
    if fatal:
        out[metric] = float(penalty)
    replaced = []
    for k, v in list(out.items()):
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = -1.0
            replaced.append(k)
    if replaced:
        out["health/nonfinite_metrics"] = ",".join(replaced)
    return out


def fatal_report(verdict, metric: str, penalty: float, base: dict | None = None) -> dict:
    """The last report of a trial a verdict ended: the penalty as its value, and why."""
    out = search_metrics(base or {}, metric, penalty, fatal=True)
    out.update({"health/fatal": 1.0, "health/stop_reason": verdict.stop_reason, "health/verdict": verdict.message,
                "health/rule": verdict.rule, "health/step": float(verdict.step)})
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

    An out-of-memory error anywhere -- building the model, loading data, a step, validation,
    saving -- ends the trial with an `oom` verdict instead of an exception, so Tune does not
    retry it (an OOM is deterministic for a config). A retry after Ray's memory monitor
    killed the worker is recognised from the trial's error file and reported the same way.
    TensorBoard is written by the driver's TrialTensorBoard callback from these reports."""
    trial_dir = Path(tune.get_context().get_trial_dir())
    killed = ray_oom_kill(trial_dir)
    if killed is not None:
        tune.report(fatal_report(killed, metric, penalty))
        return
    trainer = None
    step, last = 0, {}
    try:
        trainer = Trainer(cfg, run_dir=trial_dir / "refdet", tensorboard=False)
        trainer.log.line(f"trial on node {ray.get_runtime_context().get_node_id()} device {trainer.device} "
                         f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')} "
                         f"cuda_budget_gb={trainer.health.cuda_budget_gb:.2f} loader_workers={trainer.loader_workers()}")
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                trainer.resume(Path(d) / CKPT_NAME)
            trainer.log.line(f"resumed from a Tune checkpoint at epoch {trainer.epoch}")
        for result in trainer.fit():
            step, last = result.step, result.metrics
            verdict = result.verdict or nonfinite_metric(result, metric)
            report = {**result.metrics, "trace/steps": result.trace}
            if verdict is not None:
                trainer.log.line(verdict.message)
                tune.report(fatal_report(verdict, metric, penalty, report))  # no checkpoint: never resumed
                return
            with tempfile.TemporaryDirectory() as tmp:
                trainer.save(Path(tmp) / CKPT_NAME)
                tune.report(search_metrics(report, metric, penalty, False),
                            checkpoint=tune.Checkpoint.from_directory(tmp))
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        if trainer is not None:
            release_memory(trainer.device)
        tune.report(fatal_report(oom_verdict(exc, step + 1), metric, penalty, last))
    finally:
        if trainer is not None:
            trainer.close()


def nonfinite_metric(result, metric: str):
    """A validation that measured a NaN/inf search metric: a fatal `nonfinite` verdict."""
    value = result.metrics.get(metric)
    if isinstance(value, float) and math.isfinite(value):
        return None
    return Verdict("nonfinite_metric", "nonfinite", result.step, {metric: value})


def storage_trial_dir() -> Path | None:
    """The trial's folder in the experiment storage when that is a local (or mounted) path:
    where Tune writes the trial's error.txt. None on a remote URI."""
    try:
        from ray.train._internal.session import get_storage  # no public twin in ray.tune

        storage = get_storage()
        path = Path(storage.trial_fs_path)
        return path if type(storage.storage_filesystem).__name__ == "LocalFileSystem" and path.is_dir() else None
    except Exception:  # an internal API: absent or changed, the check is skipped
        return None


def ray_oom_kill(trial_dir: Path):
    """An `oom` verdict when this is a retry after Ray's memory monitor killed the trial's
    worker (its error file says so), else None. Without shared storage the driver's error
    file is not visible on a worker node; such a trial is retried and told FAIL at the end."""
    text = ""
    for folder in (trial_dir, storage_trial_dir()):
        err = folder / "error.txt" if folder is not None else None
        try:
            if err is not None and err.is_file():
                text += err.read_text(errors="replace")
        except OSError:
            pass
    if "OutOfMemoryError" not in text and "out of memory" not in text.lower():
        return None
    return Verdict("ray_oom_kill", "oom", 0, {"error": "Ray killed the trial's worker for memory (error.txt)"})
