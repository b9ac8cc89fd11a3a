"""LCBench as a curve source: YAHPO Gym's surrogate of the learning curves of a 7-parameter MLP
on 34 OpenML tasks, epochs 1-52 (files and licence in benchmarks/replay/data/lcbench/).

The encoding follows yahpo_gym 1.0.2 (`BenchmarkSet._config_to_xs`, read from the public
source; checked against the reference package's predictions by tests/test_lcbench.py):

  x_cont  float32, one row per configuration, the raw values (no log, no scaling: the ONNX graph
          does its own transforms) in the order epoch, batch_size, learning_rate, momentum,
          weight_decay, num_layers, max_units, max_dropout
  x_cat   int32, one column: the task id's integer code from encoding.json
  output  float32, 6 columns in their own units (the graph de-normalises): time (s, cumulative),
          val_accuracy (%), val_cross_entropy, val_balanced_accuracy, test_cross_entropy,
          test_balanced_accuracy

yahpo_gym's "noisy" flag changes nothing for lcbench (no noisy model is shipped), so the
surrogate is deterministic: one configuration, one curve.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "data" / "lcbench"
CONT = ("epoch", "batch_size", "learning_rate", "momentum", "weight_decay", "num_layers", "max_units",
        "max_dropout")
TARGETS = ("time", "val_accuracy", "val_cross_entropy", "val_balanced_accuracy", "test_cross_entropy",
           "test_balanced_accuracy")
TASK = "OpenML_task_id"
EPOCHS = 52
# YAHPO's FAQ (yahpo_gym docs, "lcbench and epochs"): LCBench's epoch 1 is the initialised,
# untrained model and epoch 52 mostly repeats epoch 51, so "a sensible epoch range ... is 2 to
# 51". A replayed trial's epoch k is the surrogate's epoch k + 1: 50 epochs, the first trained.
FIRST, LAST = 2, 51
TRIAL_EPOCHS = LAST - FIRST + 1
# The ConfigSpace JSON stores bounds such as 0.00010000000000000009 for 1e-4; a value within
# this relative distance of a bound counts as on it.
BOUND_RTOL = 1e-9


class LCBenchError(ValueError):
    """A task or configuration the surrogate does not cover; the message names it."""


class LCBench:
    """The surrogate: `predict(task, configs)` -> (n, 6) array of TARGETS."""

    def __init__(self, data: Path = DATA, threads: int = 1):
        import onnxruntime as ort

        space = json.loads((data / "config_space.json").read_text())
        self.params = {h["name"]: h for h in space["hyperparameters"] if h["name"] != TASK}
        self.tasks = tuple(next(h for h in space["hyperparameters"] if h["name"] == TASK)["choices"])
        self.codes = json.loads((data / "encoding.json").read_text())[TASK]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = threads
        self.session = ort.InferenceSession(str(data / "model.onnx"), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        names = [i.name for i in self.session.get_inputs()]
        if names != ["x_cat", "x_cont"] or set(self.params) != set(CONT):
            raise LCBenchError(f"{data}: inputs {names}, parameters {sorted(self.params)}: not the lcbench surrogate")

    def check_task(self, task: str) -> str:
        task = str(task)
        if task not in self.tasks or task not in self.codes:
            raise LCBenchError(f"unknown LCBench task {task!r}; known: {', '.join(self.tasks)}")
        return task

    def check(self, config: dict) -> list[float]:
        """The x_cont row of one configuration (every CONT key), or LCBenchError naming the key."""
        row = []
        for key in CONT:
            h = self.params[key]
            v = config.get(key)
            if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool) or not math.isfinite(v):
                raise LCBenchError(f"{key}: expected a number, got {v!r}")
            lo, hi = float(h["lower"]), float(h["upper"])
            if not lo * (1 - BOUND_RTOL) <= float(v) <= hi * (1 + BOUND_RTOL):
                raise LCBenchError(f"{key}: {v} outside [{lo:g}, {hi:g}]")
            if h["type"] == "uniform_int" and float(v) != round(float(v)):
                raise LCBenchError(f"{key}: {v} is not an integer")
            row.append(float(v))
        return row

    def predict(self, task: str, configs: list[dict]) -> np.ndarray:
        x_cont = np.asarray([self.check(c) for c in configs], dtype=np.float32).reshape(-1, len(CONT))
        return self._run(task, x_cont)

    def epochs(self, task: str, params: dict, epochs) -> np.ndarray:
        """(len(epochs), 6): one configuration (epoch excluded) at the given epochs, checked once."""
        epochs = np.asarray(list(epochs), dtype=np.float32)
        if epochs.size == 0 or epochs.min() < 1 or epochs.max() > EPOCHS or np.any(epochs != np.round(epochs)):
            raise LCBenchError(f"epoch: {epochs.tolist()} outside 1..{EPOCHS}")
        x_cont = np.tile(np.asarray(self.check({**params, "epoch": 1}), dtype=np.float32), (len(epochs), 1))
        x_cont[:, 0] = epochs
        return self._run(task, x_cont)

    def curves(self, task: str, params: dict) -> np.ndarray:
        """(EPOCHS, 6): the configuration's predicted targets at epochs 1..52."""
        return self.epochs(task, params, range(1, EPOCHS + 1))

    def _run(self, task: str, x_cont: np.ndarray) -> np.ndarray:
        x_cat = np.full((len(x_cont), 1), self.codes[self.check_task(task)], dtype=np.int32)
        return self.session.run(None, {"x_cat": x_cat, "x_cont": x_cont})[0]

    def default(self) -> dict:
        """The config space's default configuration (YAHPO's), epoch excluded."""
        return {k: h["default"] for k, h in self.params.items() if k != "epoch"}


