"""What a search hands back: leaderboard, summary, health report, plots, best_config.yaml.
(The CLI is tune/report.py.)

Reads the Ray trial folders (params.json, result.json: one JSON line per reported epoch),
the saved space.yaml and the Optuna journal (optuna.log). Writes, atomically:
  leaderboard.csv, summary.md   every trial: params, best and last metric, epochs, compute
                                time, stop reason; totals by reason; trial-epochs saved
  health_report.md              for each health-stopped trial: rule, step, values
  plots/*.png                   optimisation history, parameter importances, one scatter per
                                parameter coloured by stop reason
  best_config.yaml              the best trial's full TrainConfig with epochs = final_epochs

Best trial: the highest (mode max) best-over-epochs validation value among trials that were
not health-stopped and did not error (ASHA-pruned trials count: a rung value is a real
validation result); exact ties are decided by the tie-break signal, or not at all (no
best_config.yaml): tune/ranking.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from refdet.io import atomic_write_text, fmt_number
from tune.ranking import Choice, choose, explain, table_key, tie_value
from tune.space import SearchSpec, SpaceError, load_space


class ReportError(ValueError):
    pass


@dataclass
class TrialRow:
    trial_id: str
    params: dict
    epochs: int = 0
    best: float | None = None
    last: float | None = None
    time_s: float = 0.0
    reason: str = "running"
    verdict: str = ""
    rule: str = ""
    step: float | None = None
    history: list = field(default_factory=list)  # (epoch, metric)
    tie: float | None = None  # best tie-break value over its healthy epochs (tune/ranking.py)


def read_results(path: Path) -> list[dict]:
    """A trial's result rows, one per epoch. An epoch can appear twice when the search was
    interrupted while its report was in flight (the resumed trial runs it again from the
    previous checkpoint): the later row wins."""
    by_epoch: dict[int, dict] = {}
    if not path.is_file():
        return []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if line:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written right now
            by_epoch.pop(int(row.get("training_iteration", 0)), None)
            by_epoch[int(row.get("training_iteration", 0))] = row
    return sorted(by_epoch.values(), key=lambda r: int(r.get("training_iteration", 0)))


def measured_values(results: list[dict], metric: str) -> list[tuple[int, float]]:
    """(epoch, value) of each epoch that measured `metric`: finite, not a health stop's
    penalty, and for a validation metric a validated epoch (`val/fresh` 1) -- a carried-forward
    or not-yet-measured value is not a result."""
    out = []
    for r in results:
        v = r.get(metric)
        fresh = r.get("val/fresh", 1.0) if metric.startswith("val/") else 1.0
        if isinstance(v, (int, float)) and math.isfinite(v) and not r.get("health/fatal") and fresh:
            out.append((int(r.get("training_iteration", 0)), float(v)))
    return out


def run_value(results: list[dict], spec: SearchSpec) -> tuple[float | None, str | None]:
    """What one run (a confirmation seed) scored: (value, health stop reason or None). A run a
    health rule stopped scores the penalty, whatever it measured before the stop; otherwise
    its best measured value (None if it measured nothing)."""
    if results and results[-1].get("health/fatal"):
        return float(spec.penalty), str(results[-1].get("health/stop_reason", "health"))
    values = [v for _, v in measured_values(results, spec.metric)]
    return (spec.best_of(values) if values else None), None


TRIAL_DIR = re.compile(r"_([0-9a-f]{5,})_(\d+)_")  # Ray's own: <trainable>_<id>_<n>_<params>_<date>
SHORT_DIR = re.compile(r"^([0-9a-f]{8})_(\d+)$")  # tune.console.trial_dirname's: <id>_<n>


def _dir_match(tdir: Path):
    """(trial id, start number) from a trial folder's name, or None."""
    m = TRIAL_DIR.search(tdir.name) or SHORT_DIR.match(tdir.name)
    return (m.group(1), int(m.group(2))) if m else None


def start_order(tdir: Path) -> tuple[int, str]:
    m = _dir_match(tdir)
    return (m[1], tdir.name) if m else (10**9, tdir.name)


