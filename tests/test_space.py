import subprocess
import sys
from pathlib import Path

import pytest

from tune.space import SpaceError, load_space

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


GOOD = """
name: t
base: smoke
base_overrides: {val_interval: 1}
params:
  optim.gradient_clip_norm: {type: loguniform, low: 1.0, high: 100.0}
  loss.dfl_weight: {type: uniform, low: 0.25, high: 2.0}
  optim.warmup_epochs: {type: int, low: 0, high: 3}
  optim.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
search: {metric: val/st_iou, mode: max, num_samples: 4, max_concurrent: 2,
         initial_points: [{optim.gradient_clip_norm: 10.0, loss.dfl_weight: 0.75, optim.warmup_epochs: 3, optim.lr: 1.0e-4}]}
scheduler: {type: asha, max_t: 3, grace_period: 1, reduction_factor: 2}
resources: {cpu: 1, gpu: 0.5}
"""


def test_shipped_spaces_are_valid():
    for name in ("smoke", "stage2", "hazard"):
        spec = load_space(name)
        assert {"optim.gradient_clip_norm", "loss.dfl_weight", "optim.warmup_epochs", "optim.lr"} <= set(spec.params)
        assert spec.base.epochs == spec.max_t
        assert Path(spec.base.data.root).is_absolute()  # trials run in other working dirs
    s2 = load_space("stage2")
    assert set(s2.params) == {"optim.gradient_clip_norm", "loss.dfl_weight", "optim.warmup_epochs", "optim.lr"}
    assert s2.base.data.root.endswith("datasets/train") and s2.base.data.val_root.endswith("datasets/val")
    assert s2.initial_points[0] == {"optim.gradient_clip_norm": 10.0, "loss.dfl_weight": 0.75,
                                    "optim.warmup_epochs": 3, "optim.lr": 1e-4}
    assert load_space("smoke").base == load_space("smoke").base.__class__.preset("smoke").with_overrides(
        {"epochs": 6}).resolve_paths()


@pytest.mark.parametrize("change, match", [
    (("optim.lr: {type: loguniform", "optim.lrr: {type: loguniform"), "params.optim.lrr: not a TrainConfig key"),
    (("optim.warmup_epochs: {type: int", "optim.warmup_epochs: {type: uniform"), "needs a float field"),
    (("low: 0.25, high: 2.0", "low: 2.0, high: 0.25"), "low must be < high"),
    (("low: 1.0e-4, high", "low: -1.0, high"), "log range needs low > 0"),
    (("metric: val/st_iou", "metric: val/banana"), "search.metric"),
    (("mode: max", "mode: up"), "search.mode"),
    (("name: t", "name: ../../etc"), "name"),
    (("grace_period: 1", "grace_period: 9"), "grace_period"),
    (("optim.warmup_epochs: 3, optim.lr: 1.0e-4}", "optim.warmup_epochs: 7, optim.lr: 1.0e-4}"), "outside"),
    (("resources: {cpu: 1, gpu: 0.5}", "resources: {cpu: 0, gpu: 0.5}"), "resources.cpu"),
    (("base: smoke", "base: nosuchpreset"), "base"),
    (("reduction_factor: 2}", "reduction_factor: 2, tie_break: val/banana}"), "scheduler.tie_break"),
    (("reduction_factor: 2}", "reduction_factor: 2, tie_break: val/st_iou}"), "other than search.metric"),
    (("search: {", "bogus: 1\nsearch: {"), "bogus: unknown key"),
    (("metric: val/st_iou, mode: max", "metric: val/loss, mode: max"), "search.mode: val/loss is minimised"),
    (("metric: val/st_iou, mode: max", "metric: val/loss, mode: min, penalty: 0.0"), "search.penalty: 0 could be better"),
    (("mode: max,", "mode: max, penalty: 0.5,"), "search.penalty: 0.5 could be better"),
    (("base_overrides: {val_interval: 1}\n", "base_overrides: {val_interval: 1, device: cuda}\n"),
     "device: cuda, but resources.gpu is 0"),  # GOOD asks for gpu 0.5: see below
    (("base_overrides: {val_interval: 1}\n", "base_overrides: {val_interval: 1, device: 'cuda:1'}\n"),
     "Ray chooses each trial's GPU"),
])
def test_invalid_spaces_name_file_and_key(tmp_path, change, match):
    text = GOOD.replace(*change)
    if "resources.gpu is 0" in match:
        text = text.replace("gpu: 0.5}", "gpu: 0}")
    path = write(tmp_path, text)
    with pytest.raises(SpaceError, match=match) as info:
        load_space(path)
    assert path in str(info.value)


