"""Which trial a search exports when trials tie (tune/ranking.py), through the real report on
experiment folders written as Tune writes them (params.json, result.json)."""

import csv
import json
from dataclasses import replace

import pytest

from tune.ranking import choose, tie_value
from tune.results import write_report
from tune.space import load_space

SPACE = """
name: ties
base: smoke
base_overrides: {val_interval: 1}
params:
  optim.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
search: {metric: val/st_iou, mode: max, num_samples: 3, max_concurrent: 2, confirm_top: 0}
scheduler: {type: asha, max_t: 2, grace_period: 1, reduction_factor: 2}
"""


def experiment(tmp_path, trials: dict[str, list[tuple[float, float]]]):
    """trials: id -> [(val/st_iou, val/ap50) per epoch]; every trial runs max_t (2) epochs."""
    (tmp_path / "space.yaml").write_text(SPACE)
    exp = tmp_path / "exp"
    for n, (tid, epochs) in enumerate(trials.items(), 1):
        d = exp / f"{tid}_{n}"
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"optim.lr": 1e-3 * n}))
        rows = [{"trial_id": tid, "training_iteration": e, "val/st_iou": st, "val/ap50": ap, "val/fresh": 1.0,
                 "health/fatal": 0.0, "time_total_s": 1.0 * e} for e, (st, ap) in enumerate(epochs, 1)]
        (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return exp, load_space(str(tmp_path / "space.yaml"))


def test_exact_ties_are_decided_by_the_tie_break_signal_and_said(tmp_path):
    exp, spec = experiment(tmp_path, {"aaaa0001": [(0.0, 0.01), (0.0, 0.03)], "aaaa0002": [(0.0, 0.02), (0.0, 0.02)],
                                      "aaaa0003": [(0.0, 0.0), (0.0, 0.01)]})
    report = write_report(exp, spec, plots=False)
    assert report.best.trial_id == "aaaa0001" and report.choice.decided_by == "val/ap50"
    said = report.console_summary()
    assert "3 trials tied at val/st_iou 0.0000" in said
    assert "decided by val/ap50: 0.0300 against 0.0200 for the next" in said
    assert "decided by val/ap50" in (exp / "best_config.yaml").read_text()
    assert "decided by val/ap50" in (exp / "summary.md").read_text()


def test_a_tie_nothing_separates_exports_nothing_and_says_what_to_change(tmp_path):
    exp, spec = experiment(tmp_path, {"bbbb0001": [(0.0, 0.0), (0.0, 0.02)], "bbbb0002": [(0.0, 0.02), (0.0, 0.0)],
                                      "bbbb0003": [(0.0, 0.01), (0.0, 0.0)]})
    report = write_report(exp, spec, plots=False)
    assert report.best is None and report.choice.unresolved
    said = report.console_summary()
    assert "no best config: 3 trials tied exactly at val/st_iou 0.0000, and the best of them by val/ap50, " \
           "bbbb0001, bbbb0002, tie at 0.0200 too" in said
    assert "larger scheduler.max_t than 2" in said and "another space" in said
    assert not (exp / "best_config.yaml").exists()
    assert "**No best config**" in (exp / "summary.md").read_text()
    # without a tie-break signal nothing separates exact ties either
    assert choose(report.rows, replace(spec, tie_break=None)).unresolved


def test_a_unique_best_needs_no_tie_break(tmp_path):
    exp, spec = experiment(tmp_path, {"cccc0001": [(0.0, 0.0), (0.05, 0.0)], "cccc0002": [(0.0, 0.5), (0.01, 0.9)],
                                      "cccc0003": [(0.0, 0.0), (0.0, 0.0)]})
    report = write_report(exp, spec, plots=False)
    assert report.best.trial_id == "cccc0001" and not report.choice.tied
    assert "tied" not in report.console_summary() and (exp / "best_config.yaml").is_file()


@pytest.mark.parametrize("rows, metric, expected", [
    ([{"val/ap50": 0.2, "val/fresh": 0.0}, {"val/ap50": 0.1}], "val/ap50", 0.1),  # stale: carried forward
    ([{"val/ap50": 0.2, "health/fatal": 1.0}, {"val/ap50": 0.1}], "val/ap50", 0.1),  # the fatal report
    ([{"val/ap50": -1.0, "health/nonfinite_metrics": "val/ap50"}], "val/ap50", None),  # was NaN
    ([{"val/loss": 2.0}, {"val/loss": 1.5}], "val/loss", 1.5),  # lower is better
    ([{"val/ap50": 0.3}], None, None),
])
def test_tie_value_reads_only_real_measurements(rows, metric, expected):
    assert tie_value(rows, metric) == expected


def test_the_leaderboard_ranks_as_the_export_does(tmp_path):
    """Exact ties in leaderboard.csv and summary.md are ordered by the tie-break signal, and a
    trial a health rule stopped (its earlier epochs tied at the top) ranks below every result:
    the table's first row is the exported trial."""
    exp, spec = experiment(tmp_path, {"dddd0001": [(0.0, 0.01), (0.0, 0.01)], "dddd0002": [(0.0, 0.02), (0.0, 0.05)],
                                      "dddd0003": [(0.0, 0.0), (0.0, 0.03)], "dddd0004": [(0.0, 0.09), (0.0, 0.09)]})
    fatal = exp / "dddd0004_4" / "result.json"
    rows = [json.loads(x) for x in fatal.read_text().splitlines()]
    rows[-1].update({"health/fatal": 1.0, "health/stop_reason": "nonfinite", "health/rule": "nonfinite",
                     "health/verdict": "nonfinite: loss=nan", "health/step": 7.0})
    fatal.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = write_report(exp, spec, plots=False)
    assert report.best.trial_id == "dddd0002"
    with open(exp / "leaderboard.csv") as fh:
        order = [r["trial_id"] for r in csv.DictReader(fh)]
    assert order == ["dddd0002", "dddd0003", "dddd0001", "dddd0004"]
    table = (exp / "summary.md").read_text().split("## Leaderboard", 1)[1]
    assert [table.index(t) for t in order] == sorted(table.index(t) for t in order)


def test_trials_are_read_from_the_short_folder_names(tmp_path):
    """Trial folders as tune.console.trial_dirname names them (<id>_<n>): a trial that raised
    before its first report is named by its id, as the console and the journal name it, and
    the rows come in start order (n), not in the order of the ids."""
    from tune.results import collect_trials

    exp, spec = experiment(tmp_path, {"ffff0001": [(0.1, 0.0), (0.1, 0.0)], "aaaa0002": [(0.0, 0.0), (0.0, 0.0)]})
    raised = exp / "bbbb0003_3"
    raised.mkdir()
    (raised / "params.json").write_text(json.dumps({"optim.lr": 1e-3}))
    (raised / "error.txt").write_text("Failure # 1 (occurred at 2026-12-03)\nValueError: boom\n")
    rows = collect_trials(exp, spec)
    assert [r.trial_id for r in rows] == ["ffff0001", "aaaa0002", "bbbb0003"]
    assert rows[2].reason == "error"
