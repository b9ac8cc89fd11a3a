"""The replay benchmark drives the real search path: a tiny hand-made curve table
(tests/fixtures/curves_tiny.jsonl: a flat config, a good one with two seeds, a weak one, a
health stop, a crash) replayed through the project's searcher and scheduler, then the Optuna
states they told and the compute accounting are checked. No training, no Ray cluster."""

import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from optuna.trial import TrialState

from benchmarks.curves import CurveError, Nearest, read_table
from benchmarks.replay import Replay, seed_everything
from benchmarks.replay_analysis import tie_analysis
from benchmarks.replay_search import main
from benchmarks.strategies import build, load_spec

TINY = Path(__file__).parent / "fixtures" / "curves_tiny.jsonl"


def replay(strategy, concurrency=2, trials=12, seed=0, all_configs_first=True, order=None, **spec_changes):
    table = read_table(TINY)
    spec = load_spec(table, budget=trials, concurrency=concurrency, seed=seed)
    if all_configs_first:  # every recorded config runs, in order, before the sampler proposes
        order = order or list(table.configs())
        spec = replace(spec, initial_points=tuple(table.configs()[c][0].params for c in order))
    spec = replace(spec, **spec_changes)
    seed_everything(seed)
    searcher, scheduler, as_error = build(strategy, spec, seed)
    tl = Replay(table, searcher, scheduler, concurrency, budget_s=1e9, seed=seed, health_as_error=as_error,
                max_trials=trials).run(spec)
    return table, searcher, tl


def newest_records(searcher):
    """Ray trial id -> what its Optuna trial holds (a `supersedes` record, if any, wins)."""
    study = searcher._ot_study
    by_ray = {tid: study._storage.get_trial(t._trial_id) for tid, t in searcher._ot_trials.items()}
    for t in study.get_trials(deepcopy=False):
        if "supersedes" in t.user_attrs:
            by_ray[t.user_attrs["ray_trial_id"]] = t
    return by_ray


def test_default_tells_optuna_what_happened_to_each_replayed_trial():
    table, searcher, tl = replay("default")
    reasons = {t.reason for t in tl.trials}
    assert {"completed", "asha", "grad_explosion", "error"} <= reasons  # every outcome occurred
    told = newest_records(searcher)
    for t in tl.trials:
        rec = told[t.trial_id]
        run = next(r for r in table.configs()[t.config] if r.seed == t.seed)
        if t.reason == "completed":
            assert rec.state == TrialState.COMPLETE and rec.constraints == {"health": 0.0}
            assert rec.value == run.series["val/st_iou"][table.max_t - 1]
        elif t.reason == "asha":
            assert rec.state == TrialState.PRUNED
            assert rec.intermediate_values == {e: run.series["val/st_iou"][e - 1] for e in range(1, t.epochs + 1)}
        elif t.reason == "error":
            assert rec.state == TrialState.FAIL
        else:  # a health stop: feasible no more
            assert rec.state == TrialState.COMPLETE and rec.value == table.penalty and rec.constraints == {"health": 1.0}
    assert not searcher._ot_study.get_trials(states=(TrialState.RUNNING,))


def test_compute_and_clock_accounting():
    table, _, tl = replay("default", concurrency=2)
    spent = 0.0
    for t in tl.trials:
        run = next(r for r in table.configs()[t.config] if r.seed == t.seed)
        spent += sum(run.series["time_s"][: t.epochs])
    assert math.isclose(tl.compute_s, spent) and math.isclose(sum(t.own_s for t in tl.trials), spent)
    assert tl.compute_s / 2 <= tl.wall_s + 1e-9 <= tl.compute_s
    assert len(tl.trials) == 12
    # the incumbent is what the report would export: the best completed/ASHA-stopped trial
    best = max((t for t in tl.trials if t.reason in ("completed", "asha")), key=lambda t: (t.best, t.epochs))
    assert tl.points[-1][2] == table.config_value(best.config) and tl.points[-1][3] == best.best


def test_stock_semantics_differ_where_the_issue_says():
    _, searcher, tl = replay("stock")
    told = newest_records(searcher)
    for t in tl.trials:
        rec = told[t.trial_id]
        if t.reason == "asha":  # told COMPLETE with its partial value
            assert rec.state == TrialState.COMPLETE
        if t.reason == "error":  # health stops are errors to the stock integration
            assert rec.state == TrialState.FAIL
    assert "asha" in {t.reason for t in tl.trials} and "error" in {t.reason for t in tl.trials}
    assert "grad_explosion" not in {t.reason for t in tl.trials}


def test_no_early_stopping_strategies_run_every_trial_to_its_end():
    for strategy in ("tpe_full", "random_full", "evolve"):
        _, _, tl = replay(strategy, all_configs_first=False, trials=8)
        assert "asha" not in {t.reason for t in tl.trials}, strategy
        assert len(tl.trials) == 8