class LCBenchSource:
    """One LCBench task as a replay source: the metric is val_accuracy (maximised, YAHPO's
    single-objective target); a trial's epochs 1..50 are the surrogate's epochs 2..51 (FIRST,
    LAST); an epoch costs one unit of compute (YAHPO's budget counts the fidelity); the true value
    of a configuration is its curve's best validation accuracy over those epochs (what the search
    records for a trial run to the end). The seed configuration is the config space's default.
    ASHA keeps the project's defaults for a space that names none (grace 1, reduction 2)."""

    metric, mode, max_t, penalty = "val_accuracy", "max", TRIAL_EPOCHS, 0.0
    full_trial_s = float(TRIAL_EPOCHS)
    has_health_stops = False

    def __init__(self, task: str, bench: LCBench | None = None):
        self.bench = bench or LCBench()
        self.task = self.bench.check_task(task)
        self.name = f"lcbench-{self.task}"
        self._cache: dict[tuple, np.ndarray] = {}

    @staticmethod
    def _key(params: dict) -> tuple:
        return tuple(float(params[k]) for k in CONT[1:])

    def true_cached(self, params: dict) -> np.ndarray | None:
        return self._cache.get(self._key(params))

    def _curve(self, params: dict) -> np.ndarray:
        key = self._key(params)
        if key not in self._cache:
            self._cache[key] = self.bench.epochs(self.task, params, range(FIRST, LAST + 1))
        return self._cache[key]

    def spec(self, budget: float, concurrency: int, seed: int):
        from refdet.config import TrainConfig
        from tune.space import SearchSpec

        return SearchSpec(name=self.name, path=DATA / "config_space.json", base=TrainConfig(),
                          params=self.param_specs(), metric=self.metric, mode=self.mode,
                          num_samples=max(1, int(round(budget))), max_concurrent=concurrency, seed=seed,
                          initial_points=(self.bench.default(),), penalty=self.penalty, max_t=self.max_t,
                          grace_period=1, reduction_factor=2, tie_break=None)

    def param_specs(self) -> dict:
        from tune.space import ParamSpec

        out = {}
        for key in CONT[1:]:
            h = self.bench.params[key]
            kind = "int" if h["type"] == "uniform_int" else ("loguniform" if h["log"] else "uniform")
            out[key] = ParamSpec(key, kind, float(h["lower"]), float(h["upper"]), log=bool(h["log"]))
            if kind == "int":
                out[key] = replace(out[key], low=int(h["lower"]), high=int(h["upper"]))
        return out

    def draw(self, params: dict, rng: np.random.Generator):
        """The configuration's curve, predicted lazily: most trials stop at the first rungs, and
        the ONNX call costs ~50 us per epoch row."""
        from benchmarks.replay.sources import Curve

        return Curve({"time_s": [], self.metric: [], "val/fresh": []}, extend=self._extend, length=TRIAL_EPOCHS,
                     key=(tuple(params[k] for k in CONT[1:]),))

    def _extend(self, curve, epoch: int) -> None:
        """Fill the trial's epochs up to `epoch` (and at least double what it has: the rungs)."""
        have = len(curve.series["time_s"])
        upto = min(TRIAL_EPOCHS, max(epoch, 2 * have))
        params = dict(zip(CONT[1:], curve.key[0]))
        if self.true_cached(params) is not None:
            y = self._cache[self._key(params)][have:upto, TARGETS.index("val_accuracy")]
        else:
            y = self.bench.epochs(self.task, params, range(FIRST + have, FIRST + upto))[:, TARGETS.index("val_accuracy")]
        curve.series[self.metric] += [float(v) for v in y]
        curve.series["time_s"] += [1.0] * (upto - have)
        curve.series["val/fresh"] += [1.0] * (upto - have)

    def true_value(self, params: dict) -> float:
        return float(self._curve(params)[:, TARGETS.index("val_accuracy")].max())

    def sample_params(self, rng: np.random.Generator, n: int) -> list[dict]:
        """n configurations drawn uniformly over the space (log where log), for the normaliser."""
        out = [{} for _ in range(n)]
        for key, p in self.param_specs().items():
            lo, hi = (math.log(p.low), math.log(p.high)) if p.log else (p.low, p.high)
            xs = rng.uniform(lo, hi, n)
            xs = np.exp(xs) if p.log else xs
            for d, x in zip(out, xs):
                d[key] = int(round(x)) if p.type == "int" else float(min(max(x, p.low), p.high))
        return out

    def reference(self, rng: np.random.Generator, n: int = 5000) -> tuple[float, float]:
        from benchmarks.replay.sources import sampled_reference

        return sampled_reference(self, rng, n)

    def true_values(self, params: list[dict]) -> np.ndarray:
        """Best val_accuracy over epochs FIRST..LAST for many configurations (chunked ONNX calls)."""
        rows = np.asarray([self.bench.check({**p, "epoch": 1}) for p in params], dtype=np.float32)
        x = np.repeat(rows, TRIAL_EPOCHS, axis=0)
        x[:, 0] = np.tile(np.arange(FIRST, LAST + 1, dtype=np.float32), len(rows))
        y = np.concatenate([self.bench._run(self.task, x[i:i + 50000]) for i in range(0, len(x), 50000)])
        return y[:, TARGETS.index("val_accuracy")].reshape(len(rows), TRIAL_EPOCHS).max(1)
