"""The searcher's Optuna bookkeeping, on a real journal file, driven as Tune drives it."""

import optuna
from optuna.trial import TrialState

from tune.searcher import build_searcher
from tune.space import load_space


def make(tmp_path):
    import dataclasses

    spec = dataclasses.replace(load_space("smoke"), max_t=4)  # the results below end at epoch 4
    return spec, build_searcher(spec, str(tmp_path / "optuna.log"))


def states(tmp_path, spec):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name=spec.name, storage=JournalStorage(JournalFileBackend(str(tmp_path / "optuna.log"))))
    return {t.user_attrs["ray_trial_id"]: t for t in study.get_trials()}, study


def result(it, value, fatal=False, reason="ok"):
    return {"training_iteration": it, "val/st_iou": value, "health/fatal": 1.0 if fatal else 0.0,
            "health/stop_reason": reason}


def test_each_outcome_is_told_correctly(tmp_path):
    spec, s = make(tmp_path)
    first = s.suggest("t_enqueued")
    assert first == spec.initial_points[0]  # the known-good config comes first
    for tid in ("t_complete", "t_asha", "t_health", "t_crash", "t_nan"):
        assert s.suggest(tid) is not None
    # completed: every epoch seen except the last (ASHA's STOP at max_t withholds it)
    for it in (1, 2, 3):
        s.on_trial_result("t_complete", result(it, 0.1 * it))
    s.on_trial_complete("t_complete", result(4, 0.5))
    # ASHA stop at the grace rung: epoch 2 never reached on_trial_result
    s.on_trial_result("t_asha", result(1, 0.01))
    s.on_trial_complete("t_asha", result(2, 0.02))
    # health stop in epoch 1
    s.on_trial_complete("t_health", result(1, 0.0, fatal=True, reason="nonfinite"))
    # crash after retries
    s.on_trial_result("t_crash", result(1, 0.05))
    s.on_trial_complete("t_crash", None, error=True)
    # a NaN metric is never told
    s.on_trial_result("t_nan", result(1, float("nan")))
    s.on_trial_complete("t_nan", result(4, float("nan")))
    s.on_trial_complete("t_enqueued", result(4, 0.3))

    trials, study = states(tmp_path, spec)
    assert trials["t_complete"].state == TrialState.COMPLETE and trials["t_complete"].value == 0.5
    assert trials["t_asha"].state == TrialState.PRUNED
    assert trials["t_asha"].intermediate_values == {1: 0.01, 2: 0.02}
    assert trials["t_health"].state == TrialState.COMPLETE and trials["t_health"].value == spec.penalty
    assert trials["t_health"].constraints == {"health": 1.0} and trials["t_health"].user_attrs["stop_reason"] == "nonfinite"
    assert trials["t_crash"].state == TrialState.FAIL
    assert trials["t_nan"].state == TrialState.FAIL and 1 not in trials["t_nan"].intermediate_values
    assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert study.best_trial.user_attrs["ray_trial_id"] == "t_complete"  # infeasible trials never win


def newest(study):
    """The newest record of each Ray trial (a `supersedes` record replaces an earlier tell)."""
    return {t.user_attrs["ray_trial_id"]: t for t in study.get_trials()}


