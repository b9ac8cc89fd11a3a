"""The searcher's Optuna bookkeeping, on a real journal file, driven as Tune drives it."""

import optuna
from optuna.trial import TrialState

from tune.searcher import build_searcher
from tune.space import load_space


def make(tmp_path):
    spec = load_space("smoke")
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


def test_restore_reconciles_orphans_and_retries(tmp_path):
    spec, s = make(tmp_path)
    s.suggest("a")
    s.suggest("b")
    s.save(str(tmp_path / "searcher.pkl"))
    s.suggest("orphan")  # asked after the last snapshot: unknown to the restored searcher
    s.on_trial_complete("b", None, error=True)  # told FAIL before the snapshot below
    from tune.searcher import RefDetOptunaSearch

    restored = RefDetOptunaSearch.__new__(RefDetOptunaSearch)  # as Tuner.restore does: unpickled, no __init__
    restored.restore(str(tmp_path / "searcher.pkl"))
    trials, _ = states(tmp_path, spec)
    assert trials["orphan"].state == TrialState.FAIL and trials["orphan"].user_attrs["stop_reason"] == "orphan"
    # b errored, then resume_errored ran it to the end: its real outcome is added as a retry
    restored._completed_trials.add("b")
    restored._told["b"] = "fail"
    restored.on_trial_complete("b", result(4, 0.4))
    _, study = states(tmp_path, spec)
    retries = [t for t in study.get_trials() if t.user_attrs.get("retry_of") is not None]
    assert len(retries) == 1 and retries[0].value == 0.4 and retries[0].state == TrialState.COMPLETE