def collect_trials(exp: Path, spec: SearchSpec) -> list[TrialRow]:
    """One row per Ray trial folder, in start order."""
    rows = []
    for params_file in sorted(exp.glob("*/params.json"), key=lambda p: start_order(p.parent)):
        tdir = params_file.parent
        try:
            params = json.loads(params_file.read_text())
        except json.JSONDecodeError:
            continue
        results = read_results(tdir / "result.json")
        m = _dir_match(tdir)
        trial_id = results[-1].get("trial_id") if results else (m[0] if m else tdir.name)
        row = TrialRow(str(trial_id), {k: params.get(k) for k in spec.params})
        row.history = measured_values(results, spec.metric)
        if results:
            last = results[-1]
            row.epochs = int(last.get("training_iteration", 0))
            row.time_s = float(last.get("time_total_s", 0.0))
        vals = [v for _, v in row.history]
        if vals:
            row.best = spec.best_of(vals)
            row.last = vals[-1]
            row.tie = tie_value(results, spec.tie_break)
        if results and results[-1].get("health/fatal"):
            last = results[-1]
            row.reason = str(last.get("health/stop_reason", "error"))
            row.verdict, row.rule = str(last.get("health/verdict", "")), str(last.get("health/rule", ""))
            row.step = last.get("health/step")
        elif row.epochs >= spec.max_t:
            row.reason = "completed"  # error.txt may exist too: a failure that was retried
        elif any((tdir / n).exists() for n in ("error.txt", "error.pkl")):
            row.reason = "error"  # unless the journal says otherwise (below)
        rows.append(row)
    _apply_journal_states(exp, spec, rows)
    return rows


def _apply_journal_states(exp: Path, spec: SearchSpec, rows: list[TrialRow]) -> None:
    """What the searcher told Optuna decides between asha, error and running: PRUNED was an
    ASHA stop (even if the trial had a retried failure), FAIL a crash after its retries.
    A Ray trial's newest record counts (a `supersedes` record replaces an earlier tell)."""
    study = load_study(exp, spec)
    if study is None:
        return
    import optuna

    by_id = {t.user_attrs["ray_trial_id"]: t for t in current_records(study) if t.user_attrs.get("ray_trial_id")}
    for row in rows:
        t = by_id.get(row.trial_id)
        if t is None or row.reason not in ("running", "completed", "error"):
            continue
        if t.state == optuna.trial.TrialState.PRUNED:
            row.reason = "asha"
        elif t.state == optuna.trial.TrialState.FAIL:
            row.reason = "error"
        elif t.state == optuna.trial.TrialState.COMPLETE:
            row.reason = "completed"


def current_records(study) -> list:
    """The study's trials less the records a later `supersedes` record replaced (Optuna cannot
    change a finished trial, so a restored search that learned a trial's real outcome adds a
    new record): what the report counts, ranks and plots."""
    trials = study.get_trials(deepcopy=False)
    replaced = {t.user_attrs["supersedes"] for t in trials if "supersedes" in t.user_attrs}
    return [t for t in trials if t.number not in replaced]


def load_study(exp: Path, spec: SearchSpec):
    journal = exp / "optuna.log"
    if not journal.is_file():
        return None
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=spec.name, storage=JournalStorage(JournalFileBackend(str(journal))))
    except Exception:  # a journal from another study name, or unreadable: the report goes on without it
        return None


def best_row(rows: list[TrialRow], spec: SearchSpec) -> TrialRow | None:
    """The replay benchmark's incumbent (benchmarks/replay.py): the best value, ties to the
    longer-run trial. The report itself chooses with tune/ranking.py (ties said, or no export)."""
    ok = [r for r in rows if r.best is not None and r.reason in ("completed", "asha", "running")]
    if not ok:
        return None
    return max(ok, key=lambda r: (spec.sign * r.best, r.epochs))


