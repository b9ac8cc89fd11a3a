"""The console of a search, a confirmation and a final run: what a researcher reads.

    with library_output(exp / "driver.log"):     # Ray's and Optuna's output -> driver.log
        tuner = tune.Tuner(..., run_config=run_config(..., console=SearchConsole(...)))

On the console: a header, then one line per thing that happened to a trial -- started (its
values), stopped by ASHA (rung, value, the rung's cutoff), stopped by a health rule (rule,
step, values), completed (value), failed and retried, errored (where the error is) -- and one
live tqdm bar (trials finished/total, running, elapsed and remaining time, best so far). It is
a view, not a second source of truth: a trial's outcome is what the searcher told Optuna
(`RefDetOptunaSearch.classify`), an ASHA stop's cutoff is the one the scheduler recorded
(`HealthAwareASHA.stops`), the values are the trial's own reports.

Everything the libraries print -- Ray's status tables, the trials' forwarded output
("Checkpoint successfully created ..."), their warnings, Optuna's logs -- goes to
results/<name>/driver.log (tune/output.py `library_output`); `--verbose` shows it on the
console as well.
On a stream that is not a terminal (a file, CI) there is no live bar: each trial's end line
carries the progress instead, so a log file has no carriage-return redraws.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from ray.tune import Callback
from tqdm import tqdm

from refdet.io import fmt_number
from refdet.metrics import lower_is_better
from tune.output import say, terminal, verbose
from tune.preflight import schedule_line, start_line

# Short names of the searched parameters on the console (others: their last dotted part).
SHORT_NAMES = {"optim.gradient_clip_norm": "clip", "loss.dfl_weight": "dfl", "optim.warmup_epochs": "warmup",
               "optim.lr": "lr"}


def short_name(key: str) -> str:
    return SHORT_NAMES.get(key, key.rsplit(".", 1)[-1])


def fmt_params(params: dict) -> str:
    return ", ".join(f"{short_name(k)} {fmt_number(v)}" for k, v in params.items())


def trial_dirname(trial) -> str:
    """A trial's folder, and so its TensorBoard run name: its id and number as Tune counts
    them (`4eafc530_3`), not Ray's `<trainable>_<id>_<n>_<every param=value>_<date>`.
    A grid trial's id carries its index already (`a1b2c_00003`)."""
    n = str(trial.experiment_tag).split("_", 1)[0]
    tid = str(trial.trial_id)
    return tid if not n.isdigit() or tid.endswith(f"_{int(n):05d}") else f"{tid}_{n}"


# -- the trials' events -> one line each, and the progress bar -------------------------------

