"""The replay benchmark drives the real search path: a tiny hand-made curve table
(tests/fixtures/curves_tiny.jsonl: a flat config, a good one with two seeds, a weak one, a
health stop, a crash) replayed through the project's searcher and scheduler and through every
baseline, then the Optuna states they told and the compute accounting are checked. No
training, no Ray cluster."""

import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from optuna.trial import TrialState

from benchmarks.replay.cli import main
from benchmarks.replay.engine import Replay, seed_everything
from benchmarks.replay.sources import SourceError, open_source
from benchmarks.replay.sources.recorded import RecordedSource
from benchmarks.replay.sources.table import CurveError, Nearest, read_table
from benchmarks.replay.strategies import EXTRA, STRATEGIES, build
from benchmarks.replay.table_analysis import tie_analysis

TINY = Path(__file__).parent / "fixtures" / "curves_tiny.jsonl"


def replay(strategy, concurrency=2, trials=12, seed=0, all_configs_first=True, order=None, budget=1e9, **spec_changes):
    source = RecordedSource(read_table(TINY))
    spec = source.spec(budget=trials or budget / source.full_trial_s, concurrency=concurrency, seed=seed)
    if all_configs_first:  # every recorded config runs, in order, before the sampler proposes
        order = order or list(source.groups)
        spec = replace(spec, initial_points=tuple(source.groups[c][0].params for c in order))
    spec = replace(spec, **spec_changes)
    seed_everything(seed)
    b = build(strategy, spec, seed)
    r = Replay(source, b.searcher, b.scheduler, concurrency, budget_s=budget, seed=seed,
               health_as_error=b.health_as_error, max_trials=trials, max_pending=b.max_pending)
    tl = r.run(spec)
    r.export(b.confirm)
    return source.table, b.searcher, tl


def newest_records(searcher):
    """Ray trial id -> what its Optuna trial holds (a `supersedes` record, if any, wins)."""
    study = searcher._ot_study
    by_ray = {tid: study._storage.get_trial(t._trial_id) for tid, t in searcher._ot_trials.items()}
    for t in study.get_trials(deepcopy=False):
        if "supersedes" in t.user_attrs:
            by_ray[t.user_attrs["ray_trial_id"]] = t
    return by_ray


def run_of(table, t):
    config, seed = t.key
    return next(r for r in table.configs()[config] if r.seed == seed)


def test_default_tells_optuna_what_happened_to_each_replayed_trial():
    table, searcher, tl = replay("default")
    reasons = {t.reason for t in tl.trials}
    assert {"completed", "asha", "grad_explosion", "error"} <= reasons  # every outcome occurred
    told = newest_records(searcher)
    for t in tl.trials:
        rec, run = told[t.trial_id], run_of(table, t)
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


def test_health_stops_told_as_failures_keep_their_reason_in_the_accounting():
    table, searcher, tl = replay("default_health_fail")
    told = newest_records(searcher)
    stopped = [t for t in tl.trials if t.reason == "grad_explosion"]
    assert stopped and all(told[t.trial_id].state == TrialState.FAIL for t in stopped)
    assert all(t.best is None for t in stopped)  # never the incumbent


def test_compute_clock_and_incumbent_accounting():
    table, _, tl = replay("default", concurrency=2)
    spent = sum(sum(run_of(table, t).series["time_s"][: t.epochs]) for t in tl.trials)
    assert math.isclose(tl.compute_s, spent) and math.isclose(sum(t.own_s for t in tl.trials), spent)
    assert tl.compute_s / 2 <= tl.wall_s + 1e-9 <= tl.compute_s
    assert len(tl.trials) == 12
    # the incumbent is what the report would export (the best completed/ASHA-stopped trial),
    # scored by its recorded config's mean over seeds
    best = max((t for t in tl.trials if t.reason in ("completed", "asha")), key=lambda t: (t.best, t.epochs))
    assert tl.points[-1][2] == table.config_value(best.key[0]) and tl.points[-1][3] == best.best
    assert tl.export["confirmed"]  # a 12-trial search confirms (tune/space.py confirm_plan)


