"""Run outputs a person reads: training.log (grep-able lines), metrics.jsonl, TensorBoard.

Metric names follow DESIGN.md (one flat dict, `split/name` keys). Every file is optional:
a Ray trial passes only what it needs.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from refdet.engine.health import StepStats


class RunLog:
    def __init__(self, run_dir: str | Path | None, tensorboard: bool = True, log_every: int = 10):
        self.dir = Path(run_dir) if run_dir else None
        self.log_every = log_every
        self._text = self._jsonl = self._tb = None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._text = open(self.dir / "training.log", "a", buffering=1, encoding="utf-8")
            self._jsonl = open(self.dir / "metrics.jsonl", "a", buffering=1, encoding="utf-8")
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.dir / "tb"))

    def line(self, text: str) -> None:
        if self._text:
            self._text.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def step(self, s: StepStats) -> None:
        if s.step % self.log_every and s.step != 1 and not s.nonfinite:
            return
        self.line(
            f"epoch {s.epoch} step {s.step} | Total Loss {s.loss:.4f} | BBox loss {s.loss_bbox:.4f} | "
            f"Cls loss {s.loss_cls:.4f} | DFL loss {s.loss_dfl:.4f} | CPE Loss {s.loss_cpe:.4f} "
            f"(positives {s.cpe_positives}) | Total Grad Norm pre-clip {s.grad_norm_pre:.4g} "
            f"post-clip {s.grad_norm_post:.4g}{' (clipped)' if s.clipped else ''} | lr {s.lr:.3g} | "
            f"RSS {s.mem_rss_gb:.2f} GB | CUDA peak {s.mem_cuda_peak_gb:.2f} GB | "
            f"step {s.step_time * 1000:.0f} ms (data {s.data_time * 1000:.0f} ms)"
        )
        if self._tb:
            for k in ("loss", "loss_dfl", "loss_cpe", "grad_norm_pre", "grad_norm_post", "lr", "mem_rss_gb"):
                v = getattr(s, k)
                if math.isfinite(v):
                    self._tb.add_scalar(f"step/{k}", v, s.step)

    def epoch(self, metrics: dict, step: int) -> None:
        if self._jsonl:
            self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        if self._tb:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, int(metrics.get("epoch", step)))
            self._tb.flush()
        parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()]
        self.line("epoch summary | " + " | ".join(parts))

    def close(self) -> None:
        for f in (self._text, self._jsonl):
            if f:
                f.close()
        if self._tb:
            self._tb.close()
        self._text = self._jsonl = self._tb = None
