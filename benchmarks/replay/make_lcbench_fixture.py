"""Writes tests/fixtures/lcbench_reference.json: the reference package's (yahpo-gym's)
predictions for a fixed set of LCBench configurations, which this project's reader must match
(tests/test_lcbench.py). Runs in its own environment, since yahpo-gym pins numpy < 2 and
ConfigSpace <= 0.6.1:

    python -m venv /tmp/yahpo && /tmp/yahpo/bin/pip install yahpo-gym==1.0.2
    /tmp/yahpo/bin/python benchmarks/replay/make_lcbench_fixture.py

It imports nothing from this project. The reference reads the surrogate shipped here
(benchmarks/replay/data/lcbench), so the check is of the encoding, not of a second copy of the
model. Configurations: for every task of the config space, the space's default, one at the
lower and one at the upper corner, one mixed corner and two uniform draws (log where the space
is log), each at epoch 1, 52 or a drawn one (in turn). Rows: [task, values in `params` order,
predictions in `targets` order (9 significant digits: float32)].
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "benchmarks" / "replay" / "data"
OUT = ROOT / "tests" / "fixtures" / "lcbench_reference.json"


def configs(cs, rng: random.Random) -> list[dict]:
    hps = [h for h in cs.get_hyperparameters() if h.name not in ("OpenML_task_id", "epoch")]
    low = {h.name: h.lower for h in hps}
    high = {h.name: h.upper for h in hps}
    mixed = {h.name: (h.lower if i % 2 else h.upper) for i, h in enumerate(hps)}
    out = [{h.name: h.default_value for h in hps}, low, high, mixed]
    for _ in range(2):
        c = {}
        for h in hps:
            lo, hi = (math.log(h.lower), math.log(h.upper)) if h.log else (h.lower, h.upper)
            x = rng.uniform(lo, hi)
            x = math.exp(x) if h.log else x
            c[h.name] = int(round(min(max(x, h.lower), h.upper))) if "Integer" in type(h).__name__ else x
        out.append(c)
    return out


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["YAHPO_LOCAL_CONFIG"] = str(Path(tmp) / "settings.yaml")
        from yahpo_gym import benchmark_set, local_config

        local_config.init_config(data_path=str(DATA))
        from importlib.metadata import version

        bench = benchmark_set.BenchmarkSet("lcbench")
        rng = random.Random(0)
        rows = []
        names = [h.name for h in bench.config_space.get_hyperparameters() if h.name != "OpenML_task_id"]
        for t, task in enumerate(bench.instances):
            for i, c in enumerate(configs(bench.config_space, rng)):
                epoch = (1, 52, rng.randint(2, 51))[(t + i) % 3]
                cfg = {"OpenML_task_id": task, "epoch": epoch, **c}
                y = bench.objective_function(cfg)[0]
                rows.append([task, [cfg[k] for k in names], [float(f"{y[k]:.9g}") for k in bench.config.y_names]])
        out = {"reference": f"yahpo-gym {version('yahpo-gym')} (BenchmarkSet('lcbench').objective_function), "
                            f"onnxruntime {version('onnxruntime')}, numpy {version('numpy')}",
               "params": names, "targets": list(bench.config.y_names), "tasks": list(bench.instances),
               "rows": rows}
    OUT.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"{len(rows)} predictions for {len(out['tasks'])} tasks -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
