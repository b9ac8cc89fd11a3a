"""The learning-curve table: what `benchmarks/record_curves.py` writes and the replay reads
(as recorded, sources/recorded.py, or through a model of it, sources/model.py).

One JSON object per line (benchmarks/curves/<space>.jsonl). The first line is the header:

    {"table": "refdet-curves", "version": 1, "space": "smoke", "metric": "val/st_iou", "mode": "max",
     "max_t": 4, "penalty": 0.0, "params": {path: {type, low, high, log, values}}, "recorded": {...}}

then one line per recorded run (a configuration with a seed, trained to max_t with every
health rule live, no early stopping):

    {"config": 3, "seed": 0, "params": {...}, "time_s": [per epoch], "val/st_iou": [...], ...,
     "stop": null | {"reason": "grad_explosion", "rule": "grad_norm", "step": 37}, "error": null}

Per-epoch lists are aligned with epochs 1..len; a health-stopped run ends at its fatal report
(its last `time_s` is the partial epoch it ran). A run whose trial raised has `error` set.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

TABLE_KIND, TABLE_VERSION = "refdet-curves", 1


class CurveError(ValueError):
    """The curve table is unreadable or inconsistent; the message names the file and line."""


@dataclass
class Run:
    config: int
    seed: int
    params: dict
    series: dict[str, list[float]]  # metric -> per-epoch values; "time_s" included
    stop: dict | None = None
    error: str | None = None

    @property
    def epochs(self) -> int:
        return len(self.series.get("time_s", []))


@dataclass
class CurveTable:
    path: Path
    header: dict
    runs: list[Run] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return self.header["metric"]

    @property
    def sign(self) -> int:
        return 1 if self.header["mode"] == "max" else -1

    @property
    def max_t(self) -> int:
        return int(self.header["max_t"])

    @property
    def penalty(self) -> float:
        return float(self.header.get("penalty", 0.0))

    def configs(self) -> dict[int, list[Run]]:
        out: dict[int, list[Run]] = {}
        for r in self.runs:
            out.setdefault(r.config, []).append(r)
        return out

    def run_value(self, run: Run, epochs: int | None = None, rule: str = "best") -> float:
        """What the search would record for this run at full budget (or after its first
        `epochs`): the best fresh metric over those epochs (`rule` "last": the last fresh one;
        "mean2": the mean of the last two fresh ones); a crashed run, or one health-stopped
        within them, scores the penalty (as confirm.py)."""
        n = run.epochs if epochs is None else min(epochs, run.epochs)
        if run.error is not None or (run.stop is not None and n >= run.epochs):
            return self.penalty
        values = run.series.get(self.metric, [])[:n]
        fresh = (run.series.get("val/fresh") or [1.0] * len(values))[:n]
        vals = [v for v, f in zip(values, fresh) if f and _finite(v)]
        if not vals:
            return self.penalty
        if rule == "last":
            return float(vals[-1])
        if rule == "mean2":
            return float(sum(vals[-2:]) / len(vals[-2:]))
        return float(max(vals) if self.sign > 0 else min(vals))

    def config_value(self, config: int) -> float:
        """The value to expect on a re-run of a configuration: the mean over its recorded seeds."""
        runs = self.configs()[config]
        return sum(self.run_value(r) for r in runs) / len(runs)

    def best_value(self) -> float:
        vals = [self.config_value(c) for c in self.configs()]
        return max(vals) if self.sign > 0 else min(vals)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def round_sig(v, digits: int = 5):
    if not _finite(v) or v == 0:
        return v
    return float(f"{v:.{digits}g}")


def write_table(path: Path, header: dict, runs: list[Run]) -> None:
    from refdet.io import atomic_write_text

    lines = [json.dumps({"table": TABLE_KIND, "version": TABLE_VERSION, **header}, sort_keys=False)]
    for r in sorted(runs, key=lambda r: (r.config, r.seed)):
        lines.append(json.dumps({"config": r.config, "seed": r.seed, "params": r.params,
                                 **{k: [round_sig(x) for x in v] for k, v in r.series.items()},
                                 "stop": r.stop, "error": r.error}))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_table(path: str | Path) -> CurveTable:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CurveError(f"{path}: cannot read ({exc.strerror or exc})") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise CurveError(f"{path}: empty")
    rows = []
    for i, ln in enumerate(lines, 1):
        try:
            row = json.loads(ln)
        except json.JSONDecodeError as exc:
            raise CurveError(f"{path}:{i}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise CurveError(f"{path}:{i}: expected a JSON object")
        rows.append(row)
    header = rows[0]
    if header.get("table") != TABLE_KIND or header.get("version") != TABLE_VERSION:
        raise CurveError(f"{path}:1: not a {TABLE_KIND} v{TABLE_VERSION} header")
    for key in ("metric", "mode", "max_t", "params"):
        if key not in header:
            raise CurveError(f"{path}:1: header lacks '{key}'")
    table = CurveTable(path, header)
    for i, row in enumerate(rows[1:], 2):
        try:
            series = {k: [float(x) for x in v] for k, v in row.items()
                      if k not in ("config", "seed", "params", "stop", "error")}
            run = Run(int(row["config"]), int(row["seed"]), dict(row["params"]), series, row.get("stop"), row.get("error"))
        except (KeyError, TypeError, ValueError) as exc:
            raise CurveError(f"{path}:{i}: bad run record ({exc!r})") from None
        if set(run.params) != set(header["params"]):
            raise CurveError(f"{path}:{i}: params {sorted(run.params)} differ from the header's")
        lengths = {k: len(v) for k, v in series.items()}
        if "time_s" not in series or len(set(lengths.values())) > 1:
            raise CurveError(f"{path}:{i}: per-epoch series must all have one length with time_s ({lengths})")
        if run.epochs > table.max_t or (run.epochs < table.max_t and run.stop is None and run.error is None):
            raise CurveError(f"{path}:{i}: {run.epochs} epochs, max_t {table.max_t}, and no stop or error")
        table.runs.append(run)
    if not table.runs:
        raise CurveError(f"{path}: no runs")
    return table


class Nearest:
    """Answers a proposed configuration with the recorded configuration nearest to it in
    normalised coordinates: each numeric parameter scaled to [0, 1] over its range (in log
    space where the space is log), a categorical one 0 if equal else 1; Euclidean distance."""

    def __init__(self, table: CurveTable):
        self.specs = table.header["params"]
        self.keys = sorted(self.specs)
        groups = table.configs()
        self.configs = sorted(groups)
        self.points = [self.coords(groups[c][0].params) for c in self.configs]

    def _coord(self, key: str, v):
        p = self.specs[key]
        if p["type"] == "choice":
            return v
        lo, hi, x = float(p["low"]), float(p["high"]), float(v)
        if p.get("log") or p["type"] == "loguniform":
            lo, hi, x = math.log(lo), math.log(hi), math.log(max(x, 1e-300))
        return (x - lo) / (hi - lo) if hi > lo else 0.0

    def coords(self, params: dict) -> list:
        return [self._coord(k, params[k]) for k in self.keys]

    def __call__(self, params: dict) -> int:
        q = self.coords(params)

        def dist(p):
            return sum((0.0 if a == b else 1.0) if isinstance(a, str) or isinstance(b, str) or
                       self.specs[k]["type"] == "choice" else (a - b) ** 2 for k, a, b in zip(self.keys, p, q))

        return min(zip(self.configs, self.points), key=lambda cp: (dist(cp[1]), cp[0]))[0]
