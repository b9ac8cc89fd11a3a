"""Training health: per-step statistics and the rules that stop a run.

`HealthMonitor` is pure Python (no torch, no Ray): it reads `StepStats` and returns a
`Verdict` when a rule fires. Thresholds and patience come from `HealthConfig`; the rules are
those of the original monitoring checklist (DESIGN.md, Health rules):

| rule            | reason           | fires when                                                   |
|-----------------|------------------|--------------------------------------------------------------|
| nonfinite       | nonfinite        | loss or grad norm is NaN/inf, once                            |
| grad_norm       | grad_explosion   | pre-clip norm > grad_norm_max for `patience` steps             |
| clip_ratio      | grad_explosion   | pre/post clip ratio > clip_ratio_max for `patience` steps      |
| loss_spike      | loss_spike       | after warmup, loss > factor x running median for              |
|                 |                  | `loss_spike_patience` steps (per-batch loss is noisy)          |
| dfl_divergence  | dfl_divergence   | after warmup, DFL loss > dfl_max for `patience` steps          |
| cpe_zero        | cpe_zero         | stage 2: CPE loss exactly 0 on every step of a window          |
| memory_budget   | memory_budget    | host RSS > budget, or CUDA peak > fraction of the device       |
| memory_growth   | memory_leak      | RSS grows > pct per epoch after `mem_growth_after_epoch`       |
| oom             | oom              | CUDA OOM / MemoryError (raised by the trainer)                 |

Histories are bounded deques of Python floats.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import asdict, dataclass, field

from refdet.config import HealthConfig

STOP_REASONS = ("ok", "oom", "nonfinite", "grad_explosion", "loss_spike", "dfl_divergence", "cpe_zero",
                "memory_budget", "memory_leak")


@dataclass
class StepStats:
    """One optimizer step. Losses are unweighted terms; memory in GB; times in seconds."""

    step: int
    epoch: int
    loss: float
    loss_bbox: float
    loss_cls: float
    loss_dfl: float
    loss_cpe: float
    cpe_positives: int
    num_fg: int
    grad_norm_pre: float  # what clip_grad_norm_ returns (after unscaling under AMP)
    grad_norm_post: float
    clipped: bool
    nonfinite: bool  # loss or gradient not finite (the step was skipped)
    lr: float
    mem_rss_gb: float
    mem_cuda_alloc_gb: float
    mem_cuda_peak_gb: float
    step_time: float
    data_time: float
    amp_skipped: bool = False  # fp16 GradScaler overflow: the step was skipped, by design
    @property
    def clip_ratio(self) -> float:
        if not math.isfinite(self.grad_norm_pre) or self.grad_norm_post <= 0:
            return math.inf if self.grad_norm_pre > 0 else 1.0
        return self.grad_norm_pre / self.grad_norm_post


@dataclass
class Verdict:
    """A fatal finding: which rule, the stop reason it maps to, the step, and the values."""

    rule: str
    reason: str
    step: int
    values: dict = field(default_factory=dict)

    @property
    def message(self) -> str:
        vals = ", ".join(f"{k}={_fmt(v)}" for k, v in self.values.items())
        return f"health stop [{self.reason}] rule {self.rule} at step {self.step}: {vals}"

    def to_dict(self) -> dict:
        return asdict(self)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class HealthMonitor:
    def __init__(self, cfg: HealthConfig, warmup_steps: int = 0, cpe_active: bool = True,
                 cuda_total_gb: float = 0.0):
        self.cfg, self.warmup_steps, self.cpe_active = cfg, warmup_steps, cpe_active
        self.cuda_total_gb = cuda_total_gb
        self.losses: deque[float] = deque(maxlen=max(cfg.loss_window, 1))
        self.cpe_window: deque[float] = deque(maxlen=max(cfg.cpe_zero_window, 1))
        self.streaks = {"grad_norm": 0, "clip_ratio": 0, "loss_spike": 0, "dfl_divergence": 0}
        self.epoch_rss: list[float] = []  # one float per epoch: bounded by the run's length
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self.ep = {"grad_norm_pre_max": 0.0, "grad_norm_post_max": 0.0, "clip_ratio_max": 0.0,
                   "nonfinite_steps": 0, "cpe_zero": 0, "steps": 0, "rss": 0.0, "cuda_peak": 0.0}

    # -- per step ------------------------------------------------------------------------
    def update(self, s: StepStats) -> Verdict | None:
        ep = self.ep
        ep["steps"] += 1
        ep["rss"] = max(ep["rss"], s.mem_rss_gb)
        ep["cuda_peak"] = max(ep["cuda_peak"], s.mem_cuda_peak_gb)
        if s.amp_skipped:
            return None
        if s.nonfinite or not math.isfinite(s.loss) or not math.isfinite(s.grad_norm_pre):
            ep["nonfinite_steps"] += 1
            return self._fire("nonfinite", "nonfinite", s.step, loss=s.loss, grad_norm_pre=s.grad_norm_pre)
        ep["grad_norm_pre_max"] = max(ep["grad_norm_pre_max"], s.grad_norm_pre)
        ep["grad_norm_post_max"] = max(ep["grad_norm_post_max"], s.grad_norm_post)
        ep["clip_ratio_max"] = max(ep["clip_ratio_max"], s.clip_ratio)
        if s.loss_cpe == 0.0:
            ep["cpe_zero"] += 1
        if not self.cfg.enabled:
            return None
        c = self.cfg
        if s.mem_rss_gb > c.mem_budget_gb:
            return self._fire("memory_budget", "memory_budget", s.step, mem_rss_gb=s.mem_rss_gb,
                              budget_gb=c.mem_budget_gb)
        if self.cuda_total_gb and s.mem_cuda_peak_gb > c.cuda_mem_fraction * self.cuda_total_gb:
            return self._fire("memory_budget", "memory_budget", s.step, mem_cuda_peak_gb=s.mem_cuda_peak_gb,
                              budget_gb=c.cuda_mem_fraction * self.cuda_total_gb)
        after_warmup = s.step >= self.warmup_steps
        median = statistics.median(self.losses) if len(self.losses) >= 10 else None
        checks = {
            "grad_norm": (s.grad_norm_pre > c.grad_norm_max, "grad_explosion",
                          dict(grad_norm_pre=s.grad_norm_pre, limit=c.grad_norm_max)),
            "clip_ratio": (s.clip_ratio > c.clip_ratio_max, "grad_explosion",
                           dict(grad_norm_pre=s.grad_norm_pre, grad_norm_post=s.grad_norm_post,
                                ratio=s.clip_ratio, limit=c.clip_ratio_max)),
            "loss_spike": (after_warmup and median is not None and s.loss > c.loss_spike_factor * median,
                           "loss_spike", dict(loss=s.loss, running_median=median or 0.0, factor=c.loss_spike_factor)),
            "dfl_divergence": (after_warmup and s.loss_dfl > c.dfl_max, "dfl_divergence",
                               dict(loss_dfl=s.loss_dfl, limit=c.dfl_max)),
        }
        for rule, (bad, reason, values) in checks.items():
            self.streaks[rule] = self.streaks[rule] + 1 if bad else 0
            if self.streaks[rule] >= (c.loss_spike_patience if rule == "loss_spike" else c.patience):
                return self._fire(rule, reason, s.step, steps=self.streaks[rule], **values)
        self.losses.append(s.loss)
        if self.cpe_active:
            self.cpe_window.append(s.loss_cpe)
            if len(self.cpe_window) == self.cpe_window.maxlen and all(v == 0.0 for v in self.cpe_window):
                return self._fire("cpe_zero", "cpe_zero", s.step, window=len(self.cpe_window),
                                  cpe_positives=s.cpe_positives)
        return None

    # -- per epoch -----------------------------------------------------------------------
    def end_epoch(self, epoch: int, step: int, rss_gb: float) -> Verdict | None:
        """Call after each epoch (after validation) with the current RSS."""
        self.epoch_rss.append(rss_gb)
        c = self.cfg
        if c.enabled and epoch > c.mem_growth_after_epoch and len(self.epoch_rss) >= 2:
            growth = self.rss_growth_pct()
            if growth > c.mem_growth_pct:
                return self._fire("memory_growth", "memory_leak", step, growth_pct=growth, limit_pct=c.mem_growth_pct,
                                  rss_gb=rss_gb)
        return None

    def rss_growth_pct(self) -> float:
        if len(self.epoch_rss) < 2 or self.epoch_rss[-2] <= 0:
            return 0.0
        return 100.0 * (self.epoch_rss[-1] - self.epoch_rss[-2]) / self.epoch_rss[-2]

    def epoch_summary(self) -> dict[str, float]:
        """The health/* metrics of DESIGN.md for the epoch so far; resets the epoch counters."""
        ep = self.ep
        out = {
            "health/grad_norm_pre_max": ep["grad_norm_pre_max"],
            "health/grad_norm_post_max": ep["grad_norm_post_max"],
            "health/clip_ratio_max": ep["clip_ratio_max"],
            "health/nonfinite_steps": float(ep["nonfinite_steps"]),
            "health/cpe_zero_frac": ep["cpe_zero"] / ep["steps"] if ep["steps"] else 0.0,
            "health/mem_rss_gb": self.epoch_rss[-1] if self.epoch_rss else ep["rss"],
            "health/mem_rss_growth": self.rss_growth_pct(),
            "health/mem_cuda_peak_gb": ep["cuda_peak"],
        }
        self._reset_epoch()
        return out

    def _fire(self, rule: str, reason: str, step: int, **values) -> Verdict:
        return Verdict(rule, reason, step, {k: float(v) if isinstance(v, (int, float)) else v for k, v in values.items()})

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"losses": list(self.losses), "cpe_window": list(self.cpe_window), "streaks": dict(self.streaks),
                "epoch_rss": list(self.epoch_rss)}

    def load_state_dict(self, state: dict) -> None:
        self.losses.extend(state["losses"])
        self.cpe_window.extend(state["cpe_window"])
        self.streaks.update(state["streaks"])
        self.epoch_rss = list(state["epoch_rss"])
