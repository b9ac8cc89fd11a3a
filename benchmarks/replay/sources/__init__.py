"""Curve sources: what a replayed trial trains on.

  recorded table   benchmarks/curves/*.jsonl as recorded (sources/recorded.py): a proposal is
                   answered by the nearest recorded configuration and one of its seeds
  model:TABLE      a continuous model of a recorded table (sources/model.py): a GP fitted to the
                   per-epoch means, seed noise drawn at a chosen level
  lcbench:TASK     YAHPO Gym's LCBench surrogate (sources/lcbench.py), one of its 34 tasks

A source offers: `name`; `metric`, `mode`, `max_t`, `penalty`; `full_trial_s` (the compute of one
trial run to max_t, in the source's time unit); `spec(budget, concurrency, seed)` -> the
project's SearchSpec of the space (its seed configuration, ASHA settings, tie-break);
`draw(params, rng)` -> one training run of a configuration (a Curve); `true_value(params)` -> the
value a re-run is expected to record at full budget (the recorded table: the mean over seeds of
each run's best value over epochs; the continuous model: the best epoch of its mean curve, which
is lower where the noise is large; LCBench: the surrogate's curve): what an exported
configuration is scored by; `reference(rng)` -> (worst, best)
true values over the space, the normaliser of regret.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class SourceError(ValueError):
    """A source that cannot be opened; the message names it and the problem."""


@dataclass
class Curve:
    """One training run as a trial sees it: per-epoch reports, the epoch durations, and how it
    ends (`stop`: a health verdict at its last epoch; `error`: the trainable raised after its
    last report, or before the first when `epochs` is 0)."""

    series: dict[str, list[float]]  # metric -> per-epoch values (epoch 1 first); "time_s" included
    stop: dict | None = None
    error: str | None = None
    extend: object = field(default=None, repr=False)  # f(epoch) -> fills series up to epoch (lazy sources)
    length: int | None = None  # the run's epochs when `series` is filled lazily
    key: tuple | None = None  # where it came from, e.g. (recorded config, seed)

    @property
    def epochs(self) -> int:
        return self.length if self.length is not None else len(self.series.get("time_s", []))

    def at(self, epoch: int) -> dict[str, float]:
        """The values the trainable reports at `epoch` (1-based)."""
        if self.extend is not None and len(self.series["time_s"]) < epoch:
            self.extend(self, epoch)
        return {k: v[epoch - 1] for k, v in self.series.items()}


def open_source(text: str, noise: str | None = None):
    """`lcbench:TASK`, `model:TABLE` (with `noise`: a fraction of the best value, or "measured")
    or a recorded table's path -> the source."""
    if text.startswith("lcbench:"):
        from benchmarks.replay.sources.lcbench import LCBenchError, LCBenchSource

        if noise is not None:  # one configuration, one curve: a noise level would be ignored
            raise SourceError(f"{text}: the LCBench surrogate is deterministic; --noise applies to model:TABLE")

        try:
            return LCBenchSource(text.split(":", 1)[1])
        except LCBenchError as exc:
            raise SourceError(f"{text}: {exc}") from None
    from benchmarks.replay.sources.table import CurveError, read_table

    kind, path = ("model", text.split(":", 1)[1]) if text.startswith("model:") else ("table", text)
    try:
        table = read_table(Path(path))
    except CurveError as exc:
        raise SourceError(str(exc)) from None
    if kind == "table":
        if noise not in (None, "recorded"):
            raise SourceError(f"{text}: a recorded table replays its own seeds; --noise applies to model:TABLE")
        from benchmarks.replay.sources.recorded import RecordedSource

        return RecordedSource(table)
    from benchmarks.replay.sources.model import ModelSource

    return ModelSource(table, noise if noise is not None else "measured")


def sampled_reference(source, rng, n: int) -> tuple[float, float]:
    """(worst, best) true value over `n` configurations drawn uniformly over the space (log where
    log): the normaliser of regret for a source whose optimum is not known in closed form (the
    analysis widens it by any better value a search found)."""
    values = source.true_values(source.sample_params(rng, n))
    lo, hi = float(values.min()), float(values.max())
    return (lo, hi) if source.mode == "max" else (hi, lo)
