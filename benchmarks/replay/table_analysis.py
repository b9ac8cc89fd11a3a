"""Analyses read off a recorded curve table itself (no search replayed): how often a
secondary signal decides a tie at a rung the right way, and what confirming the top
configurations with more seeds buys. They chose `scheduler.tie_break: val/ap50` and the
automatic confirmation of small searches (benchmarks/README.md, 2026-12-02).
"""

from __future__ import annotations

import math
import random
import statistics

from benchmarks.replay.sources.table import CurveTable

TIE_CANDIDATES = ("val/loss", "train/loss", "val/ap50", "val/recall")  # secondary signals the tie analysis scores


def tie_analysis(table: CurveTable, rungs: list[int], secondary: str = "val/loss") -> list[dict]:
    """Rung decisions on a flat metric, read off the recorded curves: for every pair of runs
    of different configurations that tie exactly on the metric at a rung (both healthy there,
    fresh), does the better `secondary` value at that rung belong to the configuration with
    the better full-budget value? A tie left standing is a coin flip (0.5) at best."""
    from refdet.metrics import lower_is_better

    sec_sign = -1 if lower_is_better(secondary) else 1
    out = []
    for r in rungs:
        if r >= table.max_t:
            continue
        at = []
        for run in table.runs:
            if run.epochs < r or (run.stop is not None and run.epochs == r) or secondary not in run.series:
                continue
            fresh = run.series.get("val/fresh", [1.0] * run.epochs)[r - 1]
            v, sec = run.series[table.metric][r - 1], run.series[secondary][r - 1]
            if fresh and math.isfinite(v) and math.isfinite(sec) and sec >= 0:  # -1.0 marks a non-finite loss
                at.append((run.config, v, sec_sign * sec, table.config_value(run.config)))
        agree = disagree = tied_pairs = 0
        for i in range(len(at)):
            for j in range(i + 1, len(at)):
                a, b = at[i], at[j]
                if a[0] == b[0] or a[1] != b[1]:
                    continue
                tied_pairs += 1
                if a[2] == b[2] or a[3] == b[3]:
                    continue
                if (a[2] > b[2]) == (table.sign * a[3] > table.sign * b[3]):
                    agree += 1
                else:
                    disagree += 1
        zero_share = sum(1 for x in at if x[1] == 0.0) / len(at) if at else 0.0
        out.append({"rung": r, "runs": len(at), "share_at_zero": round(zero_share, 3), "tied_pairs": tied_pairs,
                    "secondary_right": agree, "secondary_wrong": disagree,
                    "right_fraction": round(agree / (agree + disagree), 3) if agree + disagree else None})
    return out


def confirm_analysis(table: CurveTable, k: int = 2, extra: int = 2, draws: int = 4000, seed: int = 0) -> dict | None:
    """Does confirming the top `k` with `extra` more seeds pick better configurations than the
    single search value? On the configurations recorded with >= 1 + extra seeds: each draw gives
    every configuration one random seed as its search value; without confirmation the best
    search value is exported, with it the top k are re-run on their other seeds and the best
    mean of those is exported. Scored by the exported configuration's mean over all its seeds."""
    rng = random.Random(seed)
    groups = {c: runs for c, runs in table.configs().items() if len(runs) >= 1 + extra}
    if len(groups) < k + 1:
        return None
    plain, confirmed, curse = [], [], []
    for _ in range(draws):
        picks = {c: rng.randrange(len(runs)) for c, runs in groups.items()}
        search = {c: table.run_value(groups[c][i]) for c, i in picks.items()}
        order = sorted(groups, key=lambda c: -table.sign * search[c])
        plain.append(table.config_value(order[0]))
        curse.append(search[order[0]] - table.config_value(order[0]))
        means = {}
        for c in order[:k]:
            others = [r for j, r in enumerate(groups[c]) if j != picks[c]]
            means[c] = statistics.fmean(table.run_value(r) for r in rng.sample(others, extra))
        confirmed.append(table.config_value(max(means, key=lambda c: table.sign * means[c])))
    best = max(table.config_value(c) * table.sign for c in groups) * table.sign
    return {"configs": len(groups), "k": k, "extra_seeds": extra, "cost_full_trials": k * extra, "draws": draws,
            "best_of_these": best, "exported_mean_plain": statistics.fmean(plain),
            "exported_mean_confirmed": statistics.fmean(confirmed),
            "search_value_minus_rerun_mean": statistics.fmean(curse)}
