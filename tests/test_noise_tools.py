"""The noise benchmark's arithmetic (benchmarks/noise_sources.py) on a table whose components
are known: a seed's main effect, per-video difficulty, no interaction."""

import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
