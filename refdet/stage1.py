"""Make the start checkpoint the smoke preset trains stage 2 from.

    python -m refdet.stage1 --out my_start.pt --set epochs=10
    python -m refdet.stage1 --force              # remakes the shipped refdet/presets/smoke_stage1.pt

The mission trains stage 2 from a stage-1 checkpoint; so does the embedded default. For the
tiny smoke model that start is trained *on episodes* (references, fusion and CPE on, the
stage-2 trainer from random weights) on the smoke dataset, generated on first use at its
`data.root`: a plain (non-episodic) detector start leaves the reference path shut, and stage 2
from it never learns to use its references (benchmarks/README.md, #21). The recipe stops at
600 steps, while the curve still rises (ST-IoU about 0.16 of the 0.23 it reaches at 2,000), so
a stage-2 trial from it has something to learn and its configuration decides how much.
Seed 0, on the CPU with one thread; the weights are written as float16 with the config that
made them (`load_weights` reads it). The same command on the same machine and torch build
writes the same weights (the printed digest is the weights', not the file's); elsewhere they
agree to float rounding. An existing `--out` (the shipped file included) is replaced only with
`--force`. Validation scenes (`data.val_root`) are never trained on. About 2-3 minutes on one
core. Exit codes: 0 written; 2 bad input; 3 stopped by a health rule (nothing written).
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


class StartStopped(RuntimeError):
    """A health rule stopped the start's training (the verdict says which and where)."""


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
                raise StartStopped(result.verdict.message)
        weights = {k: v.half() if v.is_floating_point() else v for k, v in trainer.model.state_dict().items()}
    finally:
        trainer.close()
    save_checkpoint(out, {"model": weights, "config": cfg.to_dict()})
    return {"seconds": round(time.time() - t0), "val/st_iou": last.get("val/st_iou"), "val/ap50": last.get("val/ap50"),
            "weights_sha256": weights_digest(weights)}


def weights_digest(weights: dict) -> str:
    """A digest of the weights themselves (names, dtypes, shapes, bytes): the file's own bytes
    also hold the name of the temporary file it was written through."""
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def check_out(out: Path, force: bool) -> str | None:
    """Why `out` cannot be written (checked before the minutes of training), or None."""
    if out.is_dir():
        return f"--out {out}: is a folder; name the file to write"
    if not out.parent.is_dir():
        return f"--out {out}: its folder {out.parent} does not exist"
    if out.exists() and not force:
        shipped = " (the start the smoke preset ships with)" if out.resolve() == DEFAULT_OUT.resolve() else ""
        return f"--out {out}: exists{shipped}; pass --force to replace it, or name another file"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m refdet.stage1", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    ap.add_argument("--force", action="store_true", help="replace --out if it exists (the shipped start included)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of the recipe")
    ap.add_argument("--work", type=Path, default=Path("checkpoints/stage1"), help="training.log and metrics")
    args = ap.parse_args(argv)
    from refdet.config import ConfigError, parse_set
    from refdet.data import DatasetError
    from refdet.engine.checkpoint import CheckpointError

    problem = check_out(args.out, args.force)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        cfg = stage1_config(parse_set(args.set))
        info = make(cfg, args.out, args.work)
    except (ConfigError, DatasetError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StartStopped as exc:
        print(f"stopped: {exc}; nothing written", file=sys.stderr)
        return 3
    print(f"wrote {args.out} in {info['seconds']} s: val/st_iou {info['val/st_iou']:.3f}, "
          f"weights sha256 {info['weights_sha256']}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