def test_every_strategy_replays_the_tiny_table():
    """Each strategy runs to its budget on the same source and exports a healthy config; the
    full-budget ones never stop a trial early; HyperBand pauses and resumes trials; the pruner
    is told PRUNED."""
    for strategy in STRATEGIES + EXTRA:
        _, searcher, tl = replay(strategy, all_configs_first=False, trials=None, budget=1200.0)
        assert tl.compute_s >= 1200.0 and tl.export is not None, strategy
        reasons = {t.reason for t in tl.trials}
        if strategy in ("random_full", "tpe_full", "genetic"):
            assert "asha" not in reasons, strategy
        if strategy in ("random_asha", "tpe_median", "hyperband", "default"):
            assert "asha" in reasons, strategy
        if strategy == "hyperband":
            assert tl.pauses > 0 and any(0 < t.epochs < 4 for t in tl.trials if t.reason == "asha")
        if strategy == "tpe_median":
            pruned = [t for t in tl.trials if t.reason == "asha"]
            told = newest_records(searcher)
            assert all(told[t.trial_id].state == TrialState.PRUNED for t in pruned)


def test_small_search_confirms_its_export():
    """A default search of <= 16 trials re-runs its 2 best with 2 seeds (tune/space.py
    confirm_plan): 4 full trials of compute more, and the export says it was confirmed."""
    table, _, tl = replay("default", trials=6, all_configs_first=False)
    assert tl.export["confirmed"] and tl.compute_s == pytest.approx(sum(t.own_s for t in tl.trials))
    assert tl.export["compute_s"] == pytest.approx(tl.compute_s + 4 * 40.0)  # 4 runs of 4 x 10 s
    _, _, big = replay("default", trials=20, all_configs_first=False)
    assert not big.export["confirmed"] and big.export["params"] == max(
        (t for t in big.trials if t.best is not None), key=lambda t: (t.best, t.epochs)).params


def test_genetic_mutation_follows_the_library_rule():
    """With one result, every gene is the parent's times a factor in [0.25, 4] (crossover of
    one parent is the parent), clipped to the range and rounded (ints integral). The library
    redraws until a factor differs from 1, not until the clipped value does: a child can
    equal its parent at a bound (lr at its lower bound here), as in the library."""
    from benchmarks.replay.baselines import Genetic

    spec = RecordedSource(read_table(TINY)).spec(10, 1, 0)
    g = Genetic(spec, seed=0)
    first = g.suggest("a")
    assert first == dict(spec.initial_points[0])
    g.on_trial_complete("a", {spec.metric: 0.05, "health/fatal": 0.0})
    children = [g.suggest(f"c{i}") for i in range(50)]
    assert sum(c != first for c in children) >= 40
    for child in children:
        for k, p in spec.params.items():
            assert p.low <= child[k] <= p.high
            if p.type == "int":
                assert isinstance(child[k], int)
            elif first[k] and child[k] not in (p.low, p.high):
                assert 0.25 - 1e-4 <= child[k] / first[k] <= 4 + 1e-4


def test_tie_break_separates_a_flat_rung():
    """Configs 2 then 0 both score 0.0 at the rung (epoch 2); val/loss tells them apart (7.9
    against 8.5). With the tie-break config 0 is stopped there; without it, the tie stands."""
    def fate(tie_break):
        _, _, tl = replay("default", concurrency=1, trials=2, order=[2, 0], tie_break=tie_break, grace_period=2)
        return {t.key[0]: t.reason for t in tl.trials}

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


