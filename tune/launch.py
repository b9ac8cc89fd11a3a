"""Starts (or resumes) a search: checks, Ray session, the Tuner, the console table, the report.

Layering in tune/ (each imports only those before it): space -> preflight, sampler -> searcher,
scheduler, trainable, tb -> session -> results -> confirm -> launch -> run.py (the CLI).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import yaml
from ray import tune

from refdet.data import DatasetError
from refdet.data.synthetic import ensure_dataset
from refdet.io import atomic_write_text
from tune.confirm import confirm_top
from tune.console import SHORT_NAMES, search_console, trial_dirname
from tune.output import say
from tune.preflight import ExperimentError, check_data, check_start
from tune.results import write_report
from tune.scheduler import build_scheduler
from tune.searcher import build_searcher
from tune.session import ray_session, run_config
from tune.space import SearchSpec
from tune.tb import TrialTensorBoard
from tune.trainable import refdet_trainable

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
COLUMN_NAMES = SHORT_NAMES  # Ray's status table (driver.log) names the searched parameters as the console does


@dataclass(frozen=True)
class SearchOptions:
    """How to run a search (the CLI's flags, typed). `space` is what the user passed to
    --space: the resume command repeats it."""

    space: str
    storage: str | None = None  # a path or URI shared by all nodes; default ./results
    address: str | None = None
    resume: bool = False
    max_failures: int = 2
    confirm_top: int = 0
    seeds: int = 3
    report_every: float = 10.0

    def resume_command(self, name: str) -> str:
        parts = ["python tune/run.py", f"--space {self.space}", f"--name {name}"]
        if self.storage:
            parts.append(f"--storage {self.storage}")
        if self.address:
            parts.append(f"--address {self.address}")
        return " ".join(parts + ["--resume"])

    def storage_root(self) -> tuple[str, Path | None]:
        """(storage path or URI for Ray, the local folder; None for a remote URI)."""
        if self.storage and "://" in self.storage:
            return self.storage, None
        root = (Path(self.storage) if self.storage else Path("results")).resolve()
        return str(root), root


def run_search(spec: SearchSpec, opts: SearchOptions) -> int:
    storage, local_root = opts.storage_root()
    exp_local = local_root / spec.name if local_root else None
    if exp_local is not None:
        spec = check_experiment_folder(spec, exp_local, opts.resume)
    check_start(spec, remote=bool(opts.address))  # seconds, before minutes of data generation
    try:
        if spec.base.data.synthetic and ensure_dataset(spec.base.data):  # once, here, not raced by the trials
            print("generated the synthetic dataset at " + " and ".join(filter(None, (spec.base.data.root,
                                                                                 spec.base.data.val_root))))
    except DatasetError as exc:  # a stale generated dataset: never trained on silently
        raise ExperimentError(str(exc)) from None
    check_data(spec, remote=bool(opts.address))  # before anything is written to results/
    with ray_session(opts.address, log=exp_local / "driver.log" if exp_local is not None else None):
        check_schedulable(spec, remote=bool(opts.address))  # before anything is written to results/
        if exp_local is not None:
            exp_local.mkdir(parents=True, exist_ok=True)
            if not opts.resume:
                write_space(spec, exp_local / "space.yaml")
        tuner = make_tuner(spec, opts, storage, exp_local)
        # Ray's own hint on Ctrl-C ("Tuner.restore(...)") is replaced by our --resume line.
        logging.getLogger("ray.tune.tune").addFilter(lambda rec: "Tuner.restore" not in rec.getMessage())
        t0 = time.time()
        results = tuner.fit()
        elapsed = time.time() - t0
    return finish(spec, results, exp_local, storage, elapsed, opts)


def check_experiment_folder(spec: SearchSpec, exp: Path, resume: bool) -> SearchSpec:
    """A new search needs an empty folder; a resumed one its tuner.pkl (the spec was read from
    its space.yaml by the CLI: tune/run.py resumed_spec)."""
    if exp.exists() and not resume and any(exp.iterdir()):
        raise ExperimentError(f"{exp} exists: continue it with --resume, or pick another --name")
    if resume and not (exp / "tuner.pkl").is_file():
        raise ExperimentError(f"{exp}: no search to resume (no tuner.pkl)")
    return spec


def make_tuner(spec: SearchSpec, opts: SearchOptions, storage: str, exp_local: Path | None) -> tune.Tuner:
    trainable = tune.with_resources(tune.with_parameters(refdet_trainable, spec=spec), {"cpu": spec.cpu, "gpu": spec.gpu})
    if opts.resume:
        path = str(exp_local) if exp_local is not None else f"{storage}/{spec.name}"
        # Trials that errored for good (retries used up, told FAIL) stay failed: running them
        # again would change the search's top K after the fact (and its confirmation).
        return tune.Tuner.restore(path, trainable, resume_errored=False, restart_errored=False)
    journal = str(exp_local / "optuna.log") if exp_local is not None else None
    searcher, scheduler = build_searcher(spec, journal), build_scheduler(spec)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=spec.num_samples,
                                    max_concurrent_trials=spec.max_concurrent, reuse_actors=True,
                                    trial_dirname_creator=trial_dirname),
        run_config=run_config(spec.name, storage, max_failures=opts.max_failures,
                              callbacks=[TrialTensorBoard(list(spec.params), max_t=spec.max_t, experiment=True)],
                              reporter=make_reporter(spec, opts.report_every),
                              console=search_console(spec, exp_local, searcher, scheduler)),
    )


def check_schedulable(spec: SearchSpec, remote: bool) -> None:
    """Before the first trial: can any node ever run one? Without this, Tune prints a table
    of PENDING trials every few seconds and waits forever."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    res = [n.get("Resources", {}) for n in nodes]
    if any(r.get("CPU", 0) >= spec.cpu and r.get("GPU", 0) >= spec.gpu for r in res):
        return
    have = "; ".join(f"{n.get('NodeManagerAddress', '?')}: {r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU"
                     for n, r in zip(nodes, res)) or "none"
    need = f"a trial needs {spec.cpu:g} CPU and {spec.gpu:g} GPU (resources in {spec.path.name})"
    if remote:  # a cluster may have an autoscaler that adds a node of the right type
        say(f"warning: no node of this cluster can run a trial now: {need}; nodes: {have}. "
            "The trials wait until an autoscaler adds such a node (Ctrl-C to stop).", err=True)
        return
    cpus = max((r.get("CPU", 0) for r in res), default=0)
    gpus = max((r.get("GPU", 0) for r in res), default=0)
    suggestion = f"--set resources.cpu={min(spec.cpu, cpus):g}" + (f" --set resources.gpu={min(spec.gpu, gpus):g}"
                                                             if spec.gpu > gpus else "")
    raise ExperimentError(f"no node can ever run a trial: {need}; this machine has {have}. "
                          f"Run with {suggestion}, or on a cluster with --address")


def write_space(spec: SearchSpec, path: Path) -> None:
    raw = dict(spec.raw)
    raw["name"] = spec.name
    raw["base"] = spec.base.to_dict()
    raw.pop("base_overrides", None)
    raw.pop("health", None)  # folded into base
    confirm, seeds = spec.confirm_plan()  # the plan as it runs, so that --resume runs the same
    raw["search"] = dict(raw.get("search") or {}, num_samples=spec.num_samples, max_concurrent=spec.max_concurrent,
                         confirm_top=confirm, confirm_seeds=seeds, max_failures=spec.max_failures)
    raw["resources"] = {"cpu": spec.cpu, "gpu": spec.gpu}
    atomic_write_text(path, f"# resolved search space of this experiment (from {spec.path})\n"
                      + yaml.safe_dump(raw, sort_keys=False))


def make_reporter(spec: SearchSpec, every: float) -> tune.CLIReporter:
    return tune.CLIReporter(
        parameter_columns={k: COLUMN_NAMES.get(k, k) for k in spec.params},
        metric_columns={"training_iteration": "epoch", spec.metric: spec.metric.split("/")[-1],
                        "health/stop_reason": "stop"},
        max_report_frequency=max(1, int(every)), sort_by_metric=True, metric=spec.metric, mode=spec.mode,
    )


def finish(spec, results, exp_local: Path | None, storage: str, elapsed: float, opts: SearchOptions) -> int:
    errors = results.num_errors
    if exp_local is None:
        # No local journal to read: Ray's count is all there is (it cannot tell a trial stopped
        # by a Ctrl-C in the last wave from a finished one; tune/report.py on a copy can).
        if results.num_terminated + errors < spec.num_samples:
            return interrupted(spec, exp_local, results.num_terminated + errors, opts)
        print(f"\nsearch {spec.name}: {len(results)} trials in {elapsed:.0f} s ({errors} errored)")
        print(f"results in {storage}/{spec.name}; run `python tune/report.py` on a local copy for the report")
        if errors == len(results):  # Ray's count is all there is here: every trial raised
            return nothing_measured(spec, {"error": errors}, "run tune/report.py on a local copy for why")
        return EXIT_OK
    # What the searcher told Optuna decides whether every trial ended: after a Ctrl-C, Tune
    # marks the trials it stops TERMINATED like finished ones.
    report = write_report(exp_local, spec, plots=False)
    if not report.complete:
        return interrupted(spec, exp_local, report.finished, opts)
    print(f"\nsearch {spec.name}: {len(results)} trials in {elapsed:.0f} s ({errors} errored)")
    if opts.confirm_top and confirm_top(exp_local, spec, opts.confirm_top, opts.seeds, address=opts.address) is None:
        print(f"\ninterrupted while confirming the best configs (the search itself finished; no "
              f"best_config.yaml until the confirmation has); continue with: {opts.resume_command(spec.name)}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    report = write_report(exp_local, spec)
    print(report.console_summary())
    print(f"results: {exp_local}")
    print(f"TensorBoard: tensorboard --logdir {exp_local}")
    if report.exportable:
        print(f"final run: python -m refdet.train --config {exp_local / 'best_config.yaml'}")
    sys.stdout.flush()
    if report.best is None and not report.choice.unresolved:
        return nothing_measured(spec, report.counts(), f"see {exp_local / 'health_report.md'} and each trial's "
                                                       f"error.txt")
    return EXIT_OK


def nothing_measured(spec: SearchSpec, reasons: dict[str, int], where: str) -> int:
    """A search that ended without one trial's result (every trial raised or was stopped by a
    health rule) did not work, and a script that runs it must not read exit 0 as success:
    EXIT_FAILED, said once. A search whose best trials tie exactly measured something and
    exits 0 (its summary says what would separate them)."""
    said = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
    print(f"error: no trial of search {spec.name} produced a result ({said}): nothing to export; {where}",
          file=sys.stderr)
    return EXIT_FAILED


def interrupted(spec: SearchSpec, exp_local: Path | None, finished: int, opts: SearchOptions) -> int:
    """The first Ctrl-C: Tune saved the experiment and stopped the trials (they resume from
    their last checkpoints; nothing partial was told to Optuna). The report was written, marked
    incomplete, without a best_config.yaml."""
    print(f"\ninterrupted: {finished} of {spec.num_samples} trials finished; continue with: "
          f"{opts.resume_command(spec.name)}", file=sys.stderr)
    return EXIT_INTERRUPTED


__all__ = ["ExperimentError", "SearchOptions", "run_search"]
