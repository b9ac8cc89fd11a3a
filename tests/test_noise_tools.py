"""The noise benchmark's arithmetic (benchmarks/noise_sources.py) on a table whose components
are known: a seed's main effect, per-video difficulty, no interaction."""

import json
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.noise_sources import decompose  # noqa: E402


def test_seed_effect_and_video_difficulty_are_told_apart():
    seed_effect = [0.0, 0.02, -0.02, 0.04]
    difficulty = [0.1 * (j % 8) for j in range(64)]
    scores = [{f"v{j}": 0.3 + a + b for j, b in enumerate(difficulty)} for a in seed_effect]
    d = decompose(scores)
    assert d["videos"] == 64 and d["seeds"] == 4
    assert d["train_sd"] == pytest.approx(statistics.stdev(seed_effect), rel=1e-6)
    assert d["interaction_sd"] == pytest.approx(0.0, abs=1e-9)  # every seed ranks the videos alike
    assert d["seed_sd_at"][8] == pytest.approx(d["train_sd"], rel=1e-6)  # a fixed set adds nothing then
    # the same weights on disjoint sets of n videos: spread falls with n
    assert d["eval_sd"][64] < d["eval_sd"][8] < d["eval_sd"][4]
    assert d["eval_sd_measured"][4] > d["eval_sd_measured"][16] > 0


def test_an_interaction_is_what_a_fixed_validation_set_adds():
    import random

    rng = random.Random(0)
    scores = [{f"v{j}": rng.random() for j in range(32)} for _ in range(4)]  # pure seed x video noise
    d = decompose(scores)
    assert d["interaction_sd"] > 0.2 and d["seed_sd_at"][4] > d["seed_sd_at"][32]


