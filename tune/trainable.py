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
import re
import tempfile
from pathlib import Path

import ray
from ray import tune

from refdet.config import TrainConfig
from refdet.engine.device import (
    MemoryShare,
    cpu_threads,
    is_out_of_memory,
    judge_oom,
    release_memory,
    resolve_device,
    uses_its_share,
)
from refdet.engine.health import Verdict
from refdet.engine.trainer import Trainer

CKPT_NAME = "trainer.pt"


def trial_device(device: str) -> str:
    """Where a trial (or the final run) trains: "auto" -- CUDA when Ray gave it a GPU it can
    see, the CPU otherwise (a simulated cluster's logical GPUs, or a GPU-less node), never a
    crash for want of CUDA -- unless the config says `cpu`. `cuda` without a GPU is refused at
    load (tune/space.py check_device)."""
    return "cpu" if device == "cpu" else "auto"


def build_trial_config(spec, params: dict) -> TrainConfig:
    cfg = spec.trial_config(params)
    # device_share: the trial's CUDA memory budget is its share of the device.
    # host_share: its share of the node's host memory, the trial's packing fraction. Both
    # decide whether an out-of-memory error is the config's own (refdet.engine.device.judge_oom).
    return cfg.with_overrides({"num_threads": cpu_threads(spec.cpu), "device": trial_device(cfg.device),
                               "device_share": min(1.0, spec.gpu) if spec.gpu > 0 else 1.0,
                               "host_share": node_share(spec.cpu, spec.gpu)})


def search_metrics(result_metrics: dict, metric: str, penalty: float, fatal: bool) -> dict:
    """The report: every metric, the search metric finite; a fatal trial reports the penalty.
    A search metric not measured yet (a validation metric before the first validated epoch:
    `val/fresh` 0, the trainer's placeholder) also reports the penalty -- a stale value that
    no decision reads (only fresh values reach ASHA and Optuna) and that can never look like
    the best. A non-finite search metric on a validated epoch is a fatal `nonfinite` verdict
    (see epoch_report), never a feasible value. Other non-finite values (a NaN training loss)
    are reported as -1.0 (Tune, ASHA and TensorBoard's HParams view all choke on NaN) and named
    in `health/nonfinite_metrics` (comma-separated), so no decision reads the -1.0 as a value."""
    out = dict(result_metrics)
    if fatal or (not is_measured(out, metric) and not _finite(out.get(metric))):
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
    saving -- where the trial used its share of the device or node ends the trial with an
    `oom` verdict instead of an exception, so Tune does not retry it (deterministic for the
    config); one within its share was a neighbour's doing (MemoryPushedOver, raised: Tune
    retries the trial from its last checkpoint). A retry after Ray's memory monitor killed the
    worker is judged the same way from the trial's error file. TensorBoard is written by the
    driver's TrialTensorBoard callback from these reports."""
    trial_dir = Path(tune.get_context().get_trial_dir())
    record_worker(trial_dir)  # so that a retry after a Ray memory-monitor kill finds this worker's figure
    killed = ray_oom_kill(trial_dir, cfg)
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
            report, verdict = epoch_report(result, metric, penalty)
            if verdict is not None:
                if result.verdict is None:
                    trainer.log.line(verdict.message)
                tune.report(report)  # no checkpoint: never resumed
                return
            with tempfile.TemporaryDirectory() as tmp:
                trainer.save(Path(tmp) / CKPT_NAME)
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        device = trainer.device if trainer is not None else resolve_device(cfg.device)
        try:
            verdict = judge_oom(exc, step + 1, device, memory_share(cfg))  # raises MemoryPushedOver
        finally:
            release_memory(device)
        tune.report(fatal_report(verdict, metric, penalty, last))
    finally:
        if trainer is not None:
            trainer.close()


def is_measured(metrics: dict, metric: str) -> bool:
    """Did this epoch measure `metric`? Training metrics every epoch; validation metrics only
    on validated epochs (`val/fresh` 1): between them the trainer carries the last value
    forward, and before the first one it holds a placeholder (NaN for val/loss)."""
    return not metric.startswith("val/") or bool(metrics.get("val/fresh", 1.0))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def nonfinite_metric(result, metric: str):
    """A measurement of the search metric that is NaN/inf: a fatal `nonfinite` verdict. An
    epoch that did not measure it (stale) is never one."""
    value = result.metrics.get(metric)
    if _finite(value) or not is_measured(result.metrics, metric):
        return None
    return Verdict("nonfinite_metric", "nonfinite", result.step, {metric: value})


