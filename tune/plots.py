"""Plots of a search (PNG, matplotlib Agg): history, importances, per-parameter scatter."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from refdet.io import atomic_path  # noqa: E402

COLORS = {"completed": "tab:green", "asha": "tab:blue", "running": "tab:gray", "error": "black",
          "oom": "tab:red", "nonfinite": "tab:purple", "grad_explosion": "tab:orange", "loss_spike": "tab:pink",
          "dfl_divergence": "tab:brown", "cpe_zero": "tab:olive", "memory_budget": "tab:cyan",
          "memory_leak": "darkred", "dead_detector": "gold"}


def _save(fig, path: Path) -> None:
    try:
        with atomic_path(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def write_plots(report, study, records: list) -> list[Path]:
    """`records`: the study's current trials (no superseded record: tune.results.current_records)."""
    out = report.exp / "plots"
    out.mkdir(exist_ok=True)
    written = [history_plot(report, out / "history.png")]
    imp = importance_plot(study, records, out / "importances.png")
    if imp:
        written.append(imp)
    for key in report.spec.params:
        written.append(scatter_plot(report, key, out / f"param_{key.replace('.', '_')}.png"))
    return written


def history_plot(report, path: Path) -> Path:
    """Each trial's metric per epoch (lines), and the best-so-far over trial order."""
    spec = report.spec
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in report.rows:
        if r.history:
            xs, ys = zip(*r.history)
            a.plot(xs, ys, marker="o", ms=3, color=COLORS.get(r.reason, "gray"), alpha=0.8)
    a.set(xlabel="epoch", ylabel=spec.metric, title="trials per epoch (colour: stop reason)")
    best, best_so_far, xs = None, [], []
    for i, r in enumerate(report.rows):
        value = None if r.reason == "error" or r.verdict else r.best  # health-stopped: not a result
        if value is not None and (best is None or spec.sign * value > spec.sign * best):
            best = value
        xs.append(i)
        best_so_far.append(best if best is not None else float("nan"))
        b.scatter([i], [r.best if r.best is not None else spec.penalty], color=COLORS.get(r.reason, "gray"), s=25)
    b.step(xs, best_so_far, where="post", color="black", label="best so far")
    b.set(xlabel="trial (start order)", ylabel=f"best {spec.metric}", title="optimisation history")
    _legend(b, {r.reason for r in report.rows})
    _save(fig, path)
    return path


def importance_plot(study, records: list, path: Path) -> Path | None:
    """Optuna's parameter importances (PED-ANOVA, its default) over `records` as a bar chart;
    None when they are undefined: fewer than 3 finished trials, or the best tenth of them not
    better than the rest (all tied: Optuna then warns and returns equal importances, which would
    read as a finding). Drawn here: Optuna's own plot function is experimental and says so on
    every call."""
    if study is None:
        return None
    import math

    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    values = [t.value for t in records if t.state == optuna.trial.TrialState.COMPLETE
              and t.value is not None and math.isfinite(t.value)]
    if len(values) < 3 or not _top_quantile_differs(values, study.direction, IMPORTANCE_QUANTILE):
        return None
    current = optuna.create_study(directions=study.directions)
    current.add_trials(records)
    try:
        imp = get_param_importances(current, evaluator=PedAnovaImportanceEvaluator(target_quantile=IMPORTANCE_QUANTILE))
    except (ValueError, RuntimeError):  # undefined for some histories (e.g. a parameter never varied)
        return None
    names = list(imp)[::-1]  # most important on top
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(names)))
    ax.barh(names, [imp[n] for n in names], color="tab:blue")
    ax.set(xlabel="importance (PED-ANOVA, sums to 1)", title=f"parameter importances ({len(values)} finished trials)")
    _save(fig, path)
    return path


IMPORTANCE_QUANTILE = 0.1  # PED-ANOVA's target quantile (Optuna's default): the best tenth


def _top_quantile_differs(values: list[float], direction, quantile: float) -> bool:
    """Does the best `quantile` of the values leave some trial out? (Optuna's own rule, from
    PedAnovaImportanceEvaluator: the top set is every value at or better than the cutoff.)"""
    import math

    import optuna

    loss = sorted(v if direction == optuna.study.StudyDirection.MINIMIZE else -v for v in values)
    cutoff = loss[int(math.ceil(quantile * len(loss))) - 1]
    return any(v > cutoff for v in loss)


def scatter_plot(report, key: str, path: Path) -> Path:
    spec = report.spec
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in report.rows:
        v = r.params.get(key)
        if v is None:
            continue
        y = r.best if r.best is not None else spec.penalty
        ax.scatter([v], [y], color=COLORS.get(r.reason, "gray"), s=40, edgecolors="k", linewidths=0.4)
    p = spec.params[key]
    if p.log or p.type == "loguniform":
        ax.set_xscale("log")
    ax.set(xlabel=key, ylabel=f"best {spec.metric}", title=f"{key} (colour: stop reason)")
    _legend(ax, {r.reason for r in report.rows})
    _save(fig, path)
    return path


def _legend(ax, reasons) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=COLORS.get(r, "gray"), label=r) for r in sorted(reasons)]
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="best")
