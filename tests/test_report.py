"""The report on hand-written experiment folders (the files a search writes: space.yaml, one
folder per trial with params.json and result.json, confirm.json): what it exports and says.
No Ray: these are the decisions the report makes from those files."""

import json

from search_fixtures import write_space

from tune.results import read_results, run_value, write_report
from tune.space import load_space


def trial(exp, tid, n, params, values, fatal_at=None, reason="dfl_divergence"):
    """A trial folder as Tune writes it: one result row per epoch."""
    d = exp / f"refdet_trainable_{tid}_{n:05d}_{n}_x"
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(params))
    rows = []
    for i, v in enumerate(values, 1):
        fatal = fatal_at == i
        rows.append({"trial_id": tid, "training_iteration": i, "val/st_iou": 0.0 if fatal else v, "val/fresh": 1.0,
                     "health/fatal": 1.0 if fatal else 0.0, "health/stop_reason": reason if fatal else "ok"})
    (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def experiment(tmp_path, tiny_dataset, confirm_top=2):
    space = write_space(tmp_path, tiny_dataset, "rep", num_samples=3, max_t=3)
    exp = tmp_path / "results" / "rep"
    exp.mkdir(parents=True)
    raw = space.read_text().replace("confirm_top: 0", f"confirm_top: {confirm_top}")
    assert f"confirm_top: {confirm_top}" in raw
    (exp / "space.yaml").write_text(raw)
    p = {"optim.gradient_clip_norm": 10.0, "loss.dfl_weight": 0.75, "optim.warmup_epochs": 0}
    trial(exp, "aaaaa", 0, {**p, "optim.lr": 1e-3}, [0.05, 0.10, 0.12])
    trial(exp, "bbbbb", 1, {**p, "optim.lr": 2e-3}, [0.04, 0.08, 0.09])
    trial(exp, "ccccc", 2, {**p, "optim.lr": 3e-3}, [0.01, 0.02, 0.03])
    return exp, load_space(str(exp / "space.yaml"))


def confirm(exp, configs):
    plan = {"trials": [c["source_trial"] for c in configs], "seeds": [1000, 1001], "max_t": 3}
    (exp / "confirm.json").write_text(json.dumps({"plan": plan, "configs": configs}))


def entry(tid, values, stops=(), search_value=0.1):
    return {"source_trial": tid, "params": {}, "search_value": search_value, "values": list(values),
            "mean": sum(values) / len(values), "std": 0.0, "failed": 0, "health_stops": list(stops)}


def test_a_health_stopped_run_scores_the_penalty_not_its_best_epoch(tmp_path, tiny_dataset):
    exp, spec = experiment(tmp_path, tiny_dataset)
    d = trial(exp, "ddddd", 3, {}, [0.2, 0.3, 0.0], fatal_at=3)  # diverged after two good epochs
    assert run_value(read_results(d / "result.json"), spec) == (spec.penalty, "dfl_divergence")
    d = trial(exp, "eeeee", 4, {}, [0.2, 0.3, 0.25])
    assert run_value(read_results(d / "result.json"), spec) == (0.3, None)


def test_no_export_until_the_planned_confirmation_has_finished(tmp_path, tiny_dataset):
    exp, spec = experiment(tmp_path, tiny_dataset)
    report = write_report(exp, plots=False)
    assert report.complete and report.confirm_pending and not report.exportable
    assert not (exp / "best_config.yaml").exists()
    assert "confirmation" in report.console_summary() and "Interrupted" in (exp / "summary.md").read_text()
    report = write_report(exp, plots=False, confirm_top=0)  # report.py --confirm-top 0: export unconfirmed
    assert report.exportable and "not measured" in (exp / "best_config.yaml").read_text()
    write_report(exp, plots=False)  # the search's own plan again: that export is not its answer
    assert not (exp / "best_config.yaml").exists()


def test_a_config_with_a_health_stopped_seed_is_exported_only_if_every_one_has(tmp_path, tiny_dataset):
    exp, spec = experiment(tmp_path, tiny_dataset)
    # aaaaa's two new seeds both diverged (the penalty); one seed of bbbbb did too, its other
    # seed scored high; ccccc trained cleanly on both: ccccc is exported despite its lower mean
    confirm(exp, [entry("aaaaa", [0.0, 0.0], ["dfl_divergence", "grad_explosion"]),
                  entry("bbbbb", [0.30, 0.0], ["nonfinite"]), entry("ccccc", [0.05, 0.06])])
    report = write_report(exp, plots=False)
    assert report.exportable and report.best.trial_id == "ccccc"
    text = (exp / "best_config.yaml").read_text()
    assert "trial ccccc" in text and "expected on a re-run: 0.0550" in text and "WARNING" not in text
    summary = (exp / "summary.md").read_text()
    assert "| bbbbb | 0.1000 | 0.1500 | 0.0000 | 0.3000, 0.0000 | nonfinite |" in summary
    # every confirmed config had a health stop: the best mean is exported, and marked
    confirm(exp, [entry("aaaaa", [0.0, 0.0], ["dfl_divergence", "grad_explosion"]),
                  entry("bbbbb", [0.30, 0.0], ["nonfinite"])])
    report = write_report(exp, plots=False)
    assert report.best.trial_id == "bbbbb"
    text = (exp / "best_config.yaml").read_text()
    assert "WARNING: 1 of 2 new seeds were stopped by a health rule (nonfinite)" in text
    assert "WARNING" in report.console_summary()


def test_a_config_whose_every_rerun_raised_is_not_exported_as_merely_unmeasured(tmp_path, tiny_dataset):
    """The confirmation ran and every re-run of every config raised: no mean exists. The export
    must not read like a search that was never confirmed ("--confirm-top K measures it"); it
    says that its re-runs all raised."""
    exp, spec = experiment(tmp_path, tiny_dataset)
    raised = {**entry("aaaaa", [0.0]), "values": [], "mean": float("nan"), "failed": 2}
    confirm(exp, [raised, {**raised, "source_trial": "bbbbb"}])
    report = write_report(exp, plots=False)
    text = (exp / "best_config.yaml").read_text() if report.exportable else ""
    assert "2 re-runs" in report.expected_rerun() and "raised" in report.expected_rerun(), report.expected_rerun()
    assert not text or "raised" in text