def epoch_report(result, metric: str, penalty: float) -> tuple[dict, Verdict | None]:
    """What a trial reports to Tune after an epoch: (the report, the verdict that ends the
    trial or None). The single path from an EpochResult to a report (search, confirmation,
    final run)."""
    verdict = result.verdict or nonfinite_metric(result, metric)
    report = {**result.metrics, "trace/steps": result.trace}
    if verdict is not None:
        return fatal_report(verdict, metric, penalty, report), verdict
    return search_metrics(report, metric, penalty, False), None


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


# Ray's memory monitor: "Task was killed due to the node running low on memory. ... (..., pid=N,
# memory used=1.25GB)" before Ray 2.55; since, "K worker(s) were killed due to the node running
# low on memory. ... Considered workers: [Selected to kill: (..., pid=N, actual memory used=1.25GB,
# ...) ...]": one message for every worker killed, listing every worker considered.
RAY_OOM_KILL = re.compile(r"killed due to the node running (low on|out of) memory")
RAY_OOM_WORKER = re.compile(r"pid=(\d+), (?:actual )?memory used=([\d.]+)GB")
WORKER_PIDS = "worker_pids.txt"  # in the trial folder: the pid of each attempt's worker


def record_worker(trial_dir: Path, pid: int | None = None) -> None:
    """Note this attempt's worker pid in the trial folder (best effort)."""
    try:
        with open(trial_dir / WORKER_PIDS, "a") as fh:
            fh.write(f"{pid or os.getpid()}\n")
    except OSError:
        pass


def _read(folders, name: str) -> str:
    text = ""
    for folder in folders:
        try:
            if folder is not None and (folder / name).is_file():
                text += (folder / name).read_text(errors="replace")
        except OSError:
            pass
    return text


def ray_oom_kill(trial_dir: Path, cfg: TrainConfig):
    """An `oom` verdict when this is a retry after Ray's memory monitor killed the trial's
    worker (its error file says so) while the trial used its share of the node (the monitor's
    message says how much it used; a trial alone on its node always did); else None: a kill
    within its share, or of unknown size, was the neighbours' doing and the trial trains on.
    Without shared storage the driver's error file is not visible on a worker node; such a
    trial is retried and told FAIL at the end."""
    folders = (trial_dir, storage_trial_dir())
    text = _read(folders, "error.txt")
    kills = list(RAY_OOM_KILL.finditer(text))
    if not kills:
        return None
    # The newest kill's figure for one of this trial's workers (the message lists others too)
    pids = set(_read(folders, WORKER_PIDS).split())
    used = next((float(m.group(2)) for m in RAY_OOM_WORKER.finditer(text, kills[-1].end()) if m.group(1) in pids),
                None)
    judged = uses_its_share(used, memory_share(cfg), "host") if used is not None else None
    if judged is None and cfg.host_share < 1.0:
        return None
    return Verdict("ray_oom_kill", "oom", 0, {"error": "Ray's memory monitor killed the trial's worker (error.txt)",
                                              "used": judged or "the node to itself"})


def memory_share(cfg: TrainConfig) -> MemoryShare:
    return MemoryShare(cfg.device_share, cfg.host_share, cfg.health.mem_budget_gb)


def node_share(cpu: float, gpu: float) -> float:
    """This trial's share of its node: the larger of its CPU and GPU fractions of the node (how
    many such trials Ray can pack onto it). 1.0 when the node cannot be read."""
    if not ray.is_initialized():  # not in a trial (asking would start a Ray)
        return 1.0
    try:
        node = ray.get_runtime_context().get_node_id()
        res = next(n.get("Resources", {}) for n in ray.nodes() if n.get("NodeID") == node)
    except Exception:  # outside a Ray worker, or the node list is unreadable
        return 1.0
    fractions = [cpu / res["CPU"]] if res.get("CPU") else []
    if gpu and res.get("GPU"):
        fractions.append(gpu / res["GPU"])
    return min(1.0, max(fractions, default=1.0))