def test_rank_transfer_reads_two_tables_and_says_what_a_short_trial_predicts(tmp_path, capsys):
    """benchmarks/rank_transfer.py on tables whose answers are known: the long run ranks the
    configurations as the short one does (Spearman 1) or the other way round (-1); the pooled
    seed std and its share of the best mean are the arithmetic's."""
    from benchmarks.rank_transfer import main, transfer
    from benchmarks.replay.sources.table import Run, read_table, write_table

    header = {"metric": "val/st_iou", "mode": "max", "max_t": 2, "params": ["optim.lr"]}

    def table(name, values):  # config -> (seed 0, seed 1) values at the last epoch
        runs = [Run(c, s, {"optim.lr": 1e-3 * (c + 1)}, {"time_s": [1.0, 1.0], "val/st_iou": [0.0, v],
                                                        "val/fresh": [1.0, 1.0]})
                for c, pair in enumerate(values) for s, v in enumerate(pair)]
        write_table(tmp_path / name, header, runs)
        return read_table(tmp_path / name)

    short = table("short.jsonl", [(0.10, 0.12), (0.20, 0.22), (0.30, 0.32), (0.40, 0.42)])
    same = table("same.jsonl", [(0.2, 0.2), (0.3, 0.3), (0.5, 0.5), (0.6, 0.6)])
    reversed_ = table("rev.jsonl", [(0.6, 0.6), (0.5, 0.5), (0.3, 0.3), (0.2, 0.2)])
    r = transfer(short, same, None, "last", 2, draws=50)
    assert r["spearman"] == pytest.approx(1.0) and r["best_mean"] == pytest.approx(0.41)
    assert r["pooled_seed_sd"] == pytest.approx(statistics.stdev([0.1, 0.12])) and r["sd_share"] == pytest.approx(
        statistics.stdev([0.1, 0.12]) / 0.41)
    assert transfer(short, reversed_, None, "last", 2, draws=50)["spearman"] == pytest.approx(-1.0)
    assert main([str(tmp_path / "short.jsonl"), str(tmp_path / "missing.jsonl")]) == 2  # named, no traceback
    same_runs = transfer(short, short, 1, "last", 2, draws=200)  # epoch 1 vs 2 of the same runs: paired
    assert same_runs["paired_bootstrap"] and not r["paired_bootstrap"]
    assert main([str(tmp_path / "short.jsonl"), str(tmp_path / "short.jsonl"), "--short-epochs", "3"]) == 2
    # Each seed alone, as a search's single trial sees it: seed 0 ranks as the long run, seed 1 the
    # other way round, while the means over both seeds still rank as the long run.
    split = table("split.jsonl", [(0.10, 0.20), (0.20, 0.19), (0.30, 0.18), (0.40, 0.17)])
    r = transfer(split, same, None, "last", 2, draws=20)
    assert r["spearman"] == pytest.approx(1.0)
    assert r["spearman_one_trial"] == {0: pytest.approx(1.0), 1: pytest.approx(-1.0)}
    table("long1.jsonl", [(0.2,), (0.3,), (0.5,), (0.6,)])  # one long seed: the interval is the short side's
    capsys.readouterr()
    assert main([str(tmp_path / "short.jsonl"), str(tmp_path / "long1.jsonl"), "--min-seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "one long seed" in out and "too narrow" in out and "long: seed std n/a" in out
    assert main([str(tmp_path / "short.jsonl"), str(tmp_path / "same.jsonl"), "--json", str(tmp_path)]) == 2
    one_seed = read_table(tmp_path / "same.jsonl")
    one_seed.runs = [r for r in one_seed.runs if r.seed == 0]
    r = transfer(one_seed, same, None, "last", 1, draws=10)  # the ranks only: no seed std from one seed
    assert r["spearman"] == pytest.approx(1.0) and r["pooled_seed_sd"] != r["pooled_seed_sd"]  # nan


def test_rank_transfer_model_ranks_held_out_configurations_by_their_neighbours(tmp_path):
    """`--model`: each configuration's value is predicted by the replay's GP model fitted without
    it, so a smooth landscape ranks held-out configurations as the long run does (or the other
    way round, -1); a table the model refuses (one seed everywhere) is a named error."""
    from benchmarks.rank_transfer import main, model_transfer
    from benchmarks.replay.sources.table import CurveError, Run, read_table, write_table

    fixture = json.loads((ROOT / "tests" / "fixtures" / "curves_tiny.jsonl").read_text().splitlines()[0])
    header = {k: fixture[k] for k in ("space", "space_file", "metric", "mode", "max_t", "params")}

    def curve(v):
        return {"time_s": [1.0] * 4, "val/st_iou": [0.0, v / 2, v, v], "val/ap50": [0.0, v / 2, v, v],
                "val/fresh": [1.0] * 4}

    def run(c, s):
        params = {"optim.gradient_clip_norm": 10.0, "loss.dfl_weight": 1.0, "optim.warmup_epochs": 1,
                  "optim.lr": 1e-4 * 2.5**c}
        return Run(c, s, params, curve(0.1 + 0.04 * c + 0.01 * s))

    write_table(tmp_path / "short.jsonl", header, [run(c, s) for c in range(6) for s in range(2)])
    short = read_table(tmp_path / "short.jsonl")
    assert model_transfer(short, {c: 0.2 + 0.1 * c for c in range(6)})["spearman"] == pytest.approx(1.0)
    assert model_transfer(short, {c: 0.2 - 0.01 * c for c in range(6)})["spearman"] == pytest.approx(-1.0)
    write_table(tmp_path / "one.jsonl", header, [run(c, 0) for c in range(6)])
    with pytest.raises(CurveError, match="--model: .*2 seeds"):
        model_transfer(read_table(tmp_path / "one.jsonl"), {c: 0.1 * c for c in range(6)})
    assert main([str(tmp_path / "short.jsonl"), str(tmp_path / "short.jsonl"), "--short-epochs", "2",
                 "--model"]) == 2


def test_a_tables_seeds_are_described_from_its_runs():
    """The header's seed line is counted from the runs, so an --extend or --top cannot leave it
    stale; a gap in a configuration's seeds is listed as it is."""
    from benchmarks.record_curves import seeds_summary
    from benchmarks.replay.sources.table import Run

    def runs(pairs):
        return [Run(c, s, {}, {}) for c, s in pairs]

    assert seeds_summary(runs([(0, 0), (0, 1), (0, 2), (1, 0), (2, 0)])) == \
        "seeds 0-2 for 1 configuration, 0 for 2 configurations"
    assert seeds_summary(runs([(0, 0), (0, 2)])) == "seeds 0,2 for 1 configuration"
