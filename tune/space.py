"""Search-space YAML -> a validated `SearchSpec`. Nothing reaches Ray before this passes.

A space file (see search_spaces/*.yaml):

    name: smoke                      # experiment name: results/<name>
    base: smoke                      # preset name, TrainConfig YAML (relative to this file), or a mapping
    base_overrides: {data.root: ...} # optional dotted-key overrides of the base
    params:                          # dotted TrainConfig paths -> distributions
      optim.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
      optim.warmup_epochs: {type: int, low: 0, high: 3}          # inclusive; optional step, log
      loss.dfl_weight: {type: uniform, low: 0.25, high: 2.0}     # optional step
      data.n_way: {type: choice, values: [2, 4]}
    search: {metric: val/st_iou, mode: max, num_samples: 8, max_concurrent: 2, seed: 0,
             initial_points: [{...}], penalty: 0.0, confirm_top: 2, confirm_seeds: 2, max_failures: 2}
    scheduler: {type: asha, max_t: 4, grace_period: 2, reduction_factor: 2}
    health: {patience: 3, ...}       # HealthConfig overrides
    resources: {cpu: 1, gpu: 0}      # per trial; fractions allowed (gpu: 0.5 packs two per GPU)
    final_epochs: 100                # epochs written into best_config.yaml

Every trial runs `scheduler.max_t` epochs at most: the base's `epochs` is set to it.
Errors are `SpaceError`s naming the file and the key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refdet.config import (
    ConfigError,
    HealthConfig,
    TrainConfig,
    coerce,
    field_type,
    load_yaml_mapping,
)
from refdet.metrics import SEARCHABLE_METRICS, lower_is_better

ROOT = Path(__file__).resolve().parent.parent
SPACES_DIR = ROOT / "search_spaces"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
SEARCH_METRICS = SEARCHABLE_METRICS
TOP_KEYS = {"name", "base", "base_overrides", "params", "search", "scheduler", "health", "resources", "final_epochs"}
DIST_TYPES = {"uniform", "loguniform", "int", "choice"}
SMALL_SEARCH, CONFIRM_DEFAULT = 16, 2  # see SearchSpec.confirm_plan
TIE_BREAK_DEFAULT = {"val/st_iou": "val/ap50"}  # see tune/scheduler.py and docs/design.md


class SpaceError(ValueError):
    """The search space is invalid; the message names the file and key."""


@dataclass(frozen=True)
class ParamSpec:
    path: str
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    values: tuple = ()

    def distribution(self):
        import optuna.distributions as d

        if self.type == "choice":
            return d.CategoricalDistribution(self.values)
        if self.type == "int":
            return d.IntDistribution(int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return d.FloatDistribution(self.low, self.high, log=self.type == "loguniform", step=self.step)

    def describe(self) -> str:
        if self.type == "choice":
            return f"choice {list(self.values)}"
        extra = (f", step {self.step}" if self.step else "") + (", log" if self.log else "")
        return f"{self.type} [{self.low:g}, {self.high:g}]{extra}"


@dataclass(frozen=True)
class SearchSpec:
    name: str
    path: Path
    base: TrainConfig
    params: dict[str, ParamSpec]
    metric: str = "val/st_iou"
    mode: str = "max"
    num_samples: int = 8
    max_concurrent: int = 2
    seed: int = 0
    initial_points: tuple[dict, ...] = ()
    penalty: float = 0.0
    max_t: int = 4
    grace_period: int = 2
    reduction_factor: int = 2
    cpu: float = 1.0
    gpu: float = 0.0
    final_epochs: int = 100
    tie_break: str | None = None
    confirm_top: int | None = None  # None: CONFIRM_DEFAULT for a small search, else 0
    confirm_seeds: int = 2
    max_failures: int = 2  # retries of a trial whose worker died (Tune's FailureConfig)
    raw: dict = field(default_factory=dict, compare=False)

    @property
    def sign(self) -> int:
        """+1 when the metric is maximised, -1 when minimised: `sign * value` is "higher is better"."""
        return 1 if self.mode == "max" else -1

    def confirm_plan(self) -> tuple[int, int]:
        """(K, seeds): after the search, re-run its K best configurations with `seeds` new seeds
        and export the best by mean. Automatic (search.confirm_top unset): the top 2 with 2
        seeds for a search of at most SMALL_SEARCH trials, where a single seed's luck decides
        the export (benchmarks/README.md, replay of recorded curves); none for larger ones."""
        if self.confirm_top is not None:
            return self.confirm_top, self.confirm_seeds
        return (CONFIRM_DEFAULT if self.num_samples <= SMALL_SEARCH else 0), self.confirm_seeds

    def best_of(self, values) -> float:
        return float(max(values) if self.mode == "max" else min(values))

    def trial_config(self, params: dict[str, Any]) -> TrainConfig:
        """The TrainConfig one trial trains with: base + sampled params."""
        return self.base.with_overrides(params)

    def summary(self) -> str:
        lines = [f"search space {self.name} ({self.path})",
                 f"  metric {self.metric} ({self.mode}); {self.num_samples} trials, {self.max_concurrent} at a time, seed {self.seed}",
                 f"  ASHA on epochs: max_t {self.max_t}, grace {self.grace_period}, reduction {self.reduction_factor}"
                 + (f", ties broken by {self.tie_break}" if self.tie_break else ""),
                 f"  per trial: {self.cpu:g} CPU, {self.gpu:g} GPU; health-stopped trials report {self.penalty:g}"]
        k, seeds = self.confirm_plan()
        if k:
            lines.append(f"  then the {k} best re-run with {seeds} new seeds each; the best by mean is exported")
        lines += [f"  {p.path}: {p.describe()}" for p in self.params.values()]
        for pt in self.initial_points:
            lines.append(f"  first trial (enqueued): {pt}")
        return "\n".join(lines)


def resolve_space_path(name_or_path: str) -> Path:
    """`--space NAME` finds search_spaces/NAME(.yaml); anything else is a path."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (SPACES_DIR / name_or_path, SPACES_DIR / f"{name_or_path}.yaml"):
        if cand.is_file():
            return cand
    known = ", ".join(sorted(x.stem for x in SPACES_DIR.glob("*.yaml")))
    raise SpaceError(f"{name_or_path}: no such file, and no search_spaces/{name_or_path}.yaml (known: {known})")


