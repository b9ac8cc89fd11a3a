"""Kill the search driver mid-way (SIGKILL), then --resume: no trial lost, none run twice, one study."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState
from search_fixtures import write_space

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ray_tmp():
    """A private, short RAY_TMPDIR (Ray's socket paths must stay under 107 bytes)."""
    d = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def env_for(ray_dir):
    env = dict(os.environ, RAY_TMPDIR=str(ray_dir), PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return env


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and every process it started (Ray's daemons survive a driver kill)."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    proc.kill()
    proc.wait(timeout=30)
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)


def test_resume_after_driver_killed(tiny_dataset, tmp_path, ray_tmp):
    n, max_t = 4, 3  # two waves of two: the kill lands with trials done, running and not started
    space = write_space(tmp_path, tiny_dataset, "resume", num_samples=n, max_t=max_t, steps=6, lr_high=0.01,
                        initial_lr=0.002, initial_clip=10.0)
    storage = tmp_path / "results"
    exp = storage / "resume"
    cmd = [sys.executable, str(ROOT / "tune" / "run.py"), "--space", str(space), "--storage", str(storage)]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env_for(ray_tmp), cwd=tmp_path)
    try:
        deadline = time.time() + 240
        # Kill once some trials have checkpoints and others have not finished.
        while time.time() < deadline:
            ckpts = list(exp.glob("*/checkpoint_*"))
            results = list(exp.glob("*/result.json"))  # synced by the driver, after the trial's checkpoint
            done = [p for p in results if f'"training_iteration": {max_t}' in p.read_text()]
            if len(ckpts) >= 3 and results and list(exp.glob("experiment_state-*.json")) and len(done) < n:
                break
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("the search never reached a checkpoint")
    finally:
        kill_tree(proc)
        log.close()
    before = {p.parent.name: p.read_text().count("\n") for p in exp.glob("*/result.json")}
    assert before and (len(before) < n or min(before.values()) < max_t)  # killed mid-way

    # the report works on the interrupted search
    r = subprocess.run([sys.executable, str(ROOT / "tune" / "report.py"), str(exp), "--no-plots"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "running" in (exp / "leaderboard.csv").read_text()

    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env_for(ray_tmp), cwd=tmp_path,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    trial_dirs = [p.parent for p in exp.glob("*/params.json")]
    assert len(trial_dirs) == n  # the total asked, no more, no fewer
    for d in trial_dirs:
        iters = [json.loads(line)["training_iteration"] for line in (d / "result.json").read_text().splitlines()]
        assert iters == sorted(set(iters)), (d.name, iters)  # no epoch ran twice
        assert iters[0] == 1

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage_ = JournalStorage(JournalFileBackend(str(exp / "optuna.log")))
    assert len(optuna.get_all_study_summaries(storage_)) == 1
    study = optuna.load_study(study_name="resume", storage=storage_)
    assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    tracked = {t.user_attrs.get("ray_trial_id") for t in study.get_trials()
               if t.user_attrs.get("stop_reason") != "orphan"}
    assert len(tracked) == n
    assert "trials by stop reason" in r.stdout
