"""--confirm-top K --seeds S: re-run the K best configurations of a search with S new seeds
at the search budget (max_t epochs, no early stopping), so the exported configuration is not
a lucky seed. Results: results/<name>/confirm/ (Ray trials) and confirm.json (per config:
the values of each seed, mean, std); the report then picks the best config by mean.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from ray import tune

from refdet.io import atomic_write_text
from tune.results import collect_trials
from tune.session import ray_session, run_config
from tune.tb import TrialTensorBoard
from tune.trainable import confirm_trainable

SEED_BASE = 1000  # confirmation seeds: 1000, 1001, ... (searches use small seeds)


def confirm_top(exp: Path, spec, k: int, seeds: int, address: str | None = None) -> list[dict]:
    rows = [r for r in collect_trials(exp, spec) if r.best is not None and r.reason in ("completed", "asha")]
    top = sorted(rows, key=lambda r: -spec.sign * r.best)[:k]
    if not top:
        print("confirm: no healthy trial to confirm")
        return []
    candidates = [r.params for r in top]
    with ray_session(address):
        trainable = tune.with_resources(tune.with_parameters(confirm_trainable, spec=spec, candidates=candidates),
                                        {"cpu": spec.cpu, "gpu": spec.gpu})
        tuner = tune.Tuner(
            trainable,
            param_space={"candidate": tune.grid_search(list(range(len(candidates)))),
                         "seed": tune.grid_search([SEED_BASE + i for i in range(seeds)])},
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent, reuse_actors=True),
            run_config=run_config("confirm", str(exp), keep=1,
                                  callbacks=[TrialTensorBoard(["candidate", "seed"], max_t=spec.max_t)]),
        )
        grid = tuner.fit()
    values: dict[int, list[float]] = {i: [] for i in range(len(candidates))}
    for res in grid:
        if res.error or res.metrics_dataframe is None or res.config is None:
            continue
        df = res.metrics_dataframe
        healthy = df[df.get("health/fatal", 0) == 0] if "health/fatal" in df else df
        col = healthy[spec.metric] if spec.metric in healthy else []
        if len(col):
            values[res.config["candidate"]].append(spec.best_of(col.tolist()))
        else:
            values[res.config["candidate"]].append(float(spec.penalty))  # health-stopped seed
    out = []
    for i, r in enumerate(top):
        v = values[i]
        out.append({"source_trial": r.trial_id, "params": r.params, "search_value": r.best, "values": v,
                    "mean": statistics.fmean(v) if v else math.nan,
                    "std": statistics.pstdev(v) if len(v) > 1 else 0.0})
    atomic_write_text(exp / "confirm.json", json.dumps(out, indent=2))
    return out
