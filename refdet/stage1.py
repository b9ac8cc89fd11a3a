"""Make the start checkpoint the smoke preset trains stage 2 from.

    python -m refdet.stage1                      # writes refdet/presets/smoke_stage1.pt
    python -m refdet.stage1 --out my_stage1.pt --set epochs=10

The mission trains stage 2 from a stage-1 checkpoint; so does the embedded default. For the
tiny smoke model that start is trained *on episodes* (references, fusion and CPE on, the
stage-2 trainer from random weights) on the smoke dataset, generated on first use at its
`data.root`: a plain (non-episodic) detector start leaves the reference path shut, and stage 2
from it never learns to use its references (benchmarks/README.md, #21). The recipe stops at
600 steps, while the curve still rises (ST-IoU about 0.16 of the 0.23 it reaches at 2,000), so
a stage-2 trial from it has something to learn and its configuration decides how much.
Seed 0, on the CPU with one thread; the weights are written as float16 with the config that
made them (`load_weights` reads it). The same command on the same machine and torch build
writes the same weights; elsewhere they agree to float rounding. Validation scenes
(`data.val_root`) are never trained on. About 4 minutes on one core.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

from refdet.config import PRESET_DIR, TrainConfig

DEFAULT_OUT = PRESET_DIR / "smoke_stage1.pt"
# What the shipped file was made with (benchmarks/README.md, #21, has the evidence): stage 2's
# own episodic training from random weights, stopped early.
STAGE1 = {"stage": 2, "checkpoint": "", "epochs": 6, "steps_per_epoch": 100, "batch_size": 8, "optim.lr": 2e-3,
          "optim.warmup_epochs": 1, "optim.gradient_clip_norm": 10.0, "seed": 0, "device": "cpu", "num_threads": 1,
          "val_interval": 2}


def stage1_config(overrides: dict | None = None) -> TrainConfig:
    return TrainConfig.preset("smoke").with_overrides({**STAGE1, **(overrides or {})})


def make(cfg: TrainConfig, out: Path, work: Path) -> dict:
    """Train `cfg` (the start's recipe) and write its final weights (float16) and config to `out`."""

    from refdet.engine.checkpoint import save_checkpoint
    from refdet.engine.trainer import Trainer

    trainer = Trainer(cfg, run_dir=work, tensorboard=False)
    t0, last = time.time(), {}
    try:
        for result in trainer.fit():
            last = result.metrics
            val = (f"val/st_iou {last['val/st_iou']:.3f} ap50 {last['val/ap50']:.3f}" if last.get("val/fresh")
                   else "not validated")
            print(f"epoch {result.epoch}: loss {last['train/loss']:.3f} {val} ({time.time() - t0:.0f} s)", flush=True)
            if result.verdict is not None:
                raise RuntimeError(f"the start's training stopped: {result.verdict.message}")
        weights = {k: v.half() if v.is_floating_point() else v for k, v in trainer.model.state_dict().items()}
    finally:
        trainer.close()
    save_checkpoint(out, {"model": weights, "config": cfg.to_dict()})
    return {"seconds": round(time.time() - t0), "val/st_iou": last.get("val/st_iou"), "val/ap50": last.get("val/ap50"),
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest()[:16]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m refdet.stage1", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of the recipe")
    ap.add_argument("--work", type=Path, default=Path("checkpoints/stage1"), help="training.log and metrics")
    args = ap.parse_args(argv)
    from refdet.config import ConfigError, parse_set
    from refdet.data import DatasetError

    try:
        cfg = stage1_config(parse_set(args.set))
        info = make(cfg, args.out, args.work)
    except (ConfigError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} in {info['seconds']} s: val/st_iou {info['val/st_iou']:.3f}, "
          f"sha256 {info['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