def test_hostile_yaml(tmp_path):
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(write(tmp_path, "!!python/object/apply:os.system ['touch /tmp/pwned']\n"))
    with pytest.raises(SpaceError, match="mapping"):
        load_space(write(tmp_path, "[1, 2]\n"))
    with pytest.raises(SpaceError, match="params"):
        load_space(write(tmp_path, "name: x\n"))


def test_run_cli_rejects_bad_space_without_writing(tmp_path):
    path = write(tmp_path, GOOD.replace("mode: max", "mode: up"))
    r = subprocess.run([sys.executable, str(ROOT / "tune" / "run.py"), "--space", path], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "search.mode" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "results").exists()
    r = subprocess.run([sys.executable, str(ROOT / "tune" / "run.py"), "--space", "smoke", "--name", "../x"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "--name" in r.stderr
    # the real space without its dataset: refused before Ray starts, nothing written
    r = subprocess.run([sys.executable, str(ROOT / "tune" / "run.py"), "--space", "stage2"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "datasets/train" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "results").exists()
    r = subprocess.run([sys.executable, str(ROOT / "tune" / "run.py"), "--space", "smoke", "--resume"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "no search to resume" in r.stderr


def test_dry_run_prints_space_and_first_configs(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tune" / "run.py"), "--space", write(tmp_path, GOOD), "--dry-run"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "first configurations" in r.stdout
    assert "0: optim.gradient_clip_norm=10, loss.dfl_weight=0.75, optim.warmup_epochs=3, optim.lr=0.0001" in r.stdout
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("item, match", [
    ("data.bogus=1", "data.bogus: unknown key"),
    ("steps_per_epoch=abc", "steps_per_epoch: expected int"),
    ("steps_per_epoch", "expected key=value"),
    ("optim.lr=0.1", "a searched parameter"),
    ("epochs=9", "scheduler.max_t"),
])
def test_set_overrides_are_checked_before_anything_runs(tmp_path, monkeypatch, capsys, item, match):
    from tune.run import main

    monkeypatch.chdir(tmp_path)
    assert main(["--space", write(tmp_path, GOOD), "--set", item]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_set_overrides_the_base_in_the_dry_run(tmp_path, monkeypatch, capsys):
    from tune.run import main

    monkeypatch.chdir(tmp_path)
    assert main(["--space", write(tmp_path, GOOD), "--set", "steps_per_epoch=7", "--set", "data.root=elsewhere",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "epochs 3 x 7 steps" in out and str(tmp_path / "elsewhere") in out
    assert main(["--space", write(tmp_path, GOOD), "--resume", "--set", "steps_per_epoch=7"]) == 2
    assert "no search to resume (no space.yaml)" in capsys.readouterr().err  # nothing to resume here
    exp = tmp_path / "results" / "t"
    exp.mkdir(parents=True)
    (exp / "space.yaml").write_text(GOOD)  # a search started with this space
    assert main(["--space", write(tmp_path, GOOD), "--resume", "--set", "steps_per_epoch=7"]) == 2
    assert "keeps the base and resources it started with" in capsys.readouterr().err
    # the --space file gone: the experiment's own space.yaml is what resumes (here: a contradiction)
    assert main(["--space", "gone.yaml", "--name", "t", "--resume", "--num-samples", "9", "--dry-run"]) == 2
    assert "--num-samples 9: the search in" in capsys.readouterr().err


def test_rungs_must_fall_on_validated_epochs(tmp_path):
    from tune.space import asha_rungs

    assert asha_rungs(1, 2, 3) == [1, 2] and asha_rungs(4, 3, 20) == [4, 12] and asha_rungs(2, 2, 4) == [2, 4]
    stale = GOOD.replace("{val_interval: 1}", "{val_interval: 2}")
    with pytest.raises(SpaceError, match=r"rungs at epochs \[1\] are not validated with val_interval 2"):
        load_space(write(tmp_path, stale))
    fine = stale.replace("grace_period: 1", "grace_period: 2").replace("max_t: 3", "max_t: 4")
    assert load_space(write(tmp_path, fine, "f.yaml")).base.val_interval == 2  # rungs 2, 4
    r = subprocess.run([sys.executable, str(ROOT / "tune" / "run.py"), "--space", "smoke", "--set", "val_interval=3",
                        "--dry-run"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "not validated with val_interval 3" in r.stderr


def test_verdict_inputs_cannot_be_searched(tmp_path):
    bad = GOOD.replace("  optim.lr: {type: loguniform", "  health.grad_norm_max: {type: uniform, low: 10, high: 100}\n"
                                                        "  optim.lr: {type: loguniform")
    with pytest.raises(SpaceError, match="health.grad_norm_max: cannot be searched: a health verdict"):
        load_space(write(tmp_path, bad))


def test_confirmation_and_tie_break_defaults(tmp_path):
    from dataclasses import replace

    smoke = load_space("smoke")
    assert smoke.tie_break == "val/ap50"
    assert smoke.confirm_plan() == (1, 2)  # said so in the file
    unsaid = load_space(write(tmp_path, GOOD, name="u.yaml"))
    assert unsaid.confirm_plan() == (2, 2)  # a small search confirms its best before exporting
    assert replace(unsaid, num_samples=17).confirm_plan() == (0, 2)  # a larger one does not, unless asked
    assert load_space("hazard").confirm_plan() == (0, 2)  # said so in the file
    spec = load_space(write(tmp_path, GOOD.replace("max_concurrent: 2,", "max_concurrent: 2, confirm_top: 3, "
                                                   "confirm_seeds: 4,").replace("reduction_factor: 2}",
                                                                                 "reduction_factor: 2, tie_break: null}")))
    assert spec.confirm_plan() == (3, 4) and spec.tie_break is None
    train_loss = load_space(write(tmp_path, GOOD.replace("metric: val/st_iou, mode: max", "metric: train/loss, mode: min"),
                                  name="m.yaml"))
    assert train_loss.tie_break is None  # no default secondary for other metrics
    with pytest.raises(SpaceError, match="search.confirm_top"):
        load_space(write(tmp_path, GOOD.replace("max_concurrent: 2,", "max_concurrent: 2, confirm_top: -1,"), name="c.yaml"))


def test_a_search_says_where_stage2_starts(capsys, tmp_path):
    """stage2.yaml as shipped names no weights: the console's header says once that stage 2
    trains from random weights; a named file that does not exist, or made for another model,
    is refused before Ray starts."""
    from dataclasses import replace

    from tune.console import start_line
    from tune.launch import ExperimentError, check_start

    spec = load_space("stage2")
    check_start(spec, remote=False)
    assert "stage 2 from random weights" in start_line(spec.base) and capsys.readouterr().out == ""
    missing = replace(spec, base=spec.base.with_overrides({"checkpoint": str(tmp_path / "stage1.pt")}))
    with pytest.raises(ExperimentError, match="checkpoint: .*stage1.pt not found"):
        check_start(missing, remote=False)
    check_start(missing, remote=True)  # on a cluster the file may live on the workers
    assert "not on this machine" in capsys.readouterr().out
    # a file that exists but was made for another model (width 0.125 in stage2's 0.25)
    from conftest import foreign_checkpoint

    foreign = replace(spec, base=spec.base.with_overrides({"checkpoint": str(foreign_checkpoint(tmp_path / "s1.pt"))}))
    with pytest.raises(ExperimentError, match="base checkpoint: .*s1.pt: made for another model size"):
        check_start(foreign, remote=False)
    # one that fits: nothing to say
    import torch

    from refdet.model import build_model

    torch.save({"model": build_model(spec.base.model).state_dict()}, tmp_path / "fits.pt")
    fits = replace(spec, base=spec.base.with_overrides({"checkpoint": str(tmp_path / "fits.pt")}))
    check_start(fits, remote=False)
    assert start_line(fits.base).endswith("stage 2 from " + str(tmp_path / "fits.pt"))


def test_dry_run_says_whether_the_dataset_exists(tmp_path, monkeypatch, capsys, tiny_dataset):
    """The check the search makes before anything is written, said by the dry run (exit 2 where
    the search would stop)."""
    from tune.run import main

    monkeypatch.chdir(tmp_path)  # stage2 reads ./datasets/train and ./datasets/val: not here
    assert main(["--space", "stage2", "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert "first configurations" in captured.out
    assert f"{tmp_path / 'datasets' / 'train'}: dataset folder not found" in captured.err
    assert "the search would stop here (exit 2)" in captured.err
    assert main(["--space", "stage2", "--dry-run", "--set", f"data.root={tiny_dataset}",
                 "--set", f"data.val_root={tiny_dataset}"]) == 0
    assert f"data: {tiny_dataset}: 6 videos, valid" in capsys.readouterr().out
    # bad start weights with good data: the closing hint names the start, not the data
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    assert main(["--space", "stage2", "--dry-run", "--set", f"data.root={tiny_dataset}", "--set",
                 f"data.val_root={tiny_dataset}", "--set", f"checkpoint={tmp_path / 'bad.pt'}"]) == 2
    err = capsys.readouterr().err
    assert "(the start weights: --set checkpoint=PATH" in err and "the data:" not in err
    assert not (tmp_path / "results").exists()


def test_a_trial_runs_where_its_resources_put_it(tmp_path, capsys):
    """`device: cuda` with no GPU for the trials is exit 2 from the command line too (it used to
    train every trial on the CPU without a word); `device: cpu` keeps trials on the CPU even
    where they hold a GPU; otherwise a trial takes CUDA when Ray gave it a GPU (auto)."""
    from tune.run import main
    from tune.trainable import build_trial_config

    assert main(["--space", "smoke", "--set", "device=cuda", "--dry-run"]) == 2
    assert "device: cuda, but resources.gpu is 0" in capsys.readouterr().err
    spec = load_space(write(tmp_path, GOOD))
    point = dict(spec.initial_points[0])
    assert build_trial_config(spec, point).device == "auto"
    on_cpu = spec.__class__(**{**spec.__dict__, "base": spec.base.with_overrides({"device": "cpu"})})
    assert build_trial_config(on_cpu, point).device == "cpu"


def test_trials_as_truncations_of_the_exported_run(tmp_path):
    """optim.schedule_epochs is checked against the trials' own epochs (max_t, not the preset's)
    and must be the exported run's length (final_epochs): else the trials rank configurations
    for a schedule nobody runs."""
    text = GOOD.replace("{val_interval: 1}", "{val_interval: 1, optim.schedule_epochs: 3}")
    spec = load_space(write(tmp_path, text + "final_epochs: 3\n"))  # max_t 3 < the preset's 6 epochs
    assert spec.base.optim.schedule_epochs == 3 and spec.base.epochs == 3
    with pytest.raises(SpaceError, match="set final_epochs: 3"):
        load_space(write(tmp_path, text, name="f.yaml"))  # final_epochs 100
    with pytest.raises(SpaceError, match="scheduler.max_t"):
        load_space(write(tmp_path, GOOD.replace("{val_interval: 1}", "{val_interval: 1, optim.schedule_epochs: 2}")
                         + "final_epochs: 2\n", name="s.yaml"))


def test_the_dry_run_makes_the_searchs_own_checks(tmp_path, capsys, monkeypatch):
    """The dry run says where stage 2 starts and what a trial is of the exported run, and exits
    2 where the search would stop: a start file that is not there, a generated dataset made
    with another recipe (it used to read such a folder as valid)."""
    from tune.run import main

    monkeypatch.chdir(tmp_path)
    assert main(["--space", "smoke", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "stage 2 from " in out and "smoke_stage1.pt" in out
    assert "a trial: 6 epochs on its own schedule; the exported run: 24 epochs" in out
    assert main(["--space", "smoke", "--dry-run", "--set", "checkpoint=preset:missing.pt"]) == 2
    assert "missing.pt not found" in capsys.readouterr().err
    stale = tmp_path / "datasets" / "synthetic"
    (stale / "annotations").mkdir(parents=True)
    (stale / "synthetic.json").write_text('{"generator": 2}')
    assert main(["--space", "smoke", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"delete {stale}" in err and "the search would stop here" in err
