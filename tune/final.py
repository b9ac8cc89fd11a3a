"""The final run of a search's best configuration, as one fault-tolerant Ray trial.

    python tune/final.py results/<name> [--epochs 100] [--address auto] [--max-failures 3]

Trains `results/<name>/best_config.yaml` unchanged (but for --epochs) with the same trainer
code as `python -m refdet.train --config results/<name>/best_config.yaml`, on a whole GPU
where the cluster has one. Checkpoints every epoch; a lost worker resumes from the last one;
running the command again after an interruption (Ctrl-C, exit 130) continues the run. TensorBoard:
`tensorboard --logdir results/<name>/final`. Exit codes: 0 done; 1 the run failed; 2 bad input;
3 a health rule stopped it; 130 interrupted.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refdet.config import ConfigError, TrainConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python tune/final.py", description=__doc__.splitlines()[0])
    ap.add_argument("experiment", help="results/<name> folder with best_config.yaml")
    ap.add_argument("--epochs", type=int, default=None, help="override the config's epochs (default: as exported)")
    ap.add_argument("--address", default=None, help="Ray cluster address (auto, host:port, ray://...)")
    ap.add_argument("--max-failures", type=int, default=3)
    ap.add_argument("--cpus", type=float, default=None, help="CPUs for the trial (default: all of one node, max 8)")
    ap.add_argument("--verbose", action="store_true", help="Ray's own output on the console too (always in driver.log)")
    args = ap.parse_args(argv)
    exp = Path(args.experiment).resolve()
    try:
        cfg = TrainConfig.from_yaml(exp / "best_config.yaml")
        if args.epochs is not None:
            if args.epochs < 1:
                raise ConfigError("--epochs: must be >= 1")
            cfg = cfg.with_overrides({"epochs": args.epochs})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from tune.output import set_verbose
    from tune.session import ran_to_the_end

    set_verbose(args.verbose)

    again = " ".join(["python tune/final.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    try:
        grid, epochs = run_final(exp, cfg, args)
        result = grid[0]
    except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune's loop started
        print(f"\ninterrupted; continue with: {again}", file=sys.stderr)
        return 130
    if not ran_to_the_end(result, epochs):  # Tune caught a Ctrl-C and returned early
        m = result.metrics or {}
        print(f"\ninterrupted at epoch {m.get('training_iteration', 0)} of {epochs}; continue with: {again}",
              file=sys.stderr)
        return 130
    if result.error:
        print(f"error: the final run failed: {result.error}", file=sys.stderr)
        return 1
    m = result.metrics or {}
    print(f"final run: {m.get('training_iteration', 0)} epochs, val/st_iou {m.get('val/st_iou', float('nan')):.4f}, "
          f"stop {m.get('health/stop_reason', '?')}; checkpoints and TensorBoard in {exp / 'final'}")
    return 3 if m.get("health/fatal") else 0


def run_final(exp: Path, cfg: TrainConfig, args):
    """The final run as one Ray trial (restored if an earlier one was interrupted): (grid, epochs)."""
    import ray  # after the argument checks: a user's mistake does not wait for Ray
    from ray import tune

    from tune.console import final_console, trial_dirname
    from tune.output import say
    from tune.session import ray_session, run_config
    from tune.tb import TrialTensorBoard
    from tune.trainable import final_trainable, trial_device

    with ray_session(args.address, log=exp / "driver.log"):
        res = ray.cluster_resources()
        gpu = 1 if res.get("GPU", 0) >= 1 and cfg.device != "cpu" else 0  # a config that says cpu holds no GPU
        cpu = args.cpus or max(1.0, min(8.0, res.get("CPU", 1)))
        cfg = cfg.with_overrides({"device": trial_device(cfg.device), "num_threads": int(cpu)}).resolve_paths()
        trainable = tune.with_resources(
            tune.with_parameters(final_trainable, cfg_dict=cfg.to_dict()), {"cpu": cpu, "gpu": gpu})
        final_dir = exp / "final"
        if (final_dir / "tuner.pkl").is_file():
            say(f"continuing the final run in {final_dir}")
            tuner = tune.Tuner.restore(str(final_dir), trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(num_samples=1, trial_dirname_creator=trial_dirname),
                               run_config=run_config("final", str(exp), max_failures=args.max_failures,
                                                     callbacks=[TrialTensorBoard([], max_t=cfg.epochs)],
                                                     console=final_console(exp / "best_config.yaml", cfg.epochs,
                                                                           cpu, gpu, final_dir)))
        return tuner.fit(), cfg.epochs


if __name__ == "__main__":
    sys.exit(main())
