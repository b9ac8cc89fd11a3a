"""Tiny search spaces for the Ray end-to-end tests (seconds per trial on this CPU)."""

from pathlib import Path

import yaml
from conftest import tiny_train_config


def write_space(tmp_path: Path, dataset: Path, name: str, num_samples: int, max_t: int = 3, lr_high: float = 1.0,
                initial_lr: float = 0.9, initial_clip: float = 10.0, steps: int = 4, resources=None,
                max_concurrent: int = 2, metric: str = "val/st_iou", mode: str = "max", points: list | None = None,
                **extra) -> Path:
    """`points`: more enqueued trials after the first, each {param: value} over the first's."""
    base = tiny_train_config(dataset, None, **{"steps_per_epoch": steps, "data.val_frame_stride": 8,
                                               "health.patience": 2, "health.grad_norm_max": 100.0,
                                               "health.dead_window": 4})
    space = {
        "name": name,
        "base": base.to_dict(),
        "params": {
            "optim.gradient_clip_norm": {"type": "loguniform", "low": 0.1, "high": 100.0},
            "loss.dfl_weight": {"type": "uniform", "low": 0.25, "high": 2.0},
            "optim.warmup_epochs": {"type": "int", "low": 0, "high": 1},
            "optim.lr": {"type": "loguniform", "low": 1e-4, "high": lr_high},
        },
        # confirm_top 0: these test the search; the export's confirmation has its own tests
        "search": {"metric": metric, "mode": mode, "num_samples": num_samples, "max_concurrent": max_concurrent, "seed": 3,
                   "confirm_top": 0,
                   "initial_points": [first := {"optim.gradient_clip_norm": initial_clip, "loss.dfl_weight": 0.75,
                                                "optim.warmup_epochs": 0, "optim.lr": initial_lr}]
                   + [{**first, **p} for p in points or ()]},
        "scheduler": {"type": "asha", "max_t": max_t, "grace_period": 1, "reduction_factor": 2},
        "resources": resources or {"cpu": 1, "gpu": 0},
        "final_epochs": 2,
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path