def test_cli_writes_the_summary_and_refuses_bad_input(tmp_path, capsys):
    assert main([str(TINY), "--seeds", "2", "--seed-offset", "5", "--budget", "6", "--out", str(tmp_path / "out")]) == 0
    out = json.loads((tmp_path / "out" / "replay.json").read_text())
    s = out["by_concurrency"]["2"]
    assert set(s["strategies"]) == set(STRATEGIES) and s["seeds"] == [5, 6] and out["seeds"] == [5, 6]
    assert {"third_of_budget", "rank_first_or_tied"} <= set(s["goal"]) and "health" in out
    assert (tmp_path / "out" / "replay-c2.png").stat().st_size > 0
    assert len((tmp_path / "out" / "runs.jsonl").read_text().splitlines()) == 2 * len(STRATEGIES)
    # --reuse runs only what the earlier folder lacks (here: one variant of the default)
    assert main([str(TINY), "--seeds", "2", "--seed-offset", "5", "--budget", "6", "--reuse", str(tmp_path / "out"),
                 "--variant", "reduction_factor=3", "--out", str(tmp_path / "more")]) == 0
    assert "2 replays in" in capsys.readouterr().out
    more = json.loads((tmp_path / "more" / "replay.json").read_text())
    assert "default:reduction_factor=3" in more["by_concurrency"]["2"]["strategies"]
    # the evidence says what it reused, and its wall time includes the reused replays' own
    assert more["replays"] == {"run": 2, "reused": 2 * len(STRATEGIES)} and out["replays"]["reused"] == 0
    assert more["replay_wall_s"] >= out["replay_wall_s"]
    assert main([str(TINY), "--budget", "7", "--reuse", str(tmp_path / "out"), "--out", str(tmp_path / "o4")]) == 2
    assert "budget 6.0" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(TINY.read_text().replace('"seed": 0, "params"', '"seed": "x", "params"', 1))
    assert main([str(bad), "--seeds", "1", "--out", str(tmp_path / "o2")]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert main([str(TINY), "--strategies", "nope", "--out", str(tmp_path / "o3")]) == 2
    assert "known: default" in capsys.readouterr().err
    with pytest.raises(CurveError, match="no such file|cannot read"):
        read_table(tmp_path / "missing.jsonl")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_model_source_refuses_a_table_with_health_stops():
    with pytest.raises(SourceError, match="health-stopped or crashed"):
        open_source(f"model:{TINY}")


def healthy_tiny_table(tmp_path) -> Path:
    lines = [ln for ln in TINY.read_text().splitlines() if ln.strip()]
    keep = [lines[0]] + [ln for ln in lines[1:] if '"stop": null, "error": null' in ln]
    path = tmp_path / "healthy.jsonl"
    path.write_text("\n".join(keep) + "\n")
    return path


def test_model_source_noise_levels(tmp_path):
    """noise 0 answers the model's mean; a level scales the drawn deviation linearly (where
    nothing is clipped); the true value is the best epoch of the mean; values stay >= 0."""
    path = healthy_tiny_table(tmp_path)
    measured = open_source(f"model:{path}", "measured")
    params = {"optim.gradient_clip_norm": 4.0, "loss.dfl_weight": 1.2, "optim.warmup_epochs": 1, "optim.lr": 0.002}
    mean = measured.mean_curves([params])[0][:4]
    zero = measured.with_noise(0)
    assert zero.draw(params, np.random.default_rng(0)).series["val/st_iou"] == pytest.approx(list(mean))
    assert zero.true_value(params) == pytest.approx(float(mean.max()))
    half = measured.with_noise(measured.level / 2)
    a = np.array(measured.draw(params, np.random.default_rng(1)).series["val/st_iou"])
    b = np.array(half.draw(params, np.random.default_rng(1)).series["val/st_iou"])
    free = (a > 0) & (b > 0)
    assert free.any() and np.allclose((b - mean)[free], 0.5 * (a - mean)[free])
    assert (a >= 0).all()
    assert measured.signals == ["val/st_iou"]  # smoke's tie-break signal (val/ap50) is not in this table


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
    from benchmarks.noise_vs_budget import noise_by_budget
    from benchmarks.replay.sources.table import Run

    table = read_table(TINY)
    rows = {r["epochs"]: r for r in noise_by_budget(table, min_seeds=2)}  # config 1: two seeds
    assert rows[2]["seed_std"] == pytest.approx(math.sqrt(0.01**2 / 2)) and rows[2]["best_mean"] == pytest.approx(0.025)
    assert rows[4]["best_mean"] == pytest.approx(0.09)
    assert rows[4]["seeds_for_5pct"] == pytest.approx((math.sqrt(0.02**2 / 2) / (0.05 * 0.09)) ** 2)
    stopped = Run(9, 0, {}, {"time_s": [1.0] * 3, "val/st_iou": [0.01, 0.02, 0.0]}, stop={"reason": "x"})
    assert table.run_value(stopped, 2) == 0.02  # healthy for its first two epochs
    assert table.run_value(stopped, 3) == table.run_value(stopped) == table.penalty


@pytest.mark.parametrize("argv, says", [
    (["--variant", "foo=1"], "--variant 'foo=1': expected"),
    (["--variant", "grace_period=abc"], "--variant 'grace_period=abc': grace_period must be an integer >= 1"),
    (["--variant", "grace_period=99"], "--variant 'grace_period=99': grace_period must be <= max_t (4)"),
    (["--variant", "reduction_factor=1"], "reduction_factor must be an integer >= 2"),
    (["--variant", "startup=x"], "startup must be an integer >= 0"),
    (["--variant", "confirm_top=-1"], "confirm_top must be an integer >= 0"),
    (["--variant", "multivariate=maybe"], "multivariate must be 0 or 1"),
    (["--reference-samples", "0"], "--reference-samples must be >= 2"),
    (["--reference-samples", "-5"], "--reference-samples must be >= 2"),
])
def test_cli_refuses_a_bad_option_before_any_replay(tmp_path, capsys, argv, says):
    """Exit 2 with the option named, no traceback, nothing written (these once raised mid-run
    or exited 1, after some replays had run)."""
    out = tmp_path / "out"
    assert main([str(TINY), "--seeds", "1", "--budget", "2", "--strategies", "default", *argv, "--out", str(out)]) == 2
    assert says in capsys.readouterr().err
    assert not out.exists()


def test_cli_refuses_an_out_path_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("keep me\n")
    assert main([str(TINY), "--seeds", "1", "--budget", "2", "--strategies", "default", "--out", str(out)]) == 2
    assert f"--out {out}: exists and is not a folder" in capsys.readouterr().err
    assert out.read_text() == "keep me\n"


def test_third_of_budget_says_when_random_search_itself_passes_it():
    """Under seed noise random search's export can be worse than an incumbent it held early (a
    lucky run replaces a good config), so random search itself reaches its own final quality
    early (the smoke model at 22 % noise: 9.7 of 100 full trials). The goal's verdict then
    does not tell the default from random search, and says so; on a noise-free source it decides."""
    from benchmarks.replay.analysis import summarise

    def run(strategy, seed, points, final):
        return {"strategy": strategy, "seed": seed, "points": [(c, c, v, v) for c, v in points],
                "export": {"true": final}}

    def goal(random_points):
        runs = []
        for seed in range(4):
            runs.append(run("random_full", seed, random_points, random_points[-1][1]))
            runs.append(run("default", seed, [(5.0, 0.9)], 0.9))
        return summarise(runs, (0.0, 1.0), 100.0, 1, ["default", "random_full"])["goal"]["third_of_budget"]

    noisy = goal([(4.0, 0.8), (60.0, 0.6)])  # its best early, a worse export at the end
    assert noisy["pass"] and noisy["random_full_compute"] == 4.0 and noisy["decides"] is False
    clean = goal([(4.0, 0.5), (90.0, 0.8)])
    assert clean["pass"] and clean["random_full_compute"] == 90.0 and clean["decides"] is True


def test_regret_against_the_default_is_paired_by_seed():
    """The paired difference of final regret (strategy - default) is taken seed by seed: a
    strategy that is worse by 0.1 on every seed differs by 0.1 with a zero-width interval, even
    where the seeds' own spread (0.0 .. 0.6) is six times larger."""
    from benchmarks.replay.analysis import summarise

    runs = []
    for seed in range(6):
        base = 0.9 - 0.1 * seed
        runs.append({"strategy": "default", "seed": seed, "points": [(5.0, 5.0, base, base)], "export": {"true": base}})
        runs.append({"strategy": "random_full", "seed": seed, "points": [(5.0, 5.0, base - 0.1, base - 0.1)],
                     "export": {"true": base - 0.1}})
    s = summarise(runs, (0.0, 1.0), 100.0, 1, ["default", "random_full"])["strategies"]
    assert s["random_full"]["regret_vs_default"] == pytest.approx(0.1)
    assert list(s["random_full"]["regret_vs_default_ci"]) == [pytest.approx(0.1), pytest.approx(0.1)]
    assert s["default"]["regret_vs_default"] == 0.0


def test_bootstrap_bounds_next_to_never_are_never_not_nan():
    """A percentile that lands on or beside an inf ("never reached") reads inf, not nan, and
    says nothing on stderr (numpy's lerp gives inf - inf or 0 * inf there)."""
    import warnings

    from benchmarks.replay.analysis import boot_ci

    idx = np.arange(40)[:, None]  # 40 "resamples", each one seed: the stats are the values
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lo, hi = boot_ci(np.array([1.0] * 39 + [math.inf]), np.median, idx)  # 97.5 % finite
        assert lo == 1.0 and hi == math.inf
        assert boot_ci(np.array([math.inf] * 40), np.median, idx) == (math.inf, math.inf)
        assert boot_ci(np.array([1.0] * 20 + [math.inf] * 20), np.median, idx) == (1.0, math.inf)
        assert boot_ci(np.array([1.0] + [math.inf] * 39), np.median, idx) == (math.inf, math.inf)  # was nan
