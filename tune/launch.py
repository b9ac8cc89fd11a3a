"""Starts (or resumes) a search: Ray init, the Tuner, the console table, the report."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

from refdet.config import atomic_write_text
from tune.space import SearchSpec

SHORT = {"optim.gradient_clip_norm": "clip", "loss.dfl_weight": "dfl", "optim.warmup_epochs": "warmup",
         "optim.lr": "lr"}


EXIT_INTERRUPTED = 130


class ExperimentError(ValueError):
    """The experiment folder or cluster cannot be used as asked."""


def dry_run(spec: SearchSpec, n: int = 5) -> str:
    """The resolved space and the first `n` configurations the sampler proposes (in memory)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if spec.mode == "max" else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=spec.seed))
    for pt in spec.initial_points:
        study.enqueue_trial(pt)
    dists = {k: p.distribution() for k, p in spec.params.items()}
    lines = [spec.summary(), "", "first configurations:"]
    for i in range(n):
        t = study.ask(dists)
        lines.append(f"  {i}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items()))
        spec.trial_config(t.params)  # each sample must make a valid TrainConfig
        study.tell(t, state=optuna.trial.TrialState.FAIL)
    lines.append(f"\nbase config: epochs {spec.base.epochs} x {spec.base.steps_per_epoch} steps, "
                 f"data {spec.base.data.root}, img {spec.base.data.img_size}px")
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def storage_root(args) -> tuple[str, Path | None]:
    """(storage path or URI for Ray, local folder or None for a remote URI)."""
    if args.storage and "://" in args.storage:
        return args.storage, None
    root = Path(args.storage) if args.storage else Path("results")
    return str(root.resolve()), root.resolve()


def init_ray(address: str | None) -> bool:
    """Connect to `address`, or start a local Ray (no dashboard). Returns False when Ray was
    already initialised in this process (then the caller must not shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, log_to_driver=True, configure_logging=True, logging_level="WARNING")
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(**kwargs)  # local: Ray counts this machine's CPUs and GPUs
    return True


def run_search(spec: SearchSpec, args) -> int:
    storage, local_root = storage_root(args)
    exp_local = local_root / spec.name if local_root else None
    if exp_local is not None:
        if exp_local.exists() and not args.resume and any(exp_local.iterdir()):
            raise ExperimentError(f"{exp_local} exists: continue it with --resume, or pick another --name")
        if args.resume and not (exp_local / "tuner.pkl").is_file():
            raise ExperimentError(f"{exp_local}: no search to resume (no tuner.pkl)")
    if args.resume and exp_local is not None:
        from tune.space import SpaceError, load_space

        saved = exp_local / "space.yaml"
        if saved.is_file():
            try:
                spec_saved = load_space(str(saved))
            except SpaceError as exc:
                raise ExperimentError(f"cannot resume: {exc}") from None
            if spec_saved.params.keys() != spec.params.keys():
                raise ExperimentError(f"{saved}: the saved search space differs from --space; resume with the same space")
            # The base the search started with, --set overrides included.
            spec = replace(spec, base=spec_saved.base)

    if spec.base.data.synthetic:
        from refdet.data.synthetic import ensure_dataset

        if ensure_dataset(spec.base.data):  # once, here, not raced by the trials
            print(f"generated the synthetic dataset at {spec.base.data.root}")
    check_data(spec, remote=bool(args.address))  # before anything is written to results/

    import ray
    from ray import tune

    from tune.scheduler import build_scheduler
    from tune.searcher import build_searcher
    from tune.tb import TrialTensorBoard
    from tune.trainable import refdet_trainable

    started = init_ray(args.address)
    try:
        check_schedulable(spec, remote=bool(args.address))  # before anything is written to results/
        if exp_local is not None:
            exp_local.mkdir(parents=True, exist_ok=True)
            if not args.resume:
                write_space(spec, exp_local / "space.yaml")
        trainable = tune.with_resources(tune.with_parameters(refdet_trainable, spec=spec),
                                        {"cpu": spec.cpu, "gpu": spec.gpu})
        if args.resume:
            tuner = tune.Tuner.restore(str(Path(storage) / spec.name) if exp_local is None else str(exp_local),
                                       trainable, resume_errored=True, restart_errored=False)
        else:
            journal = str(exp_local / "optuna.log") if exp_local is not None else None
            searcher = build_searcher(spec, journal)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=searcher, scheduler=build_scheduler(spec),
                                            num_samples=spec.num_samples, max_concurrent_trials=spec.max_concurrent,
                                            reuse_actors=True),
                run_config=tune.RunConfig(
                    name=spec.name, storage_path=storage,
                    failure_config=tune.FailureConfig(max_failures=args.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    progress_reporter=make_reporter(spec, args.report_every), verbose=1,
                    callbacks=[TrialTensorBoard(list(spec.params), max_t=spec.max_t)],
                ),
            )
        # Ray's own hint on Ctrl-C ("Tuner.restore(...)") is replaced by our --resume line.
        logging.getLogger("ray.tune.tune").addFilter(lambda rec: "Tuner.restore" not in rec.getMessage())
        t0 = time.time()
        results = tuner.fit()
        elapsed = time.time() - t0
    finally:
        if started:
            ray.shutdown()
    return finish(spec, results, exp_local, storage, elapsed, args)


def check_schedulable(spec: SearchSpec, remote: bool) -> None:
    """Before the first trial: can any node ever run one? Without this, Tune prints a table
    of PENDING trials every few seconds and waits forever."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    res = [n.get("Resources", {}) for n in nodes]
    if any(r.get("CPU", 0) >= spec.cpu and r.get("GPU", 0) >= spec.gpu for r in res):
        return
    have = "; ".join(f"{n.get('NodeManagerAddress', '?')}: {r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU"
                     for n, r in zip(nodes, res)) or "none"
    need = f"a trial needs {spec.cpu:g} CPU and {spec.gpu:g} GPU (resources in {spec.path.name})"
    if remote:  # a cluster may have an autoscaler that adds a node of the right type
        print(f"warning: no node of this cluster can run a trial now: {need}; nodes: {have}. "
              "The trials wait until an autoscaler adds such a node (Ctrl-C to stop).", file=sys.stderr)
        return
    cpus = max((r.get("CPU", 0) for r in res), default=0)
    gpus = max((r.get("GPU", 0) for r in res), default=0)
    fix = f"--set resources.cpu={min(spec.cpu, cpus):g}" + (f" --set resources.gpu={min(spec.gpu, gpus):g}"
                                                             if spec.gpu > gpus else "")
    raise ExperimentError(f"no node can ever run a trial: {need}; this machine has {have}. "
                          f"Run with {fix}, or on a cluster with --address")


def check_data(spec: SearchSpec, remote: bool) -> None:
    """Validate the datasets on the driver, before any trial starts (the trainer validates them
    again in every trial). On a cluster the data may live only on the workers: a path missing
    here is then a warning, not an error."""
    from refdet.data.aeroeyes import DatasetError, load_dataset

    d = spec.base.data
    for root in filter(None, (d.root, d.val_root)):
        if remote and not Path(root).exists():
            print(f"warning: {root} is not on this machine; the trials will check it on their nodes")
            continue
        try:
            load_dataset(root, min_refs=d.k_shot)
        except DatasetError as exc:
            raise ExperimentError(str(exc)) from None


def write_space(spec: SearchSpec, path: Path) -> None:
    import yaml

    raw = dict(spec.raw)
    raw["name"] = spec.name
    raw["base"] = spec.base.to_dict()
    raw.pop("base_overrides", None)
    raw.pop("health", None)  # folded into base
    raw.setdefault("search", {})
    raw["search"] = dict(raw["search"], num_samples=spec.num_samples, max_concurrent=spec.max_concurrent)
    atomic_write_text(path, f"# resolved search space of this experiment (from {spec.path})\n"
                      + yaml.safe_dump(raw, sort_keys=False))


def make_reporter(spec: SearchSpec, every: float):
    from ray.tune import CLIReporter

    params = {k: SHORT.get(k, k) for k in spec.params}
    return CLIReporter(
        parameter_columns=params,
        metric_columns={"training_iteration": "epoch", spec.metric: spec.metric.split("/")[-1],
                        "health/stop_reason": "stop"},
        max_report_frequency=max(1, int(every)), sort_by_metric=True, metric=spec.metric, mode=spec.mode,
    )


def finish(spec, results, exp_local: Path | None, storage: str, elapsed: float, args) -> int:
    errors = results.num_errors
    finished = results.num_terminated + errors
    if finished < spec.num_samples:  # Ray's Tuner caught the first Ctrl-C and returned early
        return interrupted(spec, exp_local, finished, args)
    print(f"\nsearch {spec.name}: {len(results)} trials in {elapsed:.0f} s ({errors} errored)")
    if exp_local is None:
        print(f"results in {storage}/{spec.name}; run `python tune/report.py` on a local copy for the report")
        return 0
    from tune.report import write_report

    report = write_report(exp_local, spec)
    if args.confirm_top:
        from tune.confirm import confirm_top

        confirm_top(exp_local, spec, args.confirm_top, args.seeds, address=args.address)
        report = write_report(exp_local, spec)
    print(report.console_summary())
    print(f"results: {exp_local}")
    print(f"TensorBoard: tensorboard --logdir {exp_local}")
    print(f"final run: python -m refdet.train --config {exp_local / 'best_config.yaml'}")
    sys.stdout.flush()
    return 0


def resume_command(spec: SearchSpec, args) -> str:
    parts = ["python tune/run.py", f"--space {args.space}", f"--name {spec.name}"]
    if args.storage:
        parts.append(f"--storage {args.storage}")
    if args.address:
        parts.append(f"--address {args.address}")
    return " ".join(parts + ["--resume"])


def interrupted(spec: SearchSpec, exp_local: Path | None, finished: int, args) -> int:
    """The first Ctrl-C: Tune saved the experiment and stopped the trials (they resume from
    their last checkpoints; nothing partial was told to Optuna). The report is written, marked
    incomplete, without a best_config.yaml."""
    if exp_local is not None:
        from tune.report import write_report

        write_report(exp_local, spec, plots=False)
    print(f"\ninterrupted: {finished} of {spec.num_samples} trials finished; continue with: "
          f"{resume_command(spec, args)}", file=sys.stderr)
    return EXIT_INTERRUPTED


__all__ = ["ExperimentError", "dry_run", "run_search"]
