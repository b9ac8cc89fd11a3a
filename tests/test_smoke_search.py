"""The README's main job, as a newcomer runs it (two trials instead of six, ~2 minutes)."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_smoke_search_runs_from_a_fresh_folder(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tune" / "run.py"), "--space", "smoke", "--num-samples", "2"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "datasets" / "synthetic" / "annotations" / "annotations.json").is_file()  # generated
    exp = tmp_path / "results" / "smoke"
    with open(exp / "leaderboard.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    # the original recommendation ran first
    assert any(float(row["optim.lr"]) == 1e-4 and float(row["optim.gradient_clip_norm"]) == 10.0 for row in rows)
    assert "best trial" in r.stdout and (exp / "best_config.yaml").is_file()
    assert "| Trial name" in r.stdout  # the live table
