"""Ctrl-C of a real search, then --resume to the end: tune/run.py in a subprocess (its own
local Ray), SIGINT sent while trials are running."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import tiny_train_config
from optuna.trial import TrialState
from search_fixtures import write_space

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
SAMPLES, MAX_T = 4, 3


def run_py(*args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(ROOT / "tune" / "run.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def result_rows(exp: Path) -> dict[str, list[dict]]:
    out = {}
    for f in exp.glob("*/result.json"):
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if rows:
            out[rows[-1]["trial_id"]] = rows
    return out


def newest_records(exp: Path) -> dict:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="intr", storage=JournalStorage(JournalFileBackend(str(exp / "optuna.log"))))
    return {t.user_attrs["ray_trial_id"]: t for t in study.get_trials() if "ray_trial_id" in t.user_attrs}


def check_told_states(exp: Path, metric: str = "val/st_iou") -> None:
    """Every told state is what the trial's own result rows show."""
    rows = result_rows(exp)
    for rid, t in newest_records(exp).items():
        last = rows.get(rid, [{}])[-1]
        it = int(last.get("training_iteration", 0))
        if t.state == TrialState.COMPLETE and t.constraints.get("health", 0) == 0:
            assert it == MAX_T and t.value == last[metric], (rid, it)
        elif t.state == TrialState.COMPLETE:
            assert last.get("health/fatal") == 1.0, rid
        elif t.state == TrialState.PRUNED:
            assert it < MAX_T and not last.get("health/fatal"), rid


def epochs_by_trial(exp: Path) -> dict[str, list[int]]:
    return {rid: [r["training_iteration"] for r in rs] for rid, rs in result_rows(exp).items()}


def check_continued(before: dict[str, list[int]], after: dict[str, list[int]]) -> None:
    """After a resume each trial's epochs continue where they were: at most the last epoch
    reported before the interruption runs again (its checkpoint may have missed Tune's last
    snapshot) -- never a restart from an earlier epoch or from scratch."""
    for rid, its in after.items():
        seen = before.get(rid, [])
        assert its[:len(seen)] == seen, (rid, seen, its)
        rest = its[len(seen):]
        start = seen[-1] if seen else 1
        allowed = [[], list(range(start, start + len(rest)))]  # a trial not seen before starts at epoch 1
        if seen:
            allowed.append(list(range(start + 1, start + 1 + len(rest))))
        assert rest in allowed, (rid, seen, its)
        assert len(its) - len(set(its)) <= 1, (rid, its)


def test_first_ctrl_c_leaves_a_resumable_search_and_resume_finishes_it(tiny_dataset, tmp_path, monkeypatch, capsys):
    """Started with --num-samples (the space says more): the printed command resumes the search
    as it was started, to its end."""
    space = write_space(tmp_path, tiny_dataset, "intr", num_samples=SAMPLES + 2, max_t=MAX_T, steps=10,
                        initial_lr=2e-3, lr_high=1e-2)
    exp = tmp_path / "results" / "intr"
    proc = run_py("--space", str(space), "--storage", "results", "--num-samples", str(SAMPLES), cwd=tmp_path)
    # mid-trial, a trial ended before: the third (2 at a time) has reported an epoch
    wait_for_rows(proc, exp, pattern="*_3/result.json")
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    line = next(x for x in err.splitlines() if x.startswith("interrupted:"))
    finished = int(line.split()[1])
    assert finished < SAMPLES and f"of {SAMPLES} trials finished" in line
    command = f"python tune/run.py --space {space} --name intr --storage results --resume"
    assert line.endswith(command)
    assert not (exp / "best_config.yaml").exists()
    assert "Interrupted" in (exp / "summary.md").read_text()
    assert "Tuner.restore" not in err
    check_told_states(exp)  # nothing partial was told as an outcome
    running = [t for t in newest_records(exp).values() if t.state == TrialState.RUNNING]
    assert running, "a trial was mid-run at the Ctrl-C"
    before = epochs_by_trial(exp)

    # an option that contradicts how the search was started is refused before Ray starts
    # (tune.run.main in this process: the same code path as the CLI, without a process's cost)
    from tune.run import main

    monkeypatch.chdir(tmp_path)
    assert main([*command.split()[2:], "--num-samples", str(SAMPLES + 1)]) == 2
    err = capsys.readouterr().err
    assert f"--num-samples {SAMPLES + 1}: the search in" in err, err[-2000:]
    proc = run_py(*command.split()[2:], cwd=tmp_path)  # the printed command, as printed
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    rows = result_rows(exp)
    assert len(rows) == SAMPLES  # the plan it was started with; no trial ran twice
    check_continued(before, epochs_by_trial(exp))
    with open(exp / "leaderboard.csv") as fh:
        board = list(csv.DictReader(fh))
    assert len(board) == SAMPLES and "running" not in {r["stop_reason"] for r in board}
    # the resumed console's last progress counts the trials that ended before the Ctrl-C too:
    # its best so far is the search's best, tied as often as the leaderboard says
    results = [float(r["best_metric"]) for r in board if r["stop_reason"] in ("completed", "asha")]
    top = max(results)
    last = [x for x in (out + err).splitlines() if f"[{SAMPLES}/{SAMPLES} " in x][-1]
    tied = sum(v == top for v in results)
    assert f"best val/st_iou {top:.4f}" in last and ((f"({tied} tied)" in last) == (tied > 1)), (last, results)
    # finished: a config is exported, or -- trials tied exactly, nothing separating them -- the
    # summary says why none is (tune/ranking.py)
    assert (exp / "best_config.yaml").is_file() or "**No best config**" in (exp / "summary.md").read_text()
    records = newest_records(exp)
    assert len(records) == SAMPLES and not [t for t in records.values() if t.state == TrialState.RUNNING]
    check_told_states(exp)


KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
from tune import searcher

real = searcher.RefDetOptunaSearch.on_trial_complete
def on_trial_complete(self, trial_id, result=None, error=False):
    real(self, trial_id, result, error)
    outcome = self.classify(trial_id, result, error)[0]
    if outcome in ("pruned", "fail", "infeasible"):  # told: now die before Tune's next snapshot
        os.kill(os.getpid(), signal.SIGKILL)
searcher.RefDetOptunaSearch.on_trial_complete = on_trial_complete
from tune.run import main
sys.exit(main(sys.argv[1:]))
"""


def kill_ray_processes(marker: str) -> None:
    """A SIGKILLed driver leaves Ray's processes behind (reparented, ignoring SIGTERM)."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in p.info["cmdline"] or ()):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def test_a_kill_between_tell_and_snapshot_is_reconciled_on_resume(tiny_dataset, tmp_path):
    """The driver dies right after telling Optuna a trial's outcome, before Tune snapshots;
    after --resume every trial's newest Optuna record is what its own result rows show."""
    import shutil
    import tempfile

    space = write_space(tmp_path, tiny_dataset, "intr", num_samples=SAMPLES, max_t=MAX_T, steps=4,
                        metric="train/loss", mode="min", initial_lr=2e-3, lr_high=1e-2)
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(root=str(ROOT)))
    ray_tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's socket paths live under it
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1")
    exp = tmp_path / "results" / "intr"
    try:
        proc = subprocess.run([sys.executable, str(script), "--space", str(space), "--storage", "results"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        kill_ray_processes(ray_tmp)
        told = {rid: t.state for rid, t in newest_records(exp).items() if t.state != TrialState.RUNNING}
        assert told, "the kill came after a tell"
        proc = subprocess.run([sys.executable, str(ROOT / "tune" / "run.py"), "--space", str(space), "--storage",
                               "results", "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        kill_ray_processes(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    records = newest_records(exp)
    # An orphan: asked of Optuna after Tune's last snapshot, so unknown to the restored Tune,
    # which never ran it (no result rows); the searcher told it FAIL on restore.
    orphans = {rid for rid, t in records.items() if t.user_attrs.get("stop_reason") == "orphan"}
    assert all(records[rid].state == TrialState.FAIL for rid in orphans) and not orphans & set(result_rows(exp))
    ran = {rid: t for rid, t in records.items() if rid not in orphans}
    # A trial that started and ended between two snapshots is unknown to the restored Tune,
    # which starts another in its place: its journal record stands, so the search may hold one
    # trial more than asked -- never one less, never one run twice. Its result rows stand too
    # unless the kill came before the driver synced its folder to the storage: then the only
    # trial without rows is that one, unknown to every Tune snapshot, its record finished.
    rows = result_rows(exp)
    snapshots = " ".join(f.read_text() for f in exp.glob("experiment_state-*.json"))
    rowless = set(ran) - set(rows)
    assert set(rows) <= set(ran) and SAMPLES <= len(ran) <= SAMPLES + 1, sorted(ran)
    assert len(rowless) <= len(ran) - SAMPLES and not [rid for rid in rowless if rid in snapshots], \
        (sorted(rowless), sorted(ran))
    assert all(ran[rid].state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for rid in rowless)
    assert not [t for t in ran.values() if t.state == TrialState.RUNNING]
    check_told_states(exp, metric="train/loss")


def wait_for_rows(proc, folder: Path, pattern: str = "*/result.json", timeout: float = 300) -> None:
    """Until some trial under `folder` has reported an epoch (the process still running)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if any(f.read_text().strip() for f in folder.glob(pattern)) if folder.is_dir() else False:
            return
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()


def test_ctrl_c_in_the_last_wave_and_while_confirming_is_never_a_finished_search(tiny_dataset, tmp_path):
    """1. Every trial already started: Tune marks the ones it stops TERMINATED, like finished
    ones; the verdict comes from what the searcher told, so nothing is exported. 2. Ctrl-C
    while confirming: no confirm.json of half-run seeds. 3. --resume continues the confirmation."""
    # Three epochs of 16 steps: the Ctrl-C, sent once epoch 1 is reported, lands while two
    # epochs are left (seconds), whatever the machine's speed. train/loss: it separates the two
    # trials (at this budget both score ST-IoU and AP50 0.0, a tie that skips the confirmation).
    space = write_space(tmp_path, tiny_dataset, "intr", num_samples=2, max_t=3, steps=16, initial_lr=2e-3,
                        lr_high=1e-2, metric="train/loss", mode="min")
    raw = yaml.safe_load(space.read_text())
    raw["search"].update(confirm_top=1, confirm_seeds=2)
    space.write_text(yaml.safe_dump(raw, sort_keys=False))
    exp = tmp_path / "results" / "intr"
    proc = run_py("--space", str(space), "--storage", "results", cwd=tmp_path)
    wait_for_rows(proc, exp)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "of 2 trials finished" in err and "search intr:" not in out
    assert not (exp / "best_config.yaml").exists() and not (exp / "confirm").exists()

    proc = run_py("--space", str(space), "--storage", "results", "--resume", cwd=tmp_path)
    wait_for_rows(proc, exp / "confirm", timeout=400)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted while confirming" in err and err.rstrip().endswith("--resume")
    assert not (exp / "confirm.json").exists()  # no mean of half-run seeds
    assert not (exp / "best_config.yaml").exists()  # nothing exported before the confirmation ends
    assert "confirmation" in (exp / "summary.md").read_text()
    before = epochs_by_trial(exp / "confirm")

    proc = run_py("--space", str(space), "--storage", "results", "--resume", cwd=tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "continuing the interrupted confirmation" in out
    confirm = json.loads((exp / "confirm.json").read_text())
    assert confirm["plan"]["seeds"] == [1000, 1001] and len(confirm["configs"]) == 1
    assert len(confirm["configs"][0]["values"]) == 2 and confirm["configs"][0]["failed"] == 0
    after = epochs_by_trial(exp / "confirm")
    assert len(after) == 2  # the two seeds; none started afresh
    check_continued(before, after)
    assert all(its[-1] == 3 for its in after.values())
    assert "expected on a re-run" in (exp / "best_config.yaml").read_text()


def test_ctrl_c_of_the_final_run_exits_130_and_the_same_command_continues_it(tiny_dataset, tmp_path):
    exp = tmp_path / "results" / "fin"
    exp.mkdir(parents=True)
    tiny_train_config(tiny_dataset, None, epochs=3, steps_per_epoch=8).to_yaml(exp / "best_config.yaml")
    cmd = [sys.executable, str(ROOT / "tune" / "final.py"), str(exp), "--cpus", "1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_for_rows(proc, exp / "final")
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    line = next(x for x in err.splitlines() if x.startswith("interrupted"))
    assert "of 3; continue with: python tune/final.py" in line and "final run:" not in out
    before = epochs_by_trial(exp / "final")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "continuing the final run" in proc.stdout and "final run: 3 epochs" in proc.stdout
    after = epochs_by_trial(exp / "final")
    check_continued(before, after)  # as in the search's resume
    assert [its[-1] for its in after.values()] == [3]