def test_restore_reconciles_orphans_and_supersedes_stale_tells(tmp_path):
    spec, s = make(tmp_path)
    for tid in ("a", "b", "c", "d", "e"):
        s.suggest(tid)
    s.on_trial_result("d", result(1, 0.05))
    s.save(str(tmp_path / "searcher.pkl"))  # Tune's experiment snapshot
    s.on_trial_complete("e", result(1, 0.07))  # ... PRUNED at the first rung
    s.suggest("orphan")  # asked after the snapshot: unknown to the restored searcher
    s.on_trial_complete("b", None, error=True)  # told after the snapshot: FAIL ...
    s.on_trial_complete("c", result(2, 0.02))  # ... and PRUNED at a rung
    s.on_trial_complete("d", result(2, 0.07))  # ... and PRUNED, the same as it will end
    # the driver dies here; Tuner.restore unpickles the snapshot's searcher (no __init__)
    from tune.searcher import RefDetOptunaSearch

    restored = RefDetOptunaSearch.__new__(RefDetOptunaSearch)
    restored.restore(str(tmp_path / "searcher.pkl"))
    _, study = states(tmp_path, spec)
    assert newest(study)["orphan"].state == TrialState.FAIL
    assert newest(study)["orphan"].user_attrs["stop_reason"] == "orphan"
    # the resumed trials run on from their checkpoints: b and c to max_t, d stopped again at its rung
    restored.on_trial_result("b", result(3, 0.3))
    restored.on_trial_complete("b", result(4, 0.4))
    restored.on_trial_result("c", result(3, 0.25))
    restored.on_trial_complete("c", result(4, 0.35))
    restored.on_trial_result("d", result(1, 0.05))
    restored.on_trial_complete("d", result(2, 0.07))
    restored.on_trial_complete("e", result(2, 0.07))  # pruned again, at the next rung, by chance the same value
    restored.on_trial_complete("a", result(1, 0.0, fatal=True, reason="dead_detector"))
    _, study = states(tmp_path, spec)
    now = newest(study)
    assert now["b"].state == TrialState.COMPLETE and now["b"].value == 0.4 and now["b"].constraints == {"health": 0.0}
    assert now["c"].state == TrialState.COMPLETE and now["c"].value == 0.35
    assert now["b"].user_attrs["supersedes"] != now["c"].user_attrs["supersedes"]
    assert now["d"].state == TrialState.PRUNED and "supersedes" not in now["d"].user_attrs  # nothing changed
    assert now["a"].state == TrialState.COMPLETE and now["a"].constraints == {"health": 1.0}
    assert now["e"].state == TrialState.PRUNED and max(now["e"].intermediate_values) == 2
    assert "supersedes" in now["e"].user_attrs  # the rung changed: not the record the journal held
    assert len(study.get_trials()) == 6 + 3  # three superseding records, no duplicate for d
    assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    # what the report counts and plots: one record per Ray trial, the newest
    from tune.results import current_records

    current = {t.user_attrs["ray_trial_id"]: t.number for t in current_records(study)}
    assert sorted(current) == ["a", "b", "c", "d", "e", "orphan"] and len(current_records(study)) == 6
    assert all(current[rid] == t.number for rid, t in now.items())


def test_stale_validation_values_are_not_intermediate_values(tmp_path):
    spec, s = make(tmp_path)
    s.suggest("first")
    s.suggest("t")
    s.on_trial_result("t", {**result(1, 0.0), "val/fresh": 0.0})  # carried forward, not measured
    s.on_trial_result("t", {**result(2, 0.2), "val/fresh": 1.0})
    s.on_trial_complete("t", result(4, 0.3))
    trials, _ = states(tmp_path, spec)
    assert trials["t"].intermediate_values == {2: 0.2}


def test_a_nonfinite_validation_metric_is_a_fatal_verdict_never_a_value():
    from refdet.engine.trainer import EpochResult
    from tune.trainable import fatal_report, nonfinite_metric, search_metrics

    healthy = EpochResult(2, 40, {"val/st_iou": 0.2, "train/loss": 1.0}, None, True)
    assert nonfinite_metric(healthy, "val/st_iou") is None
    nan = EpochResult(2, 40, {"val/st_iou": float("nan"), "train/loss": 1.0}, None, True)
    v = nonfinite_metric(nan, "val/st_iou")
    assert v.stop_reason == "nonfinite"
    report = fatal_report(v, "val/st_iou", 0.0, nan.metrics)
    assert report["health/fatal"] == 1.0 and report["val/st_iou"] == 0.0  # the penalty, told infeasible
    out = search_metrics({"train/loss": float("inf"), "val/loss": float("nan"), "val/ap50": 0.1}, "val/st_iou", 0.0, False)
    assert out["train/loss"] == -1.0 and out["val/loss"] == -1.0 and out["val/ap50"] == 0.1
    assert out["health/nonfinite_metrics"] == "train/loss,val/loss"  # no decision reads those -1.0 as values
    assert "health/nonfinite_metrics" not in search_metrics({"val/ap50": 0.1}, "val/st_iou", 0.0, False)


