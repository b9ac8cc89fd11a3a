import subprocess
import sys

import yaml
from conftest import tiny_train_config


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "refdet.train", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def read_scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return acc


def test_cli_trains_logs_and_overrides(tiny_dataset, tmp_path):
    cfg = tiny_train_config(tiny_dataset, tmp_path / "out")
    cfg.to_yaml(tmp_path / "c.yaml")
    out = tmp_path / "run"
    r = run_cli("--config", str(tmp_path / "c.yaml"), "--output_dir", str(out), "--epochs", "2", "--lr", "0.003",
                "--dfl_weight", "0.75", "--warmup_epochs", "1", "--gradient_clip_norm", "5", "--n_way", "2",
                "--n_query", "2", "--batch_size", "4", "--val_interval", "1", "--stage", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 0.003 and saved["loss"]["dfl_weight"] == 0.75
    assert saved["optim"]["warmup_epochs"] == 1 and saved["optim"]["gradient_clip_norm"] == 5.0
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    log = (out / "training.log").read_text()
    assert "CPE Loss" in log and "Total Grad Norm" in log and "DFL loss" in log
    acc = read_scalars(out / "tb")
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/loss_cpe", "val/st_iou", "lr", "health/grad_norm_pre_max", "health/mem_rss_gb"):
        assert tag in tags
    assert [e.step for e in acc.Scalars("val/st_iou")] == [1, 2]
    # resume continues after the saved epoch
    r = run_cli("--config", str(out / "config.yaml"), "--epochs", "3", "--resume", str(out / "last.pt"),
                "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "epoch 3:" in r.stdout and "epoch 1:" not in r.stdout


def test_cli_bad_input_exits_2(tmp_path, tiny_dataset, capsys):
    """One real process (exit code, no traceback on stderr); the other cases call the same
    main() in this one (a process each cost ~6 s of CI time for the same contract)."""
    from refdet.train import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: fast\n")
    r = run_cli("--config", str(bad))
    assert r.returncode == 2 and "optim.lr" in r.stderr and "Traceback" not in r.stderr

    def said(*args) -> str:
        assert main(list(args)) == 2, args
        return capsys.readouterr().err

    assert said("--config", "no_such_preset_or_file").startswith("error: ")
    cfg = tiny_train_config(tmp_path / "missing_dataset", tmp_path / "out")
    cfg = cfg.with_overrides({"data.synthetic": False})
    cfg.to_yaml(tmp_path / "c.yaml")
    assert "missing_dataset" in said("--config", str(tmp_path / "c.yaml"))
    tiny_train_config(tiny_dataset, tmp_path / "out").to_yaml(tmp_path / "ok.yaml")
    assert "nope.pt" in said("--config", str(tmp_path / "ok.yaml"), "--checkpoint", str(tmp_path / "nope.pt"))
    from conftest import (
        foreign_checkpoint,  # a checkpoint of another model size (embed_dim 64, not 32)
    )

    err = said("--config", str(tmp_path / "ok.yaml"), "--checkpoint", str(foreign_checkpoint(tmp_path / "big.pt")))
    assert "another model size" in err
    assert not (tmp_path / "out" / "config.yaml").exists()  # nothing written for a refused run


def test_cli_health_stop_exits_3(tiny_dataset, tmp_path):
    cfg = tiny_train_config(tiny_dataset, tmp_path / "out", **{"loss.cpe_iou_threshold": 1.5, "steps_per_epoch": 6})
    cfg.to_yaml(tmp_path / "c.yaml")
    r = run_cli("--config", str(tmp_path / "c.yaml"), "--no-progress")
    assert r.returncode == 3
    assert "cpe_zero" in r.stderr and "step 4" in r.stderr


def test_the_start_maker_checks_its_output_before_training(tmp_path, capsys):
    """python -m refdet.stage1 refuses, before any training, to replace an existing file (the
    shipped start included) without --force, and a folder or a missing folder as --out; its
    digest is the weights' (the file's bytes also name the temporary file it went through)."""
    import torch

    from refdet.stage1 import DEFAULT_OUT, main, weights_digest

    shipped = DEFAULT_OUT.read_bytes()
    assert main([]) == 2 and "the start the smoke preset ships with" in capsys.readouterr().err
    assert DEFAULT_OUT.read_bytes() == shipped
    (tmp_path / "old.pt").write_bytes(b"x")
    for out, said in ((tmp_path / "old.pt", "--force"), (tmp_path, "is a folder"), (tmp_path / "no" / "x.pt", "does not exist")):
        assert main(["--out", str(out)]) == 2 and said in capsys.readouterr().err
    w = {"a": torch.arange(4, dtype=torch.float16), "n": torch.tensor(3)}
    assert weights_digest(w) == weights_digest({k: v.clone() for k, v in w.items()})
    assert weights_digest(w) != weights_digest({**w, "n": torch.tensor(4)})
