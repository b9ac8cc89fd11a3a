"""Two baselines that are not a Ray searcher/scheduler out of the box.

Genetic: the tuner of the popular detection library (ultralytics `engine/tuner.py`,
`Tuner._mutate` and `_crossover`, read at commit 002363f134378804ac4fa9eb0f7f6357ee3629c1), as
it is:
  - the first proposal is the defaults (here the space's seed configuration, else its midpoint);
    so is every proposal made before any result exists (its CSV is empty);
  - otherwise the top n = 9 results by fitness are the parents; k = 9 of them are drawn with
    replacement with weight fitness - min + 1e-6; each gene is drawn uniformly from
    [lo - 0.2 * span, hi + 0.2 * span] of the drawn parents' values (BLX-alpha crossover, alpha 0.2);
  - each gene is then multiplied, with probability 0.5, by exp(N(0, 1) * sigma * gain) clipped to
    [0.25, 4] (gain 1 here; the library gives momentum 0.3), redrawn until some gene changed;
    sigma falls linearly from 0.2 to 0.1 over the first 300 iterations;
  - values are clipped to the range and rounded to 5 decimals (an int rounded to an integer);
  - a run that fails scores fitness 0 (here: the penalty); every run trains to the end (no early
    stopping); the export is the single best fitness.
  Not in the library (no categorical genes there): a categorical gene keeps the value of the first
  drawn parent. The library reseeds NumPy from the clock on every call; here one seeded generator.

PrunerScheduler: Optuna's own early stopping as a Ray scheduler for the replay: at each rung
(the ASHA rungs of the space) the trial's value is reported to its Optuna trial and the pruner
(MedianPruner by default: n_startup_trials 5, no warm-up) decides; pruned -> STOP, which the
searcher then tells as PRUNED. With TPE this is the YAHPO paper's "optuna" baseline shape (TPE
sampler, a pruner at successive-halving rungs).
"""

from __future__ import annotations

import math

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from tune.space import midpoint


class Genetic(Searcher):
    def __init__(self, spec, seed: int, n: int = 9, k: int = 9, alpha: float = 0.2, mutation: float = 0.5):
        super().__init__(metric=spec.metric, mode=spec.mode)
        self.spec, self.n, self.k, self.alpha, self.mutation = spec, n, k, alpha, mutation
        self.rng = np.random.default_rng(seed)
        self.keys = list(spec.params)
        self.start = dict(spec.initial_points[0]) if spec.initial_points else {
            k: midpoint(p) for k, p in spec.params.items()}
        self.history: list[tuple[float, dict]] = []  # (fitness, params), higher is better
        self.pending: dict[str, dict] = {}
        self.iteration = 0

    def suggest(self, trial_id: str):
        params = self._propose() if self.history else dict(self.start)
        self.iteration += 1
        self.pending[trial_id] = params
        return dict(params)

    def _propose(self) -> dict:
        top = sorted(self.history, key=lambda h: -h[0])[: self.n]
        fit = np.array([f for f, _ in top])
        w = fit - fit.min() + 1e-6
        w = w / w.sum() if np.isfinite(w).all() and w.sum() > 0 else np.full(len(top), 1 / len(top))
        parents = [top[i][1] for i in self.rng.choice(len(top), size=min(self.k, len(top)), p=w)]
        numeric = [k for k in self.keys if self.spec.params[k].type != "choice"]
        genes = []
        for key in numeric:
            vals = [float(p[key]) for p in parents]
            lo, hi = min(vals), max(vals)
            genes.append(self.rng.uniform(lo - self.alpha * (hi - lo), hi + self.alpha * (hi - lo)))
        sigma = 0.2 - 0.1 * min(self.iteration / 300.0, 1.0)
        factors = np.ones(len(numeric))
        while numeric and np.all(factors == 1):
            mask = self.rng.random(len(numeric)) < self.mutation
            step = self.rng.standard_normal(len(numeric)) * sigma
            factors = np.where(mask, np.exp(step), 1.0).clip(0.25, 4.0)
        out = {k: parents[0][k] for k in self.keys if self.spec.params[k].type == "choice"}
        for key, g, f in zip(numeric, genes, factors):
            p = self.spec.params[key]
            x = round(min(max(g * f, p.low), p.high), 5)
            out[key] = int(round(x)) if p.type == "int" else float(x)
        return out

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        params = self.pending.pop(trial_id, None)
        if params is None:
            return
        ok = result and not error and not result.get("health/fatal")
        value = float(result[self.spec.metric]) if ok else float(self.spec.penalty)
        if not math.isfinite(value):
            value = float(self.spec.penalty)
        self.history.append((self.spec.sign * value, params))


class PrunerScheduler(FIFOScheduler):
    """Optuna's pruner deciding at the rungs, on the study of `searcher` (a RefDetOptunaSearch)."""

    def __init__(self, searcher, rungs: list[int], pruner=None):
        import optuna

        super().__init__()
        self.searcher, self.rungs = searcher, set(rungs)
        self.pruner = pruner or optuna.pruners.MedianPruner()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        it = int(result.get("training_iteration", 0))
        ot = self.searcher._ot_trials.get(trial.trial_id)
        value = result.get(self.searcher.metric)
        if it not in self.rungs or ot is None or result.get("health/fatal") or not result.get("val/fresh", 1.0):
            return TrialScheduler.CONTINUE
        if isinstance(value, (int, float)) and math.isfinite(value):
            ot.report(float(value), it)
        study = self.searcher._ot_study
        frozen = study._storage.get_trial(ot._trial_id)
        return TrialScheduler.STOP if self.pruner.prune(study, frozen) else TrialScheduler.CONTINUE
