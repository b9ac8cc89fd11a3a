"""Training health: per-step statistics and the rules that stop a run.

`HealthMonitor` is pure Python (no torch, no Ray): it reads `StepStats` and returns a
`Verdict` when a rule fires. Every rule reads the training's own state -- gradient norms,
unweighted loss terms, foreground counts, memory -- and never a searched value (the clip,
a loss weight, the lr or the warmup length): a run that trains normally must get the same
verdict wherever the searcher put its hyperparameters. Thresholds come from `HealthConfig`
(fixed for a search: a space may not search `health.*`).

Step rules are the table `STEP_RULES`: a condition and the number of consecutive steps it
must hold. The streak counters are derived from it, so a new rule is one entry (and a test).

| rule           | reason         | condition, held for                                                |
|----------------|----------------|--------------------------------------------------------------------|
| nonfinite      | nonfinite      | loss or pre-clip norm NaN/inf (not an fp16 overflow skip), once    |
| memory_budget  | memory_budget  | host RSS > budget, or CUDA peak > the trial's share of the device  |
| grad_norm      | grad_explosion | pre-clip norm / sum of loss weights > grad_norm_max, `patience`    |
| grad_growth    | grad_explosion | pre-clip norm > grad_growth_factor x its running median, `patience`|
| loss_spike     | loss_spike     | unweighted loss > loss_spike_factor x its running median,          |
|                |                | `loss_spike_patience` steps                                        |
| dfl_divergence | dfl_divergence | unweighted DFL term > dfl_max, `patience` steps                    |
| dead_detector  | dead_detector  | ground truth in the batch, yet box + class + DFL terms (unweighted)|
|                |                | < dead_loss_max: every anchor scored 0, `dead_window` steps        |
| cpe_zero       | cpe_zero       | stage 2: CPE term exactly 0, `cpe_zero_window` steps               |
| memory_growth  | memory_leak    | per epoch: RSS grows > pct after `mem_growth_after_epoch`          |
| oom            | oom            | CUDA OOM / MemoryError anywhere in a trial (raised by the trainer) |

Rules that compare with the run's history (grad_growth, loss_spike) wait for `settle_steps`
finite steps: a fixed count, the same for every trial. (They used to wait for the warmup,
a searched value; the DFL level rule waited too, though a learning run's DFL term stays
below 3 from its first step on the smoke data -- it now applies from step 1.)
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from refdet.config import HealthConfig
from refdet.io import fmt_number

STOP_REASONS = ("ok", "oom", "nonfinite", "grad_explosion", "loss_spike", "dfl_divergence", "dead_detector",
                "cpe_zero", "memory_budget", "memory_leak")


@dataclass
class StepStats:
    """One optimizer step. `terms`: the criterion's unweighted loss terms by name; `loss`:
    their weighted total; memory in GB; times in seconds."""

    step: int
    epoch: int
    loss: float
    terms: dict[str, float]
    grad_norm_pre: float  # what clip_grad_norm_ returns (after unscaling under AMP)
    grad_norm_post: float
    clipped: bool
    nonfinite: bool  # loss or gradient not finite (the step was skipped)
    lr: float
    mem_rss_gb: float = 0.0
    mem_cuda_alloc_gb: float = 0.0
    mem_cuda_peak_gb: float = 0.0
    step_time: float = 0.0
    data_time: float = 0.0
    num_fg: int = 0  # anchors the assigner matched to ground truth
    num_gt: int = 0  # ground-truth boxes in the batch
    cpe_positives: int = 0
    amp_skipped: bool = False  # fp16 GradScaler overflow: the step was skipped, by design
    loss_weight_sum: float = 1.0  # sum of the loss weights of the total whose gradient grad_norm_pre is

    @property
    def grad_norm_per_weight(self) -> float:
        """The pre-clip norm of the gradient of total / sum(weights): a convex combination of the
        unweighted terms, so by the triangle inequality it is at most the largest unweighted
        term's own gradient norm. A limit on it cannot stop a run whose every term's gradient is
        within the limit, wherever the (searched) weights put the mix."""
        return self.grad_norm_pre / max(self.loss_weight_sum, 1e-12)

    @property
    def clip_ratio(self) -> float:
        """Pre/post clip ratio: logged (health/clip_ratio_max), never a stop rule -- it is a
        function of the searched clip value."""
        if not math.isfinite(self.grad_norm_pre) or self.grad_norm_post <= 0:
            return math.inf if self.grad_norm_pre > 0 else 1.0
        return self.grad_norm_pre / self.grad_norm_post

    @property
    def unweighted_loss(self) -> float:
        return float(sum(self.terms.values()))


@dataclass
class Verdict:
    """A fatal finding: the rule that fired, the stop reason it maps to, the step, and the values."""

    rule: str  # which check fired (STEP_RULES name, or memory_growth, oom, ...)
    stop_reason: str  # the stop reason it maps to (STOP_REASONS): what the search and the report group by
    step: int
    values: dict = field(default_factory=dict)

    @property
    def message(self) -> str:
        vals = ", ".join(f"{k}={fmt_number(v)}" for k, v in self.values.items())
        return f"health stop [{self.stop_reason}] rule {self.rule} at step {self.step}: {vals}"

    def to_dict(self) -> dict:
        return asdict(self)




@dataclass(frozen=True)
class StepRule:
    """`check(monitor, stats)` returns the values to report when the condition holds on
    this step, else None; `patience(cfg)` is how many consecutive steps it must hold."""

    name: str
    stop_reason: str
    check: Callable[[HealthMonitor, StepStats], dict | None]
    patience: Callable[[HealthConfig], int]


def _over_host_budget(m: HealthMonitor, rss_gb: float) -> dict | None:
    return dict(mem_rss_gb=rss_gb, budget_gb=m.cfg.mem_budget_gb) if rss_gb > m.cfg.mem_budget_gb else None


def _over_cuda_budget(m: HealthMonitor, peak_gb: float) -> dict | None:
    if m.cuda_budget_gb and peak_gb > m.cuda_budget_gb:
        return dict(mem_cuda_peak_gb=peak_gb, budget_gb=m.cuda_budget_gb)
    return None


def _host_memory(m: HealthMonitor, s: StepStats) -> dict | None:
    return _over_host_budget(m, s.mem_rss_gb)


def _cuda_memory(m: HealthMonitor, s: StepStats) -> dict | None:
    return _over_cuda_budget(m, s.mem_cuda_peak_gb)


def _grad_norm(m: HealthMonitor, s: StepStats) -> dict | None:
    # Per unit of loss weight, not the raw norm: the raw norm of the weighted total scales with
    # a searched weight (a DFL weight of 4 against 0.25 is 16x its DFL share).
    if s.grad_norm_per_weight > m.cfg.grad_norm_max:
        return dict(grad_norm_per_weight=s.grad_norm_per_weight, grad_norm_pre=s.grad_norm_pre,
                    loss_weight_sum=s.loss_weight_sum, limit=m.cfg.grad_norm_max)
    return None


def _grad_growth(m: HealthMonitor, s: StepStats) -> dict | None:
    median = m.running_median(m.grad_norms)
    if median is not None and s.grad_norm_pre > m.cfg.grad_growth_factor * median:
        return dict(grad_norm_pre=s.grad_norm_pre, running_median=median, factor=m.cfg.grad_growth_factor)
    return None


def _loss_spike(m: HealthMonitor, s: StepStats) -> dict | None:
    median = m.running_median(m.losses)
    loss = s.unweighted_loss
    if median is not None and loss > m.cfg.loss_spike_factor * median:
        return dict(unweighted_loss=loss, running_median=median, factor=m.cfg.loss_spike_factor)
    return None


def _dfl_divergence(m: HealthMonitor, s: StepStats) -> dict | None:
    dfl = s.terms.get("dfl", 0.0)
    if dfl > m.cfg.dfl_max:
        return dict(loss_dfl=dfl, limit=m.cfg.dfl_max)
    return None


DETECTION_TERMS = ("bbox", "cls", "dfl")


def _dead_detector(m: HealthMonitor, s: StepStats) -> dict | None:
    # A collapsed detector scores every anchor 0: the assigner's alignment is 0, so no box,
    # class or DFL loss is left (a learning one keeps a class loss of order 1).
    detection = sum(s.terms.get(k, 0.0) for k in DETECTION_TERMS)
    if s.num_gt > 0 and detection < m.cfg.dead_loss_max:
        return dict(detection_loss=detection, num_gt=s.num_gt, num_fg=s.num_fg, grad_norm_pre=s.grad_norm_pre)
    return None


def _cpe_zero(m: HealthMonitor, s: StepStats) -> dict | None:
    if m.cpe_active and s.terms.get("cpe", 0.0) == 0.0:
        return dict(cpe_positives=s.cpe_positives)
    return None


def _once(cfg: HealthConfig) -> int:
    return 1


STEP_RULES: tuple[StepRule, ...] = (
    StepRule("memory_budget", "memory_budget", _host_memory, _once),
    StepRule("cuda_memory_budget", "memory_budget", _cuda_memory, _once),
    StepRule("grad_norm", "grad_explosion", _grad_norm, lambda c: c.patience),
    StepRule("grad_growth", "grad_explosion", _grad_growth, lambda c: c.patience),
    StepRule("loss_spike", "loss_spike", _loss_spike, lambda c: c.loss_spike_patience),
    StepRule("dfl_divergence", "dfl_divergence", _dfl_divergence, lambda c: c.patience),
    StepRule("dead_detector", "dead_detector", _dead_detector, lambda c: c.dead_window),
    StepRule("cpe_zero", "cpe_zero", _cpe_zero, lambda c: c.cpe_zero_window),
)


def longest_patience(cfg: HealthConfig) -> int:
    """The longest stretch of steps any step rule looks at."""
    return max(max(1, r.patience(cfg)) for r in STEP_RULES)


class HealthMonitor:
    """cuda_budget_gb: this trial's CUDA budget (its share of the device x the configured
    fraction; 0 = no CUDA check). Histories are bounded deques of Python floats."""

    def __init__(self, cfg: HealthConfig, cpe_active: bool = True, cuda_budget_gb: float = 0.0):
        self.cfg, self.cpe_active, self.cuda_budget_gb = cfg, cpe_active, cuda_budget_gb
        window = max(cfg.history_window, 1)
        self.losses: deque[float] = deque(maxlen=window)
        self.grad_norms: deque[float] = deque(maxlen=window)
        self.finite_steps = 0
        self.streaks = {r.name: 0 for r in STEP_RULES}
        self.epoch_rss: list[float] = []  # one float per epoch: bounded by the run's length
        self._reset_epoch()

    @property
    def settled(self) -> bool:
        return self.finite_steps >= self.cfg.settle_steps

    def running_median(self, history: deque[float]) -> float | None:
        """The median of the history once the run has settled (None before)."""
        if not self.settled or not history:
            return None
        return statistics.median(history)

    def _reset_epoch(self) -> None:
        self.epoch_stats = {"grad_norm_pre_max": 0.0, "grad_norm_post_max": 0.0, "clip_ratio_max": 0.0,
                            "nonfinite_steps": 0, "cpe_zero": 0, "steps": 0, "rss": 0.0, "cuda_peak": 0.0}

    # -- per step ------------------------------------------------------------------------
    def update(self, s: StepStats) -> Verdict | None:
        e = self.epoch_stats
        e["steps"] += 1
        e["rss"] = max(e["rss"], s.mem_rss_gb)
        e["cuda_peak"] = max(e["cuda_peak"], s.mem_cuda_peak_gb)
        if s.amp_skipped:
            return None
        if s.nonfinite or not math.isfinite(s.loss) or not math.isfinite(s.grad_norm_pre):
            e["nonfinite_steps"] += 1
            return self._fire("nonfinite", "nonfinite", s.step, loss=s.loss, grad_norm_pre=s.grad_norm_pre)
        e["grad_norm_pre_max"] = max(e["grad_norm_pre_max"], s.grad_norm_pre)
        e["grad_norm_post_max"] = max(e["grad_norm_post_max"], s.grad_norm_post)
        e["clip_ratio_max"] = max(e["clip_ratio_max"], s.clip_ratio)
        if s.terms.get("cpe", 0.0) == 0.0:
            e["cpe_zero"] += 1
        verdict = self._check_rules(s) if self.cfg.enabled else None
        # The histories take the step after the check: a step is judged against the past.
        self.finite_steps += 1
        self.losses.append(s.unweighted_loss)
        self.grad_norms.append(s.grad_norm_pre)
        return verdict

    def _check_rules(self, s: StepStats) -> Verdict | None:
        for rule in STEP_RULES:
            values = rule.check(self, s)
            self.streaks[rule.name] = self.streaks[rule.name] + 1 if values is not None else 0
            patience = max(1, rule.patience(self.cfg))
            if values is not None and self.streaks[rule.name] >= patience:
                if patience > 1:
                    values = {"steps": self.streaks[rule.name], **values}
                return self._fire(rule.name, rule.stop_reason, s.step, **values)
        return None

    # -- per epoch -----------------------------------------------------------------------
    def end_epoch(self, epoch: int, step: int, rss_gb: float, cuda_peak_gb: float = 0.0,
                  peak_rss_gb: float = 0.0) -> Verdict | None:
        """Call after each epoch, after validation, with the current RSS, and the epoch's CUDA
        peak and host RSS peak since the last step (validation): validation's memory is judged
        by the same budgets as a step's; the RSS growth rule reads the epochs' RSS."""
        self.epoch_rss.append(rss_gb)
        c = self.cfg
        peak_rss_gb = max(peak_rss_gb, rss_gb)
        self.epoch_stats["rss"] = max(self.epoch_stats["rss"], peak_rss_gb)
        self.epoch_stats["cuda_peak"] = max(self.epoch_stats["cuda_peak"], cuda_peak_gb)
        if c.enabled:
            for rule, values in (("memory_budget", _over_host_budget(self, peak_rss_gb)),
                                 ("cuda_memory_budget", _over_cuda_budget(self, cuda_peak_gb))):
                if values is not None:
                    return self._fire(rule, "memory_budget", step, when="end of epoch (validation included)",
                                      **values)
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
        e = self.epoch_stats
        out = {
            "health/grad_norm_pre_max": e["grad_norm_pre_max"],
            "health/grad_norm_post_max": e["grad_norm_post_max"],
            "health/clip_ratio_max": e["clip_ratio_max"],
            "health/nonfinite_steps": float(e["nonfinite_steps"]),
            "health/cpe_zero_frac": e["cpe_zero"] / e["steps"] if e["steps"] else 0.0,
            "health/mem_rss_gb": self.epoch_rss[-1] if self.epoch_rss else e["rss"],
            "health/mem_rss_growth": self.rss_growth_pct(),
            "health/mem_cuda_peak_gb": e["cuda_peak"],
        }
        self._reset_epoch()
        return out

    def _fire(self, rule: str, reason: str, step: int, **values) -> Verdict:
        return Verdict(rule, reason, step, {k: float(v) if isinstance(v, (int, float)) else v for k, v in values.items()})

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"losses": list(self.losses), "grad_norms": list(self.grad_norms), "finite_steps": self.finite_steps,
                "streaks": dict(self.streaks), "epoch_rss": list(self.epoch_rss)}

    def load_state_dict(self, state: dict) -> None:
        self.losses.extend(state["losses"])
        self.grad_norms.extend(state.get("grad_norms", ()))
        self.finite_steps = int(state.get("finite_steps", len(self.losses)))
        self.streaks.update({k: v for k, v in state["streaks"].items() if k in self.streaks})
        self.epoch_rss = list(state["epoch_rss"])