def _section(raw: dict, key: str, where: str, allowed: set[str]) -> dict:
    sec = raw.get(key, {}) or {}
    if not isinstance(sec, dict):
        raise SpaceError(f"{where}: {key}: expected a mapping, got {type(sec).__name__}")
    unknown = sorted(set(sec) - allowed)
    if unknown:
        raise SpaceError(f"{where}: {key}.{unknown[0]}: unknown key (known: {', '.join(sorted(allowed))})")
    return sec


def _num(value: Any, key: str, where: str, typ: type = float, minimum: float | None = None) -> Any:
    try:
        out = coerce(value, typ, key)
    except ConfigError as exc:
        raise SpaceError(f"{where}: {exc}") from None
    if minimum is not None and out < minimum:
        raise SpaceError(f"{where}: {key}: must be >= {minimum} (got {value!r})")
    return out


HEALTH_NOT_SEARCHABLE = "a health verdict must not depend on a searched value (set it in the space's health section)"
NOT_SEARCHABLE = {
    "epochs": "a trial's epochs are scheduler.max_t",
    "val_interval": "ASHA's rungs must fall on validated epochs; set it in base_overrides",
    "device_share": "it is the trial's resources.gpu",
    "host_share": "it is the trial's share of its node, from its resources",
}


LOSS_PENALTY_MIN = 1e6  # a loss no trained run reports: the worst value of a minimised loss


def check_penalty(metric: str, penalty: float, where: str) -> None:
    """The penalty is what a health-stopped trial, and a value not measured yet, report: it must
    be no better than any value the metric can take, or a stopped trial would read as a good
    one. ST-IoU, AP and recall lie in [0, 1] (maximised: penalty <= 0); losses are >= 0 and
    unbounded (minimised: penalty >= 1e6)."""
    if lower_is_better(metric) and penalty < LOSS_PENALTY_MIN:
        raise SpaceError(f"{where}: search.penalty: {penalty:g} could be better than a real {metric}; a minimised "
                         f"loss needs a penalty of at least {LOSS_PENALTY_MIN:g}")
    if not lower_is_better(metric) and penalty > 0:
        raise SpaceError(f"{where}: search.penalty: {penalty:g} could be better than a real {metric} (in [0, 1]); "
                         "it must be <= 0")


