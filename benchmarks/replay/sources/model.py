"""A continuous model of a recorded curve table (`model:TABLE`): proposals are answered by
the model, not snapped to the nearest of the few recorded configurations.

Mean: one Gaussian process per (signal, epoch) over the normalised parameters (each numeric
parameter scaled to [0, 1] over its range, in log space where the space is log; a categorical
one one-hot), fitted to the per-configuration mean over seeds (scikit-learn, Matern 5/2 with one
length scale per parameter + a white-noise term, each point's known noise variance var/seeds
given as its alpha). Signals: the search metric and, where the space breaks rung ties with a
secondary signal that the table holds, that signal (so the tie-break has something to read).

Seed noise: one run's deviation from its configuration's mean, jointly over signals and
epochs, is drawn from a normal distribution with the covariance of the recorded residuals
(configurations with >= 2 seeds, pooled, unbiased), scaled to a chosen level. The level is the
standard deviation of one run's value (best over epochs) as a fraction of the best recorded
configuration's mean: "measured" is the table's own (`seed_noise`: 22 % on the smoke table);
0.05 scales the covariance down to 5 %; 0 draws no noise. Values are clipped to the range the
table's values span (ST-IoU and AP50 cannot go below 0).

True value of a configuration: the best over epochs of the metric's model mean (noise-free).
Time: each epoch costs the table's median epoch time. Tables with health stops or crashes are
refused: this model has no stop region (replay such a table as recorded).
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from benchmarks.replay.sources import Curve, SourceError, sampled_reference
from benchmarks.replay.sources.recorded import table_spec
from benchmarks.replay.sources.table import CurveTable


def seed_noise(table: CurveTable) -> dict:
    """Spread of a configuration's value (best over epochs) over its recorded seeds, pooled over
    the configurations recorded with >= 2 seeds, also as a fraction of the best config's mean."""
    spreads = [statistics.stdev(table.run_value(r) for r in runs)
               for runs in table.configs().values() if len(runs) >= 2]
    if not spreads:
        return {"configs": 0, "median_std": None, "pooled_std": None, "relative": None}
    pooled = math.sqrt(sum(s * s for s in spreads) / len(spreads))
    return {"configs": len(spreads), "median_std": statistics.median(spreads), "pooled_std": pooled,
            "relative": pooled / abs(table.best_value()) if table.best_value() else None}


class Featuriser:
    """Parameters -> points in the unit cube (log where log; one-hot for a choice)."""

    def __init__(self, specs: dict):
        self.specs = specs
        self.keys = sorted(specs)

    def row(self, params: dict) -> list[float]:
        out = []
        for k in self.keys:
            p = self.specs[k]
            if p["type"] == "choice":
                out += [1.0 if params[k] == v else 0.0 for v in p["values"]]
                continue
            lo, hi, x = float(p["low"]), float(p["high"]), float(params[k])
            if p.get("log") or p["type"] == "loguniform":
                lo, hi, x = math.log(lo), math.log(hi), math.log(max(x, 1e-300))
            out.append((x - lo) / (hi - lo) if hi > lo else 0.0)
        return out

    def matrix(self, params: list[dict]) -> np.ndarray:
        return np.asarray([self.row(p) for p in params], dtype=float)


def _gp(x: np.ndarray, y: np.ndarray, alpha: np.ndarray, seed: int):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * Matern(length_scale=[0.5] * x.shape[1], length_scale_bounds=(0.05, 20.0),
                                                       nu=2.5) + WhiteKernel(0.05, (1e-6, 1.0)))
    scale = float(np.std(y)) or 1.0
    gp = GaussianProcessRegressor(kernel, alpha=alpha / scale**2 + 1e-10, normalize_y=True, n_restarts_optimizer=2,
                                  random_state=seed)
    with warnings.catch_warnings():  # a length scale at its bound is an irrelevant parameter, not an error
        warnings.simplefilter("ignore", ConvergenceWarning)
        return gp.fit(x, y)