def test_every_metric_searches_normally_with_val_interval_2(tiny_cfg):
    """An epoch that did not validate reports a stale value -- never a non-finite one, never a
    verdict -- for every metric a space may search; the validated epoch is what Optuna is told.
    (The trainer's placeholder before the first validation is NaN: not measured.)"""
    import dataclasses
    import math

    from refdet.engine.trainer import Trainer
    from refdet.metrics import SEARCHABLE_METRICS, lower_is_better
    from tune.searcher import build_searcher
    from tune.trainable import epoch_report

    trainer = Trainer(tiny_cfg(epochs=2, steps_per_epoch=2, val_interval=2))
    epochs = list(trainer.fit())
    assert [r.validated for r in epochs] == [False, True] and not any(r.verdict for r in epochs)
    base = load_space("smoke")
    for metric in SEARCHABLE_METRICS:
        mode = "min" if lower_is_better(metric) else "max"
        penalty = 1e6 if mode == "min" else 0.0
        spec = dataclasses.replace(base, metric=metric, mode=mode, penalty=penalty, max_t=2, initial_points=())
        searcher = build_searcher(spec, None)
        searcher.suggest("t")
        reports = []
        for i, r in enumerate(epochs):
            report, verdict = epoch_report(r, metric, penalty)
            assert verdict is None, (metric, verdict)
            assert isinstance(report[metric], float) and math.isfinite(report[metric]), (metric, report[metric])
            reports.append({**report, "training_iteration": i + 1})
        if metric.startswith("val/"):
            assert reports[0][metric] == penalty  # stale: the worst value, never the best
        searcher.on_trial_result("t", reports[0])
        searcher.on_trial_complete("t", reports[1])
        told = searcher._ot_study.get_trials()[0]
        assert told.state == TrialState.COMPLETE and told.constraints == {"health": 0.0}, metric
        assert told.value == reports[1][metric] == epochs[1].metrics[metric], metric
        assert set(told.intermediate_values) <= ({2} if metric.startswith("val/") else {1, 2}), metric


def test_a_trial_restored_twice_keeps_one_current_record(tmp_path):
    """Two driver kills, each between a trial's tell and the next snapshot: the second restore
    must compare the trial's end with its newest record (the superseding one), not the first
    tell -- else it adds a second record superseding the same old one, and the report and TPE
    see two current records of one Ray trial."""
    from tune.results import current_records
    from tune.searcher import RefDetOptunaSearch

    def restore(name):
        r = RefDetOptunaSearch.__new__(RefDetOptunaSearch)
        r.restore(str(tmp_path / name))
        return r

    spec, s = make(tmp_path)
    s.suggest("first")
    s.suggest("e")
    s.save(str(tmp_path / "s1.pkl"))
    s.on_trial_complete("e", result(1, 0.07))  # PRUNED at rung 1; the driver dies before a snapshot
    r1 = restore("s1.pkl")
    r1.save(str(tmp_path / "s2.pkl"))  # the resumed search's snapshot, before e ends again
    r1.on_trial_complete("e", result(2, 0.08))  # pruned at rung 2: supersedes the rung-1 record
    r2 = restore("s2.pkl")  # killed again before the next snapshot
    r2.on_trial_complete("e", result(2, 0.08))  # ends as the newest record says: nothing to add
    _, study = states(tmp_path, spec)
    current = [t for t in current_records(study) if t.user_attrs.get("ray_trial_id") == "e"]
    assert len(current) == 1 and max(current[0].intermediate_values) == 2, [t.user_attrs for t in current]
    r3 = restore("s2.pkl")  # and once more, ending differently: it supersedes the newest record
    r3.on_trial_result("e", result(2, 0.08))
    r3.on_trial_complete("e", result(4, 0.3))
    _, study = states(tmp_path, spec)
    current = [t for t in current_records(study) if t.user_attrs.get("ray_trial_id") == "e"]
    assert len(current) == 1 and current[0].state == TrialState.COMPLETE and current[0].value == 0.3


