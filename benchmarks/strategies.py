"""The strategies the replay benchmark compares (benchmarks/replay_search.py), each built as
(searcher, scheduler, health_as_error) from the recorded table's search space:

  default      this project: TPE + ASHA (HealthAwareASHA, the space's grace, reduction and
               tie-break) + health constraints + the space's seed config first
  random_asha  random search + the same ASHA (no seed config)
  stock        TPE + ASHA through the stock integration (ray's OptunaSearch + ASHAScheduler):
               an ASHA-stopped trial told COMPLETE with its partial value, a health stop is a
               trial error (told FAIL); seed config first
  tpe_full     this project's searcher without early stopping (FIFO)
  evolve       mutation of the best, the popular detection library's tuner rule (top 5 by
               fitness, one parent drawn with weight fitness - min, each gene multiplied with
               probability 0.8 by clip(1 + 0.2 * N(0,1) * U(0,1), 0.3, 3.0), clipped to the
               range; categorical genes kept); starts from the seed config; full budget
  random_full  random search at full budget (no seed config)
  default:K=V  a variant: the default with one setting changed (grace_period, reduction_factor,
               tie_break, startup, multivariate)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from ray.tune.search import Searcher

from benchmarks.curves import CurveError, CurveTable
from tune.space import midpoint

ROOT = Path(__file__).resolve().parent.parent

STRATEGIES = ("default", "random_asha", "stock", "tpe_full", "evolve", "random_full")


def load_spec(table: CurveTable, budget: float, concurrency: int, seed: int, variant: dict | None = None):
    """The table's search space as a SearchSpec for one replay: num_samples = the budget in
    full trials (it sets TPE's random start), the replay's concurrency and seed."""
    from tune.space import load_space

    spec = load_space(str(ROOT / table.header["space_file"]))
    if spec.max_t != table.max_t or spec.metric != table.metric or set(spec.params) != set(table.header["params"]):
        raise CurveError(f"{table.path}: recorded for max_t {table.max_t}, {table.metric}, "
                         f"{sorted(table.header['params'])}; {spec.path} now differs")
    spec = replace(spec, num_samples=max(1, int(round(budget))), max_concurrent=concurrency, seed=seed)
    for key, value in (variant or {}).items():
        if key in ("grace_period", "reduction_factor"):
            spec = replace(spec, **{key: int(value)})
        elif key == "tie_break":
            spec = replace(spec, tie_break=None if value in ("none", "null", "") else value)
    return spec


def build(strategy: str, spec, seed: int, variant: dict | None = None):
    """-> (searcher, scheduler, health_as_error) for one replay."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from tune.sampler import make_sampler, startup_trials
    from tune.scheduler import build_scheduler
    from tune.searcher import build_searcher

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    no_seed = replace(spec, initial_points=())
    if strategy == "default":
        sampler = None
        if variant and {"startup", "multivariate"} & set(variant):
            sampler = optuna.samplers.TPESampler(seed=spec.seed,
                                                 n_startup_trials=int(variant.get("startup", startup_trials(spec))),
                                                 multivariate=variant.get("multivariate", "1") in ("1", "true"))
        return build_searcher(spec, None, sampler=sampler), build_scheduler(spec), False
    if strategy == "random_asha":
        return build_searcher(no_seed, None, optuna.samplers.RandomSampler(seed=seed)), build_scheduler(no_seed), False
    if strategy == "stock":
        searcher = OptunaSearch(space={k: p.distribution() for k, p in spec.params.items()}, metric=spec.metric,
                                mode=spec.mode, points_to_evaluate=list(spec.initial_points) or None,
                                sampler=make_sampler(spec))
        scheduler = ASHAScheduler(time_attr="training_iteration", metric=spec.metric, mode=spec.mode,
                                  max_t=spec.max_t, grace_period=spec.grace_period,
                                  reduction_factor=spec.reduction_factor)
        return searcher, scheduler, True
    if strategy == "tpe_full":
        return build_searcher(spec, None), FIFOScheduler(), False
    if strategy == "evolve":
        return MutateBest(spec, seed), FIFOScheduler(), False
    if strategy == "random_full":
        return build_searcher(no_seed, None, optuna.samplers.RandomSampler(seed=seed)), FIFOScheduler(), False
    raise ValueError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")


class MutateBest(Searcher):
    """The mutate-the-best evolutionary tuner (see the module doc), as a Ray searcher."""

    def __init__(self, spec, seed: int, n: int = 5, mutation: float = 0.8, sigma: float = 0.2):
        super().__init__(metric=spec.metric, mode=spec.mode)
        self.spec, self.n, self.mutation, self.sigma = spec, n, mutation, sigma
        self.rng = np.random.default_rng(seed)
        self.start = dict(spec.initial_points[0]) if spec.initial_points else {
            k: midpoint(p) for k, p in spec.params.items()}
        self.history: list[tuple[float, dict]] = []  # (sign * fitness, params)
        self.pending: dict[str, dict] = {}
        self.started = False

    def suggest(self, trial_id: str):
        if not self.started:
            self.started, params = True, dict(self.start)
        else:
            params = self._mutate(self._parent())
        self.pending[trial_id] = params
        return dict(params)

    def _parent(self) -> dict:
        if not self.history:
            return self.start
        top = sorted(self.history, key=lambda h: -h[0])[: self.n]
        fit = [f for f, _ in top]
        w = [f - min(fit) + 1e-6 for f in fit]
        return top[int(self.rng.choice(len(top), p=[x / sum(w) for x in w]))][1]

    def _mutate(self, parent: dict) -> dict:
        keys = [k for k, p in self.spec.params.items() if p.type != "choice"]
        v = [1.0] * len(keys)
        while all(x == 1.0 for x in v):
            scale = self.rng.random() * self.sigma
            v = [min(3.0, max(0.3, 1.0 + (self.rng.random() < self.mutation) * self.rng.standard_normal() * scale))
                 for _ in keys]
        out = dict(parent)
        for k, m in zip(keys, v):
            p = self.spec.params[k]
            x = min(p.high, max(p.low, parent[k] * m))
            out[k] = int(round(x)) if p.type == "int" else float(x)
        return out

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        params = self.pending.pop(trial_id, None)
        if params is None:
            return
        ok = result and not error and not result.get("health/fatal")
        value = float(result[self.spec.metric]) if ok else float(self.spec.penalty)
        self.history.append((self.spec.sign * value, params))


def parse_variant(text: str) -> tuple[str, dict]:
    key, _, value = text.partition("=")
    if key not in ("grace_period", "reduction_factor", "tie_break", "startup", "multivariate") or not value:
        raise SystemExit(f"error: --variant {text!r}: expected grace_period=N, reduction_factor=N, "
                         f"tie_break=METRIC|none, startup=N or multivariate=0|1")
    return f"default:{key}={value}", {key: value}
