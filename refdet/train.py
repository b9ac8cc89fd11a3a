"""Train RefDet without Ray: ``python -m refdet.train --config smoke``.

    python -m refdet.train --config FILE|PRESET [--set key=value ...] [original flags]

Flags of the original train.py override the config: --stage --epochs --batch_size --n_way
--n_query --lr --gradient_clip_norm --dfl_weight --warmup_epochs --data_root --val_data_root
--checkpoint --val_interval --debug_mode, plus --output_dir, --resume and --set for any key.

Outputs in --output_dir (default ./checkpoints): training.log (grep "CPE Loss",
"Total Grad Norm", "DFL loss"), metrics.jsonl, tb/ (TensorBoard), last.pt, best.pt,
config.yaml.

Exit codes: 0 trained; 2 bad input (config, dataset, checkpoint); 3 stopped by a health
rule (the verdict is printed); 130 interrupted.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from refdet.config import ConfigError, TrainConfig, parse_set

EXIT_OK, EXIT_BAD_INPUT, EXIT_HEALTH, EXIT_INTERRUPTED = 0, 2, 3, 130

# original flag -> config path
FLAGS = {
    "stage": ("stage", int),
    "epochs": ("epochs", int),
    "batch_size": ("batch_size", int),
    "n_way": ("data.n_way", int),
    "n_query": ("data.n_query", int),
    "lr": ("optim.lr", float),
    "gradient_clip_norm": ("optim.gradient_clip_norm", float),
    "dfl_weight": ("loss.dfl_weight", float),
    "warmup_epochs": ("optim.warmup_epochs", int),
    "data_root": ("data.root", str),
    "val_data_root": ("data.val_root", str),
    "checkpoint": ("checkpoint", str),
    "pretrained": ("model.pretrained", str),
    "val_interval": ("val_interval", int),
    "output_dir": ("output_dir", str),
    "steps_per_epoch": ("steps_per_epoch", int),
    "device": ("device", str),
    "seed": ("seed", int),
}


def build_config(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig.load(args.config)
    overrides = parse_set(args.set)
    for flag, (path, _) in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[path] = value
    if args.debug_mode:
        overrides["debug_mode"] = True
    return cfg.with_overrides(overrides) if overrides else cfg


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m refdet.train", description="Train RefDet (no Ray needed).",
                                 epilog="Exit codes: 0 ok, 2 bad input, 3 health stop, 130 interrupted.")
    ap.add_argument("--config", default="smoke", help="preset name (smoke) or TrainConfig YAML (default smoke)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override any config key, e.g. --set optim.weight_decay=0.01 (repeatable)")
    for flag, (_, typ) in FLAGS.items():
        ap.add_argument(f"--{flag}", type=typ, default=None)
    ap.add_argument("--debug_mode", action="store_true", help="log every step")
    ap.add_argument("--resume", default=None, help="continue from a checkpoint of this run (last.pt)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    # Imported late: argument errors answer without loading torch.
    from refdet.data import DatasetError
    from refdet.engine.checkpoint import CheckpointError

    try:
        cfg = build_config(args)
        out = Path(cfg.output_dir)
        from refdet.engine.trainer import Trainer

        trainer = Trainer(cfg, run_dir=out)
        if args.resume:
            trainer.resume(args.resume)
    except (ConfigError, DatasetError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    cfg.to_yaml(out / "config.yaml", header="config of this run (python -m refdet.train --config this file)")
    print(trainer.dataset_summary)
    print(f"training on {trainer.device}: {cfg.epochs} epochs x {cfg.steps_per_epoch} steps, output in {out}")
    try:
        return run(trainer, cfg, out, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted at epoch {trainer.epoch}; resume with --resume {out / 'last.pt'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        trainer.close()


class EpochBars:
    """A tqdm bar per epoch, fed by the trainer's per-step callback."""

    def __init__(self, cfg: TrainConfig, enabled: bool):
        self.cfg, self.enabled, self.bar, self.epoch = cfg, enabled, None, None

    def __call__(self, s) -> None:
        from tqdm import tqdm

        if self.bar is None or s.epoch != self.epoch:
            self.close()
            self.epoch = s.epoch
            self.bar = tqdm(total=self.cfg.steps_per_epoch, desc=f"epoch {s.epoch}/{self.cfg.epochs}",
                            disable=not self.enabled, leave=True, dynamic_ncols=True)
        self.bar.update(1)
        if s.step % 5 == 0:
            self.bar.set_postfix(loss=f"{s.loss:.3f}", **{k: f"{v:.3f}" for k, v in s.terms.items()},
                                 gnorm=f"{s.grad_norm_pre:.3g}", rss=f"{s.mem_rss_gb:.2f}GB", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(trainer, cfg: TrainConfig, out: Path, progress: bool = True) -> int:
    """Trainer.fit with the CLI's console and checkpoints: last.pt every epoch, best.pt on a
    better validated ST-IoU."""
    bars = EpochBars(cfg, progress)
    best = None
    for result in trainer.fit(progress=bars):
        bars.close()
        m = result.metrics
        val = (f"val/st_iou {m['val/st_iou']:.4f} ap50 {m['val/ap50']:.4f} recall {m['val/recall']:.4f}"
               if result.validated else f"not validated (val_interval {cfg.val_interval})")
        print(f"epoch {result.epoch}: loss {m.get('train/loss', math.nan):.4f} | {val} | lr {m['lr']:.3g} | "
              f"grad norm max {m['health/grad_norm_pre_max']:.4g} | RSS {m['health/mem_rss_gb']:.2f} GB")
        if result.verdict is not None:
            print(f"stopped: {result.verdict.message}", file=sys.stderr)
            return EXIT_HEALTH
        trainer.save(out / "last.pt")
        if result.validated and (best is None or m["val/st_iou"] > best):
            best = m["val/st_iou"]
            trainer.save(out / "best.pt")
    bars.close()
    print(f"done: best val/st_iou {best or 0.0:.4f}; checkpoints in {out}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