def test_tie_break_separates_a_flat_rung():
    """Configs 2 then 0 both score 0.0 at the rung (epoch 2); val/loss tells them apart (7.9
    against 8.5). With the tie-break config 0 is stopped there; without it, the tie stands."""
    def fate(tie_break):
        _, _, tl = replay("default", concurrency=1, trials=2, order=[2, 0], tie_break=tie_break, grace_period=2)
        return {t.config: t.reason for t in tl.trials}

    assert fate(None) == {2: "completed", 0: "completed"}
    assert fate("val/loss") == {2: "completed", 0: "asha"}
    # ... and the table's own tie analysis counts that pair, and the val/loss call is right on it
    ties = {t["rung"]: t for t in tie_analysis(read_table(TINY), [1, 2, 3], "val/loss")}
    assert ties[2]["tied_pairs"] == 1 and ties[2]["secondary_right"] == 1


def test_nearest_uses_log_coordinates():
    near = Nearest(read_table(TINY))
    # lr 1.1e-4 is next to config 0's 1e-4 on a log scale even with the other values far off
    assert near({"optim.gradient_clip_norm": 10.0, "loss.dfl_weight": 0.75, "optim.warmup_epochs": 3,
                 "optim.lr": 1.1e-4}) == 0


def test_cli_writes_the_table_and_refuses_a_broken_one(tmp_path, capsys):
    assert main([str(TINY), "--seeds", "2", "--concurrency", "2", "--budget", "6", "--workers", "1",
                 "--out", str(tmp_path / "out")]) == 0
    out = json.loads((tmp_path / "out" / "replay.json").read_text())
    assert set(out["strategies"]) == {f"{s}@2" for s in ("default", "random_asha", "stock", "tpe_full", "evolve",
                                                          "random_full")}
    assert (tmp_path / "out" / "replay.png").stat().st_size > 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(TINY.read_text().replace('"seed": 0, "params"', '"seed": "x", "params"', 1))
    assert main([str(bad), "--seeds", "1", "--workers", "1", "--out", str(tmp_path / "o2")]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    with pytest.raises(CurveError, match="no such file|cannot read"):
        read_table(tmp_path / "missing.jsonl")


def asha_after_first_trial(tie_break: str, first: dict):
    """A tie-breaking ASHA with trials a and b added and a recorded at rung 2 with `first`."""
    from tune.scheduler import HealthAwareASHA

    s = HealthAwareASHA(time_attr="training_iteration", metric="val/st_iou", mode="max", max_t=4,
                        grace_period=2, reduction_factor=2, tie_break=tie_break)
    for tid in ("a", "b"):
        s.on_trial_add(None, SimpleNamespace(trial_id=tid))
    s.on_trial_result(None, SimpleNamespace(trial_id="a"), {"training_iteration": 2, "val/st_iou": 0.0,
                                                            "val/fresh": 1.0, **first})
    return s


def second_trial_at_rung(s, result: dict) -> str:
    return s.on_trial_result(None, SimpleNamespace(trial_id="b"), {"training_iteration": 2, "val/st_iou": 0.0,
                                                                   **result})


def test_tie_break_never_reads_a_stale_or_nonfinite_secondary():
    """A -1.0 that stands for a non-finite val/loss (named in health/nonfinite_metrics), or a
    stale validation, leaves the tie standing."""
    def decide(second):
        return second_trial_at_rung(asha_after_first_trial("val/loss", {"val/loss": 5.0}), second)

    assert decide({"val/loss": 6.0, "val/fresh": 1.0}) == "STOP"
    assert decide({"val/loss": 4.0, "val/fresh": 1.0}) == "CONTINUE"
    assert decide({"val/loss": -1.0, "val/fresh": 1.0, "health/nonfinite_metrics": "val/loss"}) == "CONTINUE"
    assert decide({"val/loss": 6.0, "val/fresh": 0.0}) == "CONTINUE"


def test_tie_break_state_survives_pickling():
    """Tune snapshots the scheduler and restores it by unpickling: the secondary values
    recorded before a restore still decide ties after it."""
    import pickle

    s = pickle.loads(pickle.dumps(asha_after_first_trial("val/ap50", {"val/ap50": 0.02})))
    assert second_trial_at_rung(s, {"val/ap50": 0.01, "val/fresh": 1.0}) == "STOP"


def test_noise_by_budget_and_values_after_the_first_epochs():
    from benchmarks.curves import Run
    from benchmarks.noise_vs_budget import noise_by_budget

    table = read_table(TINY)
    rows = {r["epochs"]: r for r in noise_by_budget(table, min_seeds=2)}  # config 1: two seeds
    assert rows[2]["seed_std"] == pytest.approx(math.sqrt(0.01**2 / 2)) and rows[2]["best_mean"] == pytest.approx(0.025)
    assert rows[4]["best_mean"] == pytest.approx(0.09)
    assert rows[4]["seeds_for_5pct"] == pytest.approx((math.sqrt(0.02**2 / 2) / (0.05 * 0.09)) ** 2)
    stopped = Run(9, 0, {}, {"time_s": [1.0] * 3, "val/st_iou": [0.01, 0.02, 0.0]}, stop={"reason": "x"})
    assert table.run_value(stopped, 2) == 0.02  # healthy for its first two epochs
    assert table.run_value(stopped, 3) == table.run_value(stopped) == table.penalty
