"""LCBench (YAHPO Gym's surrogate, shipped in benchmarks/replay/data/lcbench) read by this
project's own reader: it must return what the reference package (yahpo-gym 1.0.2) returned for
the committed fixture (tests/fixtures/lcbench_reference.json, made by
benchmarks/replay/make_lcbench_fixture.py: every task, corners, defaults, random draws)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from benchmarks.replay.cli import main  # noqa: E402
from benchmarks.replay.sources.lcbench import (  # noqa: E402
    CONT,
    FIRST,
    LAST,
    TARGETS,
    LCBench,
    LCBenchError,
    LCBenchSource,
)

FIXTURE = Path(__file__).parent / "fixtures" / "lcbench_reference.json"


@pytest.fixture(scope="module")
def bench():
    return LCBench()


def agreement(bench, encode=lambda c: c) -> float:
    """The worst |ours - reference| over the fixture, as a share of the tolerance: 1e-4 of the
    value plus 1e-5 of the target's range (float32 rounding in the graph's de-normalisation
    differs by kernel and batch size: ~3e-3 s on a time range of 17,000 s)."""
    fx = json.loads(FIXTURE.read_text())
    y = np.array([r[2] for r in fx["rows"]])
    tol_abs = 1e-5 * (y.max(0) - y.min(0))
    worst = 0.0
    for task in fx["tasks"]:
        rows = [r for r in fx["rows"] if r[0] == task]
        ours = bench.predict(task, [encode(dict(zip(fx["params"], r[1]))) for r in rows])
        ref = np.array([r[2] for r in rows])
        worst = max(worst, float((np.abs(ours - ref) / (1e-4 * np.abs(ref) + tol_abs)).max()))
    return worst


def test_reader_matches_the_reference_package(bench):
    fx = json.loads(FIXTURE.read_text())
    assert fx["targets"] == list(TARGETS) and set(fx["params"]) == set(CONT)
    assert set(fx["tasks"]) == set(bench.tasks) and len(bench.tasks) == 34
    assert agreement(bench) <= 1.0


def test_a_wrong_encoding_would_fail_the_check(bench):
    """The check can fail: feeding log(learning rate) (a transform the ONNX graph does itself),
    or swapping two inputs, puts the predictions far outside the tolerance."""
    assert agreement(bench, lambda c: {**c, "learning_rate": math.log(c["learning_rate"]) % 0.1 + 1e-4}) > 10
    assert agreement(bench, lambda c: {**c, "momentum": c["max_dropout"] * 0.89 + 0.1,
                                       "max_dropout": (c["momentum"] - 0.1) / 0.89}) > 10


def test_every_task_gives_a_curve_and_bad_input_is_named(bench):
    """A trial's epoch k is the surrogate's epoch k + 1 (YAHPO: epoch 1 is untrained)."""
    default = bench.default()
    for task in bench.tasks:
        source = LCBenchSource(task, bench)
        curve = source.draw(default, np.random.default_rng(0))
        acc = [curve.at(e)["val_accuracy"] for e in range(1, source.max_t + 1)]
        assert len(acc) == LAST - FIRST + 1 == source.max_t and all(0 <= a <= 100 for a in acc)
        assert source.true_value(default) == pytest.approx(max(acc), rel=1e-5)
        direct = bench.epochs(task, default, [FIRST, LAST])[:, TARGETS.index("val_accuracy")]
        assert [acc[0], acc[-1]] == pytest.approx(list(direct), rel=1e-5)
    with pytest.raises(LCBenchError, match="unknown LCBench task 'nope'; known: 3945, 7593"):
        bench.check_task("nope")
    with pytest.raises(LCBenchError, match="learning_rate: 0.5 outside"):
        bench.predict("3945", [{**default, "epoch": 1, "learning_rate": 0.5}])
    with pytest.raises(LCBenchError, match="batch_size: 16.5 is not an integer"):
        bench.predict("3945", [{**default, "epoch": 1, "batch_size": 16.5}])


def test_cli_replays_a_task_and_refuses_an_unknown_one(tmp_path, capsys):
    out = tmp_path / "lc"
    assert main(["lcbench:189906", "--seeds", "1", "--seed-offset", "3", "--budget", "2", "--reference-samples", "50",
                 "--strategies", "default", "random_full", "--out", str(out)]) == 0
    summary = json.loads((out / "replay.json").read_text())
    assert summary["source"] == "lcbench-189906" and summary["seeds"] == [3, 3]
    runs = [json.loads(ln) for ln in (out / "runs.jsonl").read_text().splitlines()]
    assert {r["strategy"] for r in runs} == {"default", "random_full"} and all(r["seed"] == 3 for r in runs)
    assert main(["lcbench:nope", "--seeds", "1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown LCBench task 'nope'" in err and "189909" in err and not (tmp_path / "x").exists()
    # the surrogate is deterministic: a noise level would be silently ignored, so it is refused
    assert main(["lcbench:3945", "--noise", "0.05", "--seeds", "1", "--out", str(tmp_path / "y")]) == 2
    assert "--noise applies to model:TABLE" in capsys.readouterr().err and not (tmp_path / "y").exists()


def test_lcbench_asha_settings_are_the_project_defaults(tmp_path):
    """The LCBench source leaves ASHA as a space that names no grace or reduction gets, and
    enqueues the config space's default as the seed configuration."""
    from tune.space import load_space

    space = tmp_path / "bare.yaml"
    space.write_text("name: bare\nbase: smoke\nbase_overrides: {val_interval: 1}\nparams:\n  optim.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n"
                     "search: {metric: val/st_iou, mode: max}\nscheduler: {type: asha, max_t: 4}\n")
    bare = load_space(str(space))
    spec = LCBenchSource("3945").spec(100, 2, 0)
    assert (spec.grace_period, spec.reduction_factor) == (bare.grace_period, bare.reduction_factor)
    assert spec.initial_points == (LCBench().default(),)  # the config space's default runs first