class SearchConsole(Callback):
    """One line per trial event and a live progress bar, on the driver (see the module doc).

    header: the lines said once at the start. what: how a run is named ("trial", "confirm",
    "final run"). param_keys: the config keys shown when a trial starts. sources: for a
    confirmation, the searched trial each `candidate` index re-runs. searcher / scheduler: the
    search's own (their record of what happened is what is said); without them (confirmation,
    final run) a run that reached max_t completed, one with `health/fatal` was stopped by its
    rule. per_epoch: the bar counts epochs of one run, not runs (the final run).

    Nothing here is pickled but the arguments: Tune pickles its callbacks with the Tuner, and
    the bar and the streams are made in `setup`."""

    def __init__(self, header: list[str], metric: str, mode: str, max_t: int, what: str = "trial",
                 param_keys=(), sources=(), searcher=None, scheduler=None, per_epoch: bool = False):
        self.header, self.metric, self.sign, self.max_t = list(header), metric, (1 if mode == "max" else -1), max_t
        self.what, self.param_keys, self.sources = what, list(param_keys), list(sources)
        self.searcher, self.scheduler, self.per_epoch = searcher, scheduler, per_epoch
        self._reset()

    def _reset(self) -> None:
        self._bar = None
        self._live = False  # a terminal: a redrawn bar; else the progress rides on the end lines
        self._best: dict[str, tuple[float, int]] = {}  # trial -> (best value, its epoch), healthy
        self._counts = {"done": 0, "running": 0, "total": 0, "epoch": 0, "before": 0}  # before: ended in an earlier run
        self._seeded = False  # a resumed search: the trials that ended before it are counted once
        self._ended: set[str] = set()  # trials this console saw end (Tune marks them a moment later)
        self._names: dict[str, str] = {}  # trial -> how the best-so-far names it
        self._retrying: set[str] = set()  # failed trials Tune restarts: their failure line said so
        self._errors: dict[str, str] = {}  # an error's text -> the run that said it first
        self._t0 = self._last_draw = 0.0

    def __getstate__(self):  # the arguments only: the rest is one run's
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    # -- Tune's hooks -----------------------------------------------------------------------

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        self._reset()
        self._t0 = time.time()
        self._counts["total"] = self.max_t if self.per_epoch else int(total_num_samples or num_samples or 0)
        for line in self.header:
            say(line)

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if not self._seeded:
            self._seeded = True
            self._seed(trials)

    def _seed(self, trials: list) -> None:
        """--resume: the trials that ended before it count as done (not in the time left), and
        the healthy ones' best values count in the best so far (from Tune's record of each)."""
        if self.per_epoch:
            return
        ended = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
        self._counts["before"] = len(ended)
        pick = "max" if self.sign > 0 else "min"
        for t in ended:
            last = t.last_result or {}
            value = (getattr(t, "metric_analysis", None) or {}).get(self.metric, {}).get(pick)
            if t.status == "TERMINATED" and not last.get("health/fatal") and _finite(value):
                self._best[t.trial_id] = (float(value), int(last.get("training_iteration", 0)))
                self._names[t.trial_id] = self._label(t).removeprefix(self.what).strip()

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        c = self._counts
        c["done"] = len(self._ended | {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")})
        c["running"] = sum(t.status == "RUNNING" and t.trial_id not in self._ended for t in trials)
        if self._bar is None:
            self._open_bar()
        if self._bar is not None and time.time() - self._last_draw >= 1.0:  # elapsed time moves
            self._draw()

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        if trial.trial_id in self._retrying:  # a retry: its failure line said where it restarts
            self._retrying.discard(trial.trial_id)
            return
        epoch = int((trial.last_result or {}).get("training_iteration", 0))
        params = {k: trial.config[k] for k in self.param_keys if k in trial.config}
        what = f"resumed at epoch {epoch}" if epoch else "started"
        say(f"{self._label(trial)} {what}" + (f": {fmt_params(params)}" if params and not epoch else ""))

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        epoch = int(result.get("training_iteration", 0))
        self._counts["epoch"] = max(self._counts["epoch"], epoch)
        value = result.get(self.metric)
        fresh = result.get("val/fresh", 1.0) if self.metric.startswith("val/") else 1.0
        if result.get("health/fatal"):
            self._best.pop(trial.trial_id, None)  # a health-stopped trial is no result
        elif fresh and _finite(value):
            self._names.setdefault(trial.trial_id, self._label(trial).removeprefix(self.what).strip())
            old = self._best.get(trial.trial_id)
            if old is None or self.sign * value > self.sign * old[0]:
                self._best[trial.trial_id] = (float(value), epoch)
        if self._bar is not None and self.per_epoch:
            self._draw()

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = _flat(trial.last_result or {})
        if self.searcher is not None:
            outcome, _, _ = self.searcher.classify(trial.trial_id, result, False)
        else:
            outcome = ("infeasible" if result.get("health/fatal") else
                       "complete" if int(result.get("training_iteration", 0)) >= self.max_t else "unfinished")
        line = self._outcome_line(trial, outcome, result)
        if line:
            self._end_line(trial, line)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self._retrying.add(trial.trial_id)
        epoch = _checkpoint_epoch(trial)
        where = f"from its checkpoint of epoch {epoch}" if epoch else "from the start (no checkpoint yet)"
        say(f"{self._label(trial)} failed ({trial.num_failures} of {trial.max_failures} retries): "
            f"{self._error(trial)}; retrying {where}", err=True)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._best.pop(trial.trial_id, None)
        where = f"; see {_rel(_error_path(trial))}" if trial.error_file else ""
        self._end_line(trial, f"{self._label(trial)} errored after {trial.num_failures} failure(s): "
                       f"{self._error(trial)}{where}", err=True)

    def _error(self, trial) -> str:
        """The trial's error, said in full once: a repeat (a retry failing the same way, or a
        mistake every trial makes) names the run that said it first."""
        text, label = _error_text(trial), self._label(trial)
        if text not in self._errors:
            self._errors[text] = label
            return text
        first = self._errors[text]
        return "the same error again" if first == label else f"the same error as {first}"

    def on_experiment_end(self, trials: list, **info) -> None:
        if self._bar is not None:
            self.on_step_end(0, trials)
            self._draw()
            self._bar.close()
            self._bar = None

    # -- the lines ----------------------------------------------------------------------------

    def _label(self, trial) -> str:
        cfg = trial.config
        if self.sources and isinstance(cfg.get("candidate"), int) and cfg["candidate"] < len(self.sources):
            return f"{self.what} {self.sources[cfg['candidate']]} seed {cfg.get('seed')}"
        return self.what if self.per_epoch else f"{self.what} {trial.trial_id}"

    def _outcome_line(self, trial, outcome: str, result: dict) -> str | None:
        label, m = self._label(trial), self.metric
        epoch = int(result.get("training_iteration", 0))
        if outcome == "complete":
            last = result.get(m)
            best = self._best.get(trial.trial_id)
            extra = f" (best {best[0]:.4f} at epoch {best[1]})" if best and best[0] != last else ""
            return f"{label} completed {epoch} epochs: {m} {_val(last)}{extra}"
        if outcome == "pruned":
            return f"{label} stopped by ASHA at epoch {epoch}: " + self._asha_reason(trial.trial_id, result)
        if outcome == "infeasible":
            values = str(result.get("health/verdict", "")).split(": ", 1)[-1]
            rule, reason = result.get("health/rule", "?"), result.get("health/stop_reason", "?")
            return (f"{label} stopped by health rule {rule}" + (f" ({reason})" if reason != rule else "")
                    + f" at step {int(result.get('health/step') or 0)}: {values}")
        if outcome == "fail":
            return f"{label} ended at epoch {epoch} without a finite {m}: told FAIL"
        return None  # unfinished: interrupted, not an outcome (a resume continues it)

    def _asha_reason(self, trial_id: str, result: dict) -> str:
        stop = (getattr(self.scheduler, "stops", None) or {}).get(trial_id)
        if stop is None:
            return f"{self.metric} {_val(result.get(self.metric))}"
        worse = "<" if self.sign > 0 else ">"
        text = f"{self.metric} {_val(stop['value'])} {worse} {_val(stop['cutoff'])}, the rung's cutoff"
        if stop.get("tie"):
            tm, mine, cut, n = stop["tie"]
            worse2 = ">" if lower_is_better(tm) else "<"
            text = (f"{self.metric} {_val(stop['value'])} tied at the rung's cutoff with {n} trial(s); "
                    f"{tm} {_val(mine)} {worse2} {_val(cut)}, the tied trials' cutoff")
        return text

    def _end_line(self, trial, line: str, err: bool = False) -> None:
        if trial.trial_id not in self._ended:
            self._ended.add(trial.trial_id)
            self._counts["done"] += 1
            self._counts["running"] = max(0, self._counts["running"] - 1)
        if self._bar is None and not self._live:
            line += f"  [{self._progress()}]"
        say(line, err=err)
        if self._bar is not None:
            self._draw()

    # -- the bar ------------------------------------------------------------------------------

    def _open_bar(self) -> None:
        term = terminal()
        self._live = bool(getattr(term, "isatty", lambda: False)()) and not verbose()
        if self._live:
            self._bar = tqdm(total=self._counts["total"], file=term, dynamic_ncols=True, leave=True,
                             bar_format="{desc} {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining}{postfix}")
            self._bar.set_description_str("epochs" if self.per_epoch else f"{self.what}s")
            self._bar.start_t = self._t0

    def _draw(self) -> None:
        c, bar = self._counts, self._bar
        bar.n = min(c["epoch"] if self.per_epoch else c["done"], bar.total or 0)
        bar.set_postfix_str(self._postfix(), refresh=False)
        bar.refresh()
        self._last_draw = time.time()

    def _postfix(self) -> str:
        parts = [] if self.per_epoch else [f"{self._counts['running']} running"]
        if self._best:
            tid, (value, _) = max(self._best.items(), key=lambda kv: self.sign * kv[1][0])
            tied = sum(v == value for v, _ in self._best.values())
            who = f"{tied} tied" if tied > 1 else self._names.get(tid, tid)
            parts.append(f"best {self.metric} {value:.4f}" + (f" ({who})" if who else ""))
        return ", ".join(parts)  # tqdm puts the ", " before it

    def _progress(self) -> str:
        """The bar's counts as text, for a log file: `3/8 01:43<02:10, best ...`."""
        c = self._counts
        n = c["epoch"] if self.per_epoch else c["done"]
        elapsed = time.time() - self._t0
        now = n - c["before"]  # ended in this run: the rate of this run
        left = elapsed / now * (c["total"] - n) if now > 0 and c["total"] >= n else None
        fmt = tqdm.format_interval
        post = self._postfix()
        return f"{n}/{c['total']} {fmt(elapsed)}<{fmt(left) if left is not None else '?'}" + (f", {post}" if post else "")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _val(v) -> str:
    return f"{v:.4f}" if _finite(v) else str(v)


def _flat(result: dict) -> dict:
    from ray.tune.utils import flatten_dict  # the form Tune hands the searcher

    return flatten_dict(result)


def _rel(path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _checkpoint_epoch(trial) -> int:
    """The epoch of the checkpoint a retried trial restarts from; 0: none yet (from the start)."""
    latest = getattr(trial, "latest_checkpoint_result", None)
    return int(((latest.metrics if latest is not None else None) or {}).get("training_iteration", 0))


def _error_path(trial) -> Path:
    """The trial's error file in the experiment folder (where the user looks), when local;
    else Tune's staging copy."""
    staged = Path(trial.error_file)
    stored = Path(trial.path or "") / staged.name
    return stored if stored.parent.is_dir() else staged


def _error_text(trial) -> str:
    """The last line of the trial's error (the exception and its message), at most 200 chars."""
    text = ""
    try:
        if trial.error_file and Path(trial.error_file).is_file():
            text = Path(trial.error_file).read_text(errors="replace")
    except OSError:
        pass
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Failure #")]
    return (lines[-1] if lines else "unknown error")[:200]


def search_console(spec, exp: Path | None, searcher, scheduler) -> SearchConsole:
    """The console of a search: its header says what runs and where the results go."""
    where = _rel(exp) if exp is not None else f"<storage>/{spec.name}"
    ties = f", exact ties at a rung by {spec.tie_break}" if spec.tie_break else ""
    header = [f"searching {spec.name}: {spec.num_samples} trials, {spec.max_concurrent} at a time, at most {spec.max_t} "
              f"epochs each; {spec.metric} ({spec.mode}); ASHA grace {spec.grace_period}, reduction "
              f"{spec.reduction_factor}{ties}",
              "  " + "; ".join(f"{short_name(k)} {p.describe()}" for k, p in spec.params.items()),
              f"  results in {where}" + (f"; Ray's and Optuna's own output in {where}/driver.log" if exp else "")]
    header += [start_line(spec.base)] if spec.base.stage == 2 else []
    header += [schedule_line(spec)] if spec.base.optim.schedule_epochs else []
    return SearchConsole(header, spec.metric, spec.mode, spec.max_t, param_keys=list(spec.params),
                         searcher=searcher, scheduler=scheduler)


def confirm_console(spec, sources: list[str], seeds: int, folder: Path) -> SearchConsole:
    """The console of a confirmation: each run is named by the searched trial it re-runs."""
    header = [f"confirming the {len(sources)} best configs ({', '.join(sources)}) with {seeds} new seeds each: "
              f"{len(sources) * seeds} runs of {spec.max_t} epochs, {spec.max_concurrent} at a time, in {_rel(folder)}"]
    return SearchConsole(header, spec.metric, spec.mode, spec.max_t, what="confirm", sources=sources)


def final_console(config_path: Path, epochs: int, cpu: float, gpu: float, folder: Path) -> SearchConsole:
    header = [f"final run of {_rel(config_path)}: {epochs} epochs on {cpu:g} CPU, {gpu:g} GPU; results in {_rel(folder)}"]
    return SearchConsole(header, "val/st_iou", "max", epochs, what="final run", per_epoch=True)