def asha_rungs(grace: int, reduction: int, max_t: int) -> list[int]:
    """The epochs where ASHA compares trials (one bracket; as ray.tune's ASHAScheduler places them)."""
    n = int(math.log(max_t / grace) / math.log(reduction) + 1)
    return sorted(grace * reduction**k for k in range(n))


def check_spec(spec: SearchSpec) -> None:
    """What a space and its command-line changes must agree on, checked after either."""
    check_rungs_validated(spec)
    check_device(spec)
    check_truncation(spec)


def check_truncation(spec: SearchSpec) -> None:
    """optim.schedule_epochs makes each trial the first max_t epochs of a longer run; that run is
    the export (final_epochs), or the trials rank configurations for a run nobody makes."""
    total = spec.base.optim.schedule_epochs
    if total and total != spec.final_epochs:
        raise SpaceError(f"{spec.path}: optim.schedule_epochs {total} makes each trial the first {spec.max_t} epochs "
                         f"of a {total}-epoch run, but final_epochs is {spec.final_epochs}, so the exported run would "
                         f"follow another schedule: set final_epochs: {total}, or optim.schedule_epochs: 0 (trials "
                         f"with their own schedule)")


def check_device(spec: SearchSpec) -> None:
    """A trial runs where its Ray resources put it (tune/trainable.py build_trial_config): a base
    that asks for CUDA while the trials get no GPU would train on the CPU without saying so."""
    device = spec.base.device
    if device.startswith("cuda") and spec.gpu == 0:
        raise SpaceError(f"{spec.path}: device: {device}, but resources.gpu is 0, so every trial would run on the "
                         f"CPU: give the trials a GPU (resources.gpu: 1, or 0.5 to share one), or device: auto")
    if device.startswith("cuda:"):
        raise SpaceError(f"{spec.path}: device: {device}: Ray chooses each trial's GPU (resources.gpu); "
                         f"use device: cuda or auto")


def check_rungs_validated(spec: SearchSpec) -> None:
    """Only fresh validation values may reach ASHA: with val_interval > 1 every rung below
    max_t must be a validated epoch (the last epoch always is)."""
    every = spec.base.val_interval
    stale = [r for r in asha_rungs(spec.grace_period, spec.reduction_factor, spec.max_t)
             if r < spec.max_t and r % every]
    if stale:
        raise SpaceError(f"{spec.path}: ASHA rungs at epochs {stale} are not validated with val_interval {every} "
                         f"(rungs {asha_rungs(spec.grace_period, spec.reduction_factor, spec.max_t)}): choose "
                         f"scheduler.grace_period and reduction_factor so each rung is a multiple of {every}, "
                         f"or val_interval 1")