def read_confirm(exp: Path) -> tuple[dict | None, list[dict]]:
    """confirm.json of a finished --confirm-top: (its plan, the per-config table); (None, [])
    when there is none. A file that is not such a table is a ReportError naming it."""
    path = exp / "confirm.json"
    if not path.is_file():
        return None, []
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: unreadable ({exc}); delete it, or re-run --confirm-top") from None
    if isinstance(saved, list):  # written before the plan was stored with it
        saved = {"plan": None, "configs": saved}
    configs = saved.get("configs") if isinstance(saved, dict) else None
    if not isinstance(configs, list) or not all(map(_confirm_entry_ok, configs)):
        raise ReportError(f"{path}: not a confirmation table (each config needs source_trial, values: "
                          "[numbers], mean, search_value, std: numbers)")
    return saved.get("plan"), configs


def _confirm_entry_ok(c) -> bool:
    def num(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    return (isinstance(c, dict) and isinstance(c.get("source_trial"), str) and isinstance(c.get("values"), list)
            and all(map(num, c["values"])) and all(num(c.get(k)) for k in ("mean", "search_value", "std"))
            and isinstance(c.get("health_stops", []), list) and all(isinstance(x, str) for x in c.get("health_stops", [])))


@dataclass
class Report:
    exp: Path
    spec: SearchSpec
    rows: list[TrialRow]
    best: TrialRow | None
    confirm: list[dict] = field(default_factory=list)  # from confirm.json (--confirm-top)
    confirm_pending: bool = False  # a confirmation is planned and has not finished
    choice: Choice = field(default_factory=lambda: Choice(None))  # the search's own pick, ties said

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for r in self.rows:
            c[r.reason] = c.get(r.reason, 0) + 1
        return c

    @property
    def finished(self) -> int:
        """Trials that ended (completed, stopped or failed); a running one was interrupted."""
        return sum(r.reason != "running" for r in self.rows)

    @property
    def complete(self) -> bool:
        """The search ran every trial it was asked for: only then is its best an answer."""
        return self.finished >= self.spec.num_samples

    @property
    def exportable(self) -> bool:
        """Only a finished search whose planned confirmation has finished exports a config."""
        return self.complete and not self.confirm_pending and self.best is not None

    def incomplete_note(self) -> str:
        if self.complete:  # the search finished, its confirmation did not
            k, seeds = self.spec.confirm_plan()
            return (f"the search finished but its confirmation ({k} best x {seeds} new seeds) did not; "
                    f"no best_config.yaml is written until it has (continue it with --resume)")
        return (f"the search is incomplete: {self.finished} of {self.spec.num_samples} trials finished; "
                f"no best_config.yaml is written until it is (continue it with --resume)")

    def confirmed(self, row: TrialRow | None) -> dict | None:
        """The confirmation entry of a trial (with at least one finished seed), or None."""
        return next((c for c in self.confirm if row and c["source_trial"] == row.trial_id and c["values"]), None)

    def expected_rerun(self) -> str:
        """What a re-run of the exported config should score, said honestly: the confirmed mean
        over new seeds where there is one; otherwise the search value is one seed, the best of
        many, and biased upwards (the winner's curse)."""
        best = self.best
        conf = self.confirmed(best)
        if conf:
            stops = conf.get("health_stops") or []
            warn = (f"; WARNING: {len(stops)} of {len(conf['values'])} new seeds were stopped by a health rule "
                    f"({', '.join(stops)}) and scored the penalty {self.spec.penalty:g} -- no confirmed config "
                    f"trained cleanly on every seed" if stops else "")
            return (f"expected on a re-run: {conf['mean']:.4f} (mean of {len(conf['values'])} new seeds, std "
                    f"{conf['std']:.4f}; the search measured {best.best:.4f}{warn})")
        raised = next((c for c in self.confirm if best and c["source_trial"] == best.trial_id), None)
        if raised is not None:  # confirmed, and every re-run of it raised (counted in `failed`)
            return (f"expected on a re-run: not measured -- all {raised.get('failed', 0)} re-runs of this config "
                    f"raised (see confirm/); {best.best:.4f} is one seed, the best of {len(self.rows)} trials")
        return (f"expected on a re-run: not measured -- {best.best:.4f} is one seed, the best of {len(self.rows)} "
                f"trials, so a re-run most likely scores lower; --confirm-top K --seeds S measures it")

    def tie_note(self) -> list[str]:
        """How a best among exact ties was chosen (unless the confirmation chose it)."""
        return explain(self.choice, self.spec) if self.best is self.choice.best else []

    def console_summary(self) -> str:
        lines = ["trials by stop reason: " + ", ".join(f"{k} {v}" for k, v in sorted(self.counts().items()))]
        if not self.complete or self.confirm_pending:
            lines.append(self.incomplete_note())
        elif self.best:
            lines.append(f"best trial {self.best.trial_id}: {self.spec.metric} {self.best.best:.4f} with "
                         + ", ".join(f"{k}={fmt_number(v)}" for k, v in self.best.params.items()))
            lines += self.tie_note()
            lines.append(self.expected_rerun())
            lines.append(f"best config: {self.exp / 'best_config.yaml'}")
        elif self.choice.unresolved:
            lines += explain(self.choice, self.spec)
        else:
            lines.append("no healthy trial produced a validation value; no best_config.yaml written")
        return "\n".join(lines)




def write_report(exp: str | Path, spec: SearchSpec | None = None, plots: bool = True,
                 confirm_top: int | None = None) -> Report:
    """`confirm_top`: the confirmation this report waits for before it exports (None: the
    search's own plan, SearchSpec.confirm_plan; 0: export without one)."""
    exp = Path(exp)
    if spec is None:
        if not (exp / "space.yaml").is_file():
            raise ReportError(f"{exp}: no space.yaml here; is this a results/<name> folder of tune/run.py?")
        try:
            spec = load_space(str(exp / "space.yaml"))
        except SpaceError as exc:
            raise ReportError(str(exc)) from None
    rows = collect_trials(exp, spec)
    confirm = read_confirm(exp)[1]
    planned = spec.confirm_plan()[0] if confirm_top is None else confirm_top
    pending = planned > 0 and not (exp / "confirm.json").is_file()  # written only when a confirmation ends
    choice = choose(rows, spec)
    report = Report(exp, spec, rows, choice.best, confirm, confirm_pending=pending, choice=choice)
    winner = None if choice.unresolved else confirmed_winner(confirm, spec)
    if winner is not None:  # the best config by mean over new seeds, not a lucky single run
        report.best = next((r for r in rows if r.trial_id == winner["source_trial"]), report.best)
    atomic_write_text(exp / "leaderboard.csv", leaderboard_csv(report))
    atomic_write_text(exp / "summary.md", summary_md(report))
    atomic_write_text(exp / "health_report.md", health_md(report))
    if report.exportable:
        write_best_config(report)
    else:  # an export of an earlier report (e.g. --confirm-top 0) is not this report's answer
        (exp / "best_config.yaml").unlink(missing_ok=True)
    if plots:
        from tune.plots import write_plots

        study = load_study(exp, spec)
        write_plots(report, study, current_records(study) if study is not None else [])
    return report


def confirmed_winner(confirm: list[dict], spec: SearchSpec) -> dict | None:
    """The confirmed config to export: the best mean among those whose every new seed trained
    without a health stop; only if there is none, the best mean of the rest (the export then
    says how many seeds a health rule stopped)."""
    measured = [c for c in confirm if c["values"]]
    healthy = [c for c in measured if not c.get("health_stops")]
    return max(healthy or measured, key=lambda c: spec.sign * c["mean"], default=None)


def leaderboard_csv(report: Report) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    keys = list(report.spec.params)
    w.writerow(["trial_id", *keys, "best_metric", "last_metric", "epochs", "time_s", "stop_reason"])
    for r in sorted(report.rows, key=table_key(report.spec)):
        w.writerow([r.trial_id, *[r.params.get(k) for k in keys], "" if r.best is None else f"{r.best:.6f}",
                    "" if r.last is None else f"{r.last:.6f}", r.epochs, f"{r.time_s:.1f}", r.reason])
    return buf.getvalue()


def summary_md(report: Report) -> str:
    spec, rows = report.spec, report.rows
    spent = sum(r.epochs for r in rows)
    full = len(rows) * spec.max_t
    keys = list(spec.params)
    lines = [f"# Search `{spec.name}`", "",
             f"metric `{spec.metric}` ({spec.mode}); {len(rows)} trials; ASHA max_t {spec.max_t}, "
             f"grace {spec.grace_period}, reduction {spec.reduction_factor}", ""]
    if not report.complete or report.confirm_pending:
        lines += [f"**Interrupted**: {report.incomplete_note()}.", ""]
    if report.best:
        lines += [f"**Best trial** `{report.best.trial_id}`: {spec.metric} = {report.best.best:.4f} "
                  f"(best over its epochs), " + ", ".join(f"`{k}`={fmt_number(v)}" for k, v in report.best.params.items()),
                  "", *report.tie_note(), report.expected_rerun(), ""]
    elif report.choice.unresolved:
        lines += ["**No best config**: " + "; ".join(explain(report.choice, spec)).removeprefix("no best config: ")
                  + ".", ""]
    lines += ["## Totals", "", "| stop reason | trials |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(report.counts().items())]
    lines += ["", f"trial-epochs spent: {spent}; running every trial to max_t: {full}; "
                  f"saved by early stops: {full - spent} ({100 * (full - spent) / full:.0f} %)" if full else "", ""]
    if report.confirm:
        lines += ["## Confirmation (--confirm-top)", "",
                  f"best {spec.metric} over its epochs, per new seed; the best config is chosen by the mean", "",
                  "a seed stopped by a health rule scores the penalty; a config with such a seed is exported "
                  "only if every confirmed config has one", "",
                  "| source trial | search value | mean | std | seeds | health stops |", "|---|---|---|---|---|---|"]
        for c in report.confirm:
            seeds = ", ".join(f"{v:.4f}" for v in c["values"])
            stops = ", ".join(c.get("health_stops") or []) or "none"
            lines.append(f"| {c['source_trial']} | {c['search_value']:.4f} | {c['mean']:.4f} | {c['std']:.4f} | "
                         f"{seeds} | {stops} |")
        lines.append("")
    lines += ["## Leaderboard", "", "| trial | " + " | ".join(keys) + " | best | last | epochs | time s | stop |",
              "|" + "---|" * (len(keys) + 6)]
    for r in sorted(rows, key=table_key(spec)):
        vals = " | ".join(fmt_number(r.params.get(k)) for k in keys)
        best = "" if r.best is None else f"{r.best:.4f}"
        last = "" if r.last is None else f"{r.last:.4f}"
        lines.append(f"| {r.trial_id} | {vals} | {best} | {last} | {r.epochs} | {r.time_s:.0f} | {r.reason} |")
    return "\n".join(lines) + "\n"


def health_md(report: Report) -> str:
    stopped = [r for r in report.rows if r.verdict]
    lines = ["# Health report", "", f"{len(stopped)} of {len(report.rows)} trials were stopped by a health rule.", ""]
    for r in stopped:
        lines += [f"## {r.trial_id}: {r.reason}", "", f"- rule: `{r.rule}` at step {fmt_number(r.step)} (epoch {r.epochs})",
                  f"- verdict: {r.verdict}", "- params: " + ", ".join(f"`{k}`={fmt_number(v)}" for k, v in r.params.items()), ""]
    return "\n".join(lines) + "\n"


def write_best_config(report: Report) -> Path:
    spec, best = report.spec, report.best
    final_dir = report.exp / "final_train"  # python -m refdet.train writes here; tune/final.py uses final/
    cfg = spec.trial_config(best.params).with_overrides(
        {"epochs": spec.final_epochs, "optim.schedule_epochs": 0,  # the final run's schedule is its own
         "output_dir": str(final_dir), "device": "auto", "num_threads": 0})
    path = report.exp / "best_config.yaml"
    header = (f"best_config.yaml of search '{spec.name}' ({report.exp})\n"
              f"trial {best.trial_id}: {spec.metric} = {best.best:.4f} (best over {best.epochs} epochs, {best.reason})\n"
              + "".join(line + "\n" for line in report.tie_note())
              + report.expected_rerun() + "\n"
              + "".join(f"  {k} = {fmt_number(v)}\n" for k, v in best.params.items())
              + f"final run ({spec.final_epochs} epochs), either:\n"
              f"  python -m refdet.train --config {path}\n"
              f"  python tune/final.py {report.exp}")
    cfg.to_yaml(path, header=header)
    return path