RAY_KILL = """Failure # 1 (occurred at 2026-12-03_09-00-00)
ray.exceptions.OutOfMemoryError: 2 worker(s) were killed due to the node running low on memory. Memory on the node (IP: 10.0.0.1, ID: 92ed) was 110.69GB / 124.35GB (0.890161)
OOM kill reason: user cgroup memory upper bound was met or exceeded
Ray killed 2 worker(s) based on the killing policy
Considered workers: [
Selected to kill: (Task: job ID=01000000, lease ID=06, task name=ImplicitFunc.train, required resources={CPU: 1}, pid={first}, actual memory used=0.67GB, worker ID=3e3d)
Selected to kill: (Task: job ID=01000000, lease ID=04, task name=ImplicitFunc.train, required resources={CPU: 1}, pid={second}, actual memory used=21.64GB, worker ID=0e56)
(Task: job ID=01000000, lease ID=05, task name=ImplicitFunc.train, required resources={CPU: 1}, pid=3310151, actual memory used=21.95GB, worker ID=3424)
"""


def test_a_ray_memory_monitor_kill_is_judged_by_this_trials_worker(tmp_path):
    """Ray (2.56+) kills several workers at once and gives each the same message, listing every
    worker it considered with its memory: the trial's own figure is the one with its worker's
    pid, not the first in the list (format as in Ray's memory-monitor documentation)."""
    from refdet.config import TrainConfig
    from tune.trainable import ray_oom_kill

    cfg = TrainConfig.preset("smoke").with_overrides({"host_share": 0.5, "health.mem_budget_gb": 4.0})
    small, big = tmp_path / "small", tmp_path / "big"
    for d, ours in ((small, 3310152), (big, 3310153)):
        d.mkdir()
        (d / "error.txt").write_text(RAY_KILL.replace("{first}", "3310152").replace("{second}", "3310153"))
        # each attempt notes its worker's pid in the trial folder when it starts: the killed one, this retry
        (d / "worker_pids.txt").write_text(f"{ours}\n12345\n")
    assert ray_oom_kill(small, cfg) is None  # 0.67 GB of a 4 GB share: the neighbours' doing, trains on
    v = ray_oom_kill(big, cfg)
    assert v.stop_reason == "oom" and v.values["used"].startswith("21.64 GB")
    alone = cfg.with_overrides({"host_share": 1.0})
    assert ray_oom_kill(small, alone).stop_reason == "oom"  # a trial alone on its node: every kill is its own
    unknown = tmp_path / "unknown"  # no record of the killed worker: its size is unknown, retried when shared
    unknown.mkdir()
    (unknown / "error.txt").write_text(RAY_KILL.replace("{first}", "1").replace("{second}", "2"))
    assert ray_oom_kill(unknown, cfg) is None


def test_a_rung_stop_of_a_re_run_epoch_after_restore_is_told_pruned(tmp_path):
    """The snapshot's searcher saw epoch 2, but the trial's checkpoint in it is epoch 1: resumed,
    the trial re-runs epoch 2 and ASHA stops it there (no on_trial_result first). That is a
    rung stop, told PRUNED -- not a shutdown left RUNNING, which kept a resumed search
    'interrupted' for good (CI, 2026-12-07)."""
    from tune.searcher import RefDetOptunaSearch

    spec, s = make(tmp_path)
    s.suggest("t")
    s.on_trial_result("t", result(1, 0.05))
    s.on_trial_result("t", result(2, 0.04))
    s.save(str(tmp_path / "searcher.pkl"))  # Ctrl-C: the last snapshot
    restored = RefDetOptunaSearch.__new__(RefDetOptunaSearch)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("t", result(2, 0.04))
    trials, _ = states(tmp_path, spec)
    assert trials["t"].state == TrialState.PRUNED
    # while this driver runs, a stop on a result it saw is still a shutdown: not told
    restored.suggest("u")
    restored.on_trial_result("u", result(1, 0.05))
    restored.on_trial_complete("u", result(1, 0.05))
    trials, _ = states(tmp_path, spec)
    assert trials["u"].state == TrialState.RUNNING