def _param(path: str, spec: Any, where: str) -> ParamSpec:
    key = f"params.{path}"
    try:
        ftype = field_type(path)
    except ConfigError as exc:
        raise SpaceError(f"{where}: {key}: not a TrainConfig key ({exc})") from None
    if path.startswith("health.") or path in NOT_SEARCHABLE:
        raise SpaceError(f"{where}: {key}: cannot be searched: {NOT_SEARCHABLE.get(path, HEALTH_NOT_SEARCHABLE)}")
    if not isinstance(spec, dict):
        raise SpaceError(f"{where}: {key}: expected a mapping with 'type'")
    kind = spec.get("type")
    if kind not in DIST_TYPES:
        raise SpaceError(f"{where}: {key}.type: must be one of {sorted(DIST_TYPES)} (got {kind!r})")
    allowed = {"type", "values"} if kind == "choice" else {"type", "low", "high", "step", "log"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise SpaceError(f"{where}: {key}.{unknown[0]}: unknown key for {kind}")
    if kind == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise SpaceError(f"{where}: {key}.values: expected a non-empty list")
        try:
            vals = tuple(coerce(v, ftype, key) for v in values)
        except ConfigError as exc:
            raise SpaceError(f"{where}: {exc}") from None
        return ParamSpec(path, kind, values=vals)
    if kind == "int" and ftype is not int:
        raise SpaceError(f"{where}: {key}: 'int' needs an integer field; {path} is {ftype.__name__}")
    if kind in ("uniform", "loguniform") and ftype is not float:
        raise SpaceError(f"{where}: {key}: '{kind}' needs a float field; {path} is {ftype.__name__} "
                         f"(use type: int or choice)")
    num_t = int if kind == "int" else float
    for k in ("low", "high"):
        if k not in spec:
            raise SpaceError(f"{where}: {key}.{k}: missing")
    low, high = _num(spec["low"], f"{key}.low", where, num_t), _num(spec["high"], f"{key}.high", where, num_t)
    log = kind == "loguniform" or bool(spec.get("log", False))
    if not isinstance(spec.get("log", False), bool):
        raise SpaceError(f"{where}: {key}.log: expected true or false")
    step = spec.get("step")
    if step is not None:
        step = _num(step, f"{key}.step", where, num_t)
        if step <= 0:
            raise SpaceError(f"{where}: {key}.step: must be > 0")
        if log:
            raise SpaceError(f"{where}: {key}: step and log cannot be combined")
    if not low < high:
        raise SpaceError(f"{where}: {key}: low must be < high (got {low} and {high})")
    if log and low <= 0:
        raise SpaceError(f"{where}: {key}: a log range needs low > 0 (got {low})")
    return ParamSpec(path, kind, low, high, step, log)


def _in_range(p: ParamSpec, value: Any) -> bool:
    if p.type == "choice":
        return value in p.values
    return isinstance(value, (int, float)) and not isinstance(value, bool) and p.low <= value <= p.high


def _base(raw: dict, path: Path, epochs: int) -> TrainConfig:
    """The trials' base config; `epochs` (scheduler.max_t) is set with base_overrides, so a
    value checked against the epochs (optim.schedule_epochs) sees the trials' own."""
    base = raw.get("base", "smoke")
    where = str(path)
    try:
        if isinstance(base, dict):
            cfg = TrainConfig.from_dict(base)
        elif isinstance(base, str):
            rel = (path.parent / base)
            cfg = TrainConfig.from_yaml(rel) if rel.suffix in (".yaml", ".yml") and rel.is_file() else TrainConfig.load(base)
        else:
            raise SpaceError(f"{where}: base: expected a preset name, a YAML path or a mapping")
        overrides = raw.get("base_overrides") or {}
        if not isinstance(overrides, dict):
            raise SpaceError(f"{where}: base_overrides: expected a mapping")
        cfg = cfg.with_overrides({**overrides, "epochs": epochs})
        health = _section(raw, "health", where, {f.name for f in HealthConfig.__dataclass_fields__.values()})
        if health:
            cfg = cfg.with_overrides({f"health.{k}": v for k, v in health.items()})
    except ConfigError as exc:
        raise SpaceError(f"{where}: base: {exc}") from None
    return cfg


def _initial_points(points: Any, params: dict[str, ParamSpec], where: str) -> list[dict]:
    """search.initial_points: each sets exactly the searched params, typed and in range."""
    if not isinstance(points, list):
        raise SpaceError(f"{where}: search.initial_points: expected a list of mappings")
    initial = []
    for i, pt in enumerate(points):
        if not isinstance(pt, dict) or set(pt) != set(params):
            raise SpaceError(f"{where}: search.initial_points[{i}]: must set exactly the searched params "
                             f"({', '.join(params)})")
        fixed = {}
        for k, v in pt.items():
            p = params[k]
            try:
                v = coerce(v, int if p.type == "int" else type(p.values[0]) if p.type == "choice" else float, k)
            except ConfigError as exc:
                raise SpaceError(f"{where}: search.initial_points[{i}]: {exc}") from None
            if not _in_range(p, v):
                raise SpaceError(f"{where}: search.initial_points[{i}].{k}: {v!r} is outside {p.describe()}")
            fixed[k] = v
        initial.append(fixed)
    return initial


def _resources(raw: dict, where: str) -> tuple[float, float]:
    res = _section(raw, "resources", where, {"cpu", "gpu"})
    cpu = _num(res.get("cpu", 1), "resources.cpu", where, float)
    gpu = _num(res.get("gpu", 0), "resources.gpu", where, float, 0)
    if cpu <= 0:
        raise SpaceError(f"{where}: resources.cpu: must be > 0")
    if gpu > 1 and not float(gpu).is_integer():
        raise SpaceError(f"{where}: resources.gpu: fractions are for sharing one GPU (<= 1), got {gpu}")
    return cpu, gpu


def load_space(name_or_path: str) -> SearchSpec:
    path = resolve_space_path(name_or_path)
    where = str(path)
    try:
        raw = load_yaml_mapping(path)
    except ConfigError as exc:
        raise SpaceError(str(exc)) from None
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise SpaceError(f"{where}: {unknown[0]}: unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not SAFE_NAME.match(name) or name in (".", ".."):
        raise SpaceError(f"{where}: name: {name!r} must be a plain folder name (letters, digits, _ . -)")
    params_raw = raw.get("params")
    if not isinstance(params_raw, dict) or not params_raw:
        raise SpaceError(f"{where}: params: expected a non-empty mapping of TrainConfig paths")
    params = {str(k): _param(str(k), v, where) for k, v in params_raw.items()}

    search = _section(raw, "search", where, {"metric", "mode", "num_samples", "max_concurrent", "seed",
                                              "initial_points", "penalty", "confirm_top", "confirm_seeds",
                                              "max_failures"})
    metric = search.get("metric", "val/st_iou")
    if metric not in SEARCH_METRICS:
        raise SpaceError(f"{where}: search.metric: {metric!r} is not a reported metric (one of {', '.join(SEARCH_METRICS)})")
    mode = search.get("mode", "max")
    if mode not in ("min", "max"):
        raise SpaceError(f"{where}: search.mode: must be min or max (got {mode!r})")
    num_samples = _num(search.get("num_samples", 8), "search.num_samples", where, int, 1)
    max_concurrent = _num(search.get("max_concurrent", 2), "search.max_concurrent", where, int, 1)
    seed = _num(search.get("seed", 0), "search.seed", where, int, 0)
    if mode != ("min" if lower_is_better(metric) else "max"):
        raise SpaceError(f"{where}: search.mode: {metric} is {'minimised' if lower_is_better(metric) else 'maximised'}"
                         f" (mode {'min' if lower_is_better(metric) else 'max'}), not {mode}")
    penalty = _num(search.get("penalty", 0.0 if mode == "max" else LOSS_PENALTY_MIN), "search.penalty", where)
    check_penalty(metric, penalty, where)
    initial = _initial_points(search.get("initial_points", []) or [], params, where)
    confirm_top = search.get("confirm_top")
    if confirm_top is not None:
        confirm_top = _num(confirm_top, "search.confirm_top", where, int, 0)
    confirm_seeds = _num(search.get("confirm_seeds", 2), "search.confirm_seeds", where, int, 1)
    max_failures = _num(search.get("max_failures", 2), "search.max_failures", where, int, 0)

    sched = _section(raw, "scheduler", where, {"type", "max_t", "grace_period", "reduction_factor", "tie_break"})
    if sched.get("type", "asha") != "asha":
        raise SpaceError(f"{where}: scheduler.type: only 'asha' is supported")
    max_t = _num(sched.get("max_t", 4), "scheduler.max_t", where, int, 1)
    grace = _num(sched.get("grace_period", 1), "scheduler.grace_period", where, int, 1)
    reduction = _num(sched.get("reduction_factor", 2), "scheduler.reduction_factor", where, int, 2)
    if grace > max_t:
        raise SpaceError(f"{where}: scheduler.grace_period: must be <= max_t ({grace} > {max_t})")
    tie_break = sched.get("tie_break", TIE_BREAK_DEFAULT.get(metric))
    if tie_break is not None and (tie_break not in SEARCH_METRICS or tie_break == metric):
        raise SpaceError(f"{where}: scheduler.tie_break: {tie_break!r} must be a reported metric other than "
                         f"search.metric (one of {', '.join(m for m in SEARCH_METRICS if m != metric)}), or null")

    cpu, gpu = _resources(raw, where)
    final_epochs = _num(raw.get("final_epochs", 100), "final_epochs", where, int, 1)

    base = _base(raw, path, max_t)
    try:
        base = base.resolve_paths()
        for pt in initial or [{k: midpoint(p) for k, p in params.items()}]:
            base.with_overrides(pt)  # every path and type is checked against TrainConfig here
    except ConfigError as exc:
        raise SpaceError(f"{where}: {exc}") from None
    spec = SearchSpec(name, path.resolve(), base, params, metric, mode, num_samples, max_concurrent, seed,
                      tuple(initial), penalty, max_t, grace, reduction, cpu, gpu, final_epochs, tie_break, confirm_top,
                      confirm_seeds, max_failures, raw)
    check_spec(spec)
    return spec


def midpoint(p: ParamSpec) -> Any:
    if p.type == "choice":
        return p.values[0]
    if p.type == "int":
        return int(p.low)
    return math.sqrt(p.low * p.high) if p.log else (p.low + p.high) / 2
