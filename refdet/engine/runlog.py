"""Run outputs a person reads: training.log (grep-able lines), metrics.jsonl, TensorBoard.

Metric names follow DESIGN.md (one flat dict, `split/name` keys). Every file is optional:
a Ray trial passes only what it needs.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from pathlib import Path

from refdet.engine.health import StepStats

# The original log's labels (the monitoring checklist greps "CPE Loss" and "DFL loss").
TERM_LABELS = {"bbox": "BBox loss", "cls": "Cls loss", "dfl": "DFL loss", "cpe": "CPE Loss"}


def step_signals(s: StepStats) -> dict[str, float]:
    """The per-step signals TensorBoard shows under step/* (a trial's trace, the CLI's run)."""
    return {"step": float(s.step), "loss": s.loss, **{f"loss_{k}": v for k, v in s.terms.items()},
            "grad_norm_pre": s.grad_norm_pre, "grad_norm_post": s.grad_norm_post, "lr": s.lr,
            "num_fg": float(s.num_fg), "mem_rss_gb": s.mem_rss_gb, "mem_cuda_peak_gb": s.mem_cuda_peak_gb}


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

    def due(self, s: StepStats) -> bool:
        """Steps that are logged: the first, every `log_every`-th, and any non-finite one."""
        return s.step == 1 or s.step % self.log_every == 0 or s.nonfinite

    def step(self, s: StepStats) -> None:
        if not self.due(s):
            return
        terms = " | ".join(f"{TERM_LABELS.get(k, k + ' loss')} {v:.4f}" for k, v in s.terms.items())
        self.line(
            f"epoch {s.epoch} step {s.step} | Total Loss {s.loss:.4f} | {terms} "
            f"(positives {s.cpe_positives}, fg {s.num_fg}/{s.num_gt} gt) | Total Grad Norm pre-clip {s.grad_norm_pre:.4g} "
            f"post-clip {s.grad_norm_post:.4g}{' (clipped)' if s.clipped else ''} | lr {s.lr:.3g} | "
            f"RSS {s.mem_rss_gb:.2f} GB | CUDA peak {s.mem_cuda_peak_gb:.2f} GB | "
            f"step {s.step_time * 1000:.0f} ms (data {s.data_time * 1000:.0f} ms)"
        )
        self.scalars(step_signals(s))

    def scalars(self, row: dict[str, float]) -> None:
        """One row of step signals to TensorBoard (step/* tags, x = the optimizer step)."""
        if self._tb:
            for k, v in row.items():
                if k != "step" and math.isfinite(v):
                    self._tb.add_scalar(f"step/{k}", v, int(row["step"]))

    def epoch(self, metrics: dict, step: int) -> None:
        if self._jsonl:
            self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        if self._tb:
            for k, v in metrics.items():
                if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v):
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


class StepTrace:
    """The step signals an epoch's report carries (for TensorBoard): every `log_every`-th
    step, and every step of the last `recent` before a stop -- what a health rule looked at.
    Those extra steps also go to the run's own TensorBoard."""

    def __init__(self, log: RunLog, recent: int):
        self.log, self.rows = log, []
        self.recent: deque[dict[str, float]] = deque(maxlen=max(1, recent))

    def add(self, s: StepStats, final: bool) -> None:
        row = step_signals(s)
        if self.log.due(s):
            self.rows.append(row)
        self.recent.append(row)
        if final:
            seen = {r["step"] for r in self.rows}
            extra = [r for r in self.recent if r["step"] not in seen]
            for r in extra:
                self.log.scalars(r)
            self.rows = sorted(self.rows + extra, key=lambda r: r["step"])
