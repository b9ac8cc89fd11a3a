"""The Optuna sampler of a search, built in one place: the search and its dry run draw the
same configurations."""

from __future__ import annotations

import optuna

from refdet.io import fmt_number
from tune.space import SearchSpec


def startup_trials(spec: SearchSpec) -> int:
    """Random proposals before TPE models: a third of the trials, 2 to 10."""
    return max(2, min(10, spec.num_samples // 3))


def make_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=startup_trials(spec))


def preview(spec: SearchSpec, n: int = 5) -> str:
    """The resolved space and the first `n` configurations the search's sampler proposes
    (asked of an in-memory study; each must make a valid TrainConfig)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if spec.mode == "max" else "minimize", sampler=make_sampler(spec))
    for pt in spec.initial_points:
        study.enqueue_trial(pt)
    dists = {k: p.distribution() for k, p in spec.params.items()}
    lines = [spec.summary(), "", "first configurations:"]
    for i in range(n):
        t = study.ask(dists)
        lines.append(f"  {i}: " + ", ".join(f"{k}={fmt_number(v)}" for k, v in t.params.items()))
        spec.trial_config(t.params)
        # told as a constant so TPE's start stays random-like for the preview, as in the search
        # before any trial has finished
        study.tell(t, state=optuna.trial.TrialState.FAIL)
    lines.append(f"\nbase config: epochs {spec.base.epochs} x {spec.base.steps_per_epoch} steps, "
                 f"data {spec.base.data.root}, img {spec.base.data.img_size}px")
    return "\n".join(lines)


