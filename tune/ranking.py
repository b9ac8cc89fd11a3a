"""Which trial a search exports, and what the report says about how it was chosen.

The best trial is the best validation value over its epochs among the trials that were
neither health-stopped nor errored. Trials tied *exactly* on that value (early ST-IoU is often
0.0 for all) are told apart by the tie-break signal (`scheduler.tie_break`, val/ap50 by
default for val/st_iou; the same signal ASHA's rungs use): the best tie-break value over the
same epochs. When that does not separate them either -- it ties too, it was never measured, or
the space sets no tie-break -- nothing decides between them, and no config is exported: an
arbitrary pick among equals would read as a finding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from refdet.metrics import lower_is_better

RESULT_REASONS = ("completed", "asha", "running")  # trials whose value is a result


@dataclass(frozen=True)
class Choice:
    """best: the chosen trial row (None: no healthy value, or a tie nothing separates).
    tied: the trials tied exactly with the top value, when more than one. decided_by: the
    tie-break metric when it decided."""

    best: object | None
    tied: tuple = ()
    decided_by: str | None = None

    @property
    def unresolved(self) -> bool:
        return self.best is None and len(self.tied) > 1


def tie_value(results: list[dict], tie_break: str | None) -> float | None:
    """A trial's best tie-break value over its healthy, freshly validated epochs; None if it
    has none (a non-finite value the trainable replaced is listed in health/nonfinite_metrics
    and never used)."""
    if not tie_break:
        return None
    vals = []
    for r in results:
        v = r.get(tie_break)
        if r.get("health/fatal") or not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            continue
        if (tie_break.startswith("val/") and not r.get("val/fresh", 1.0)) or \
                tie_break in str(r.get("health/nonfinite_metrics", "")).split(","):
            continue
        vals.append(float(v))
    if not vals:
        return None
    return min(vals) if lower_is_better(tie_break) else max(vals)


def choose(rows: list, spec) -> Choice:
    """The trial to export (rows: tune.results.TrialRow, with `best` and `tie`)."""
    ok = [r for r in rows if r.best is not None and r.reason in RESULT_REASONS]
    if not ok:
        return Choice(None)
    top = max(spec.sign * r.best for r in ok)
    tied = [r for r in ok if spec.sign * r.best == top]
    if len(tied) == 1:
        return Choice(tied[0])
    tb = spec.tie_break
    sign2 = -1 if tb and lower_is_better(tb) else 1
    measured = [r for r in tied if getattr(r, "tie", None) is not None]
    if tb and len(measured) == len(tied):
        best2 = max(sign2 * r.tie for r in measured)
        winners = [r for r in measured if sign2 * r.tie == best2]
        if len(winners) == 1:
            ordered = tuple(sorted(tied, key=lambda r: -sign2 * r.tie))
            return Choice(winners[0], ordered, tb)
    return Choice(None, tuple(tied))


def rank_key(spec):
    """Sort key, best first: the value, then (among exact ties) the tie-break signal."""
    tb = spec.tie_break
    sign2 = -1 if tb and lower_is_better(tb) else 1

    def key(r):
        tie = getattr(r, "tie", None)
        return (-spec.sign * r.best, -sign2 * tie if tie is not None else math.inf)
    return key


def table_key(spec):
    """Sort key of the leaderboard (csv and summary.md): the results ranked as the export
    ranks them (`rank_key`), so that its first row is the exported trial; then the trials
    whose value is no result (a health stop's earlier epochs, an error); then those without one."""
    by_rank = rank_key(spec)
    return lambda r: (2, ()) if r.best is None else (0 if r.reason in RESULT_REASONS else 1, by_rank(r))


def explain(choice: Choice, spec, what: str = "best trial") -> list[str]:
    """What the console and summary say about a tie (nothing when there was none)."""
    if not choice.tied:
        return []
    m, n, v = spec.metric, len(choice.tied), choice.tied[0].best
    if choice.best is not None:
        others = [r for r in choice.tied if r is not choice.best]
        runner = others[0].tie if others else None
        return [f"{n} trials tied at {m} {v:.4f}; the {what} {choice.best.trial_id} was decided by "
                f"{choice.decided_by}: {choice.best.tie:.4f} against {runner:.4f} for the next"]
    why = _why_unseparated(choice.tied, spec)
    return [f"no best config: {n} trials tied exactly at {m} {v:.4f}, {why}; nothing decides between them, "
            f"so no best_config.yaml is written",
            f"to separate them: train longer (a larger scheduler.max_t than {spec.max_t}, so the values can move "
            f"apart), or search another space (other ranges, another base config)"]


def _why_unseparated(tied, spec) -> str:
    tb = spec.tie_break
    if not tb:
        return "and the space sets no scheduler.tie_break"
    missing = [r for r in tied if r.tie is None]
    if missing:
        return f"and {_ids(missing)} have no {tb} value"
    sign2 = -1 if lower_is_better(tb) else 1
    top = max(sign2 * r.tie for r in tied)
    still = [r for r in tied if sign2 * r.tie == top]
    return f"and the best of them by {tb}, {_ids(still)}, tie at {sign2 * top:.4f} too"


def _ids(rows) -> str:
    return ", ".join(r.trial_id for r in rows[:6]) + (f" and {len(rows) - 6} more" if len(rows) > 6 else "")