class ModelSource:
    has_health_stops = False

    def __init__(self, table: CurveTable, noise: str | float = "measured", seed: int = 0):
        bad = [r for r in table.runs if r.stop is not None or r.error is not None]
        if bad:
            raise SourceError(f"{table.path}: {len(bad)} runs were health-stopped or crashed; the continuous model "
                              "has no stop region: replay this table as recorded")
        self.table, self.metric, self.max_t, self.penalty = table, table.metric, table.max_t, table.penalty
        self.mode = table.header["mode"]
        spec = table_spec(table, 1, 1, 0)
        self.signals = [self.metric] + [s for s in (spec.tie_break,) if s and all(s in r.series for r in table.runs)]
        self.features = Featuriser(table.header["params"])
        groups = table.configs()
        self.configs = sorted(groups)
        x = self.features.matrix([groups[c][0].params for c in self.configs])
        n = np.array([len(groups[c]) for c in self.configs], dtype=float)
        # per config: (signals x epochs) means; residuals of multi-seed configs for the noise
        means, resid = [], []
        for c in self.configs:
            runs = np.array([[v for s in self.signals for v in r.series[s]] for r in groups[c]])
            means.append(runs.mean(0))
            if len(runs) >= 2:
                resid.extend((runs - runs.mean(0)) * math.sqrt(len(runs) / (len(runs) - 1)))
        self.means = np.array(means)
        if len(resid) < 2:
            raise SourceError(f"{table.path}: no configuration has 2 seeds; the seed noise cannot be measured")
        cov = np.cov(np.array(resid).T, bias=True)
        w, v = np.linalg.eigh(cov)
        self.noise_root = v * np.sqrt(np.clip(w, 0.0, None))  # noise = root @ N(0, I)
        var = np.diag(cov)
        self.gps = [_gp(x, self.means[:, j], var[j] / n, seed) for j in range(self.means.shape[1])]
        values = np.concatenate([np.asarray(r.series[s], float) for r in table.runs for s in self.signals])
        self.clip = (0.0 if values.min() >= 0 else -np.inf, 1.0 if values.max() <= 1 else np.inf)
        self.noise = seed_noise(table)
        self._set_noise(noise)
        self.epoch_s = [statistics.median(r.series["time_s"][e] for r in table.runs) for e in range(self.max_t)]
        self.full_trial_s = float(sum(self.epoch_s))
        self._cache: dict[tuple, np.ndarray] = {}

    def _set_noise(self, noise: str | float) -> None:
        try:
            self.level = self.noise["relative"] if noise == "measured" else float(noise)
        except ValueError:
            self.level = None
        if self.level is None or not 0 <= self.level < 10:
            raise SourceError(f"noise {noise!r}: expected a fraction of the best value (0.05) or 'measured'")
        self.scale = self.level / self.noise["relative"] if self.noise["relative"] else 0.0
        tag = "measured" if noise == "measured" else f"{self.level:g}"
        self.name = f"{self.table.header.get('space', 'table')}-model-noise{tag}"

    def with_noise(self, noise: str | float) -> ModelSource:
        """The same fitted model with seed noise at another level."""
        import copy

        other = copy.copy(self)
        other._set_noise(noise)
        return other

    def spec(self, budget: float, concurrency: int, seed: int):
        return table_spec(self.table, budget, concurrency, seed)

    def mean_curves(self, params: list[dict]) -> np.ndarray:
        """(n, signals x epochs): the model's mean, clipped to the table's range."""
        x = self.features.matrix(params)
        return np.clip(np.stack([gp.predict(x) for gp in self.gps], 1), *self.clip)

    def _mean(self, params: dict) -> np.ndarray:
        key = tuple(sorted((k, float(v) if not isinstance(v, str) else v) for k, v in params.items()))
        if key not in self._cache:
            self._cache[key] = self.mean_curves([params])[0]
        return self._cache[key]

    def draw(self, params: dict, rng: np.random.Generator) -> Curve:
        y = self._mean(params)
        if self.scale > 0:
            y = np.clip(y + self.scale * (self.noise_root @ rng.standard_normal(len(y))), *self.clip)
        series = {s: [float(v) for v in y[i * self.max_t:(i + 1) * self.max_t]] for i, s in enumerate(self.signals)}
        series.update(time_s=list(self.epoch_s), **{"val/fresh": [1.0] * self.max_t})
        return Curve(series)

    def true_value(self, params: dict) -> float:
        m = self._mean(params)[: self.max_t]
        return float(m.max() if self.mode == "max" else m.min())

    def true_values(self, params: list[dict]) -> np.ndarray:
        m = self.mean_curves(params)[:, : self.max_t]
        return m.max(1) if self.mode == "max" else m.min(1)

    def sample_params(self, rng: np.random.Generator, n: int) -> list[dict]:
        out = [{} for _ in range(n)]
        for k, p in self.table.header["params"].items():
            for d in out:
                if p["type"] == "choice":
                    d[k] = p["values"][int(rng.integers(len(p["values"])))]
                    continue
                lo, hi = float(p["low"]), float(p["high"])
                log = p.get("log") or p["type"] == "loguniform"
                x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if log else rng.uniform(lo, hi)
                d[k] = int(round(x)) if p["type"] == "int" else float(min(max(x, lo), hi))
        return out

    def reference(self, rng: np.random.Generator, n: int = 20000) -> tuple[float, float]:
        return sampled_reference(self, rng, n)

    def loo(self) -> dict:
        """Leave-one-configuration-out error of the metric's GP at max_t (kernel refitted each
        time), next to the standard error of a recorded config mean: how well the model fits."""
        j = self.max_t - 1
        x = self.features.matrix([self.table.configs()[c][0].params for c in self.configs])
        n = np.array([len(self.table.configs()[c]) for c in self.configs], float)
        var = self.noise_root[j] @ self.noise_root[j]
        errs = []
        for i in range(len(self.configs)):
            keep = np.arange(len(self.configs)) != i
            gp = _gp(x[keep], self.means[keep, j], var / n[keep], 0)
            errs.append(float(gp.predict(x[i:i + 1])[0] - self.means[i, j]))
        return {"epoch": self.max_t, "rmse": math.sqrt(statistics.fmean(e * e for e in errs)),
                "mean_abs": statistics.fmean(abs(e) for e in errs),
                "config_mean_se": math.sqrt(var * statistics.fmean(1 / n)), "spread_of_means": float(np.std(self.means[:, j]))}
