"""Search benchmark: Ray + Optuna overhead, trial start-up, and what health stops save.

    python benchmarks/bench_search.py [--space smoke] [--hazard hazard] [--out benchmarks/out/bench_search.json]

Runs the given spaces (fresh experiments under benchmarks/out/results) and reports:
  overhead ratio   search wall time / (sum of trial busy time / max_concurrent): the issue's
                   definition; it also counts slots left idle because ASHA ends trials at
                   different times, so a second ratio divides by the makespan of an ideal
                   list schedule of the same trial durations in start order (what Ray and
                   Optuna themselves cost)
  start-up         per trial: its first epoch's time minus its second's (equal work), i.e.
                   the trainer's construction (dataset index, frame cache, model) in the actor
  doomed trials    (hazard) for each health-stopped trial: the step its rule fired, and the
                   steps it ran after its problem began (the rule's streak minus one; 0 for
                   a non-finite loss, which fires at once)
  trial-epochs     used vs running every trial to max_t
Prints a table and writes JSON. Measured, never asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run_space(space: str, storage: Path, name: str) -> tuple[float, Path]:
    from tune.run import main

    shutil.rmtree(storage / name, ignore_errors=True)
    t0 = time.time()
    rc = main(["--space", space, "--name", name, "--storage", str(storage), "--report-every", "30"])
    if rc != 0:
        raise SystemExit(f"search {space} failed with exit code {rc}")
    return time.time() - t0, storage / name


def list_schedule_makespan(durations: list[float], slots: int) -> float:
    """Trials started in order on the first free slot, with no overhead at all."""
    free = [0.0] * slots
    for d in durations:
        i = free.index(min(free))
        free[i] += d
    return max(free) if durations else 0.0


def analyse(exp: Path, wall: float) -> dict:
    from tune.results import collect_trials
    from tune.space import load_space

    spec = load_space(str(exp / "space.yaml"))
    rows = collect_trials(exp, spec)
    from tune.results import start_order

    busy, startups, doomed, durations = 0.0, [], [], []
    for tdir in sorted((p.parent for p in exp.glob("*/params.json")), key=start_order):
        results = [json.loads(x) for x in (tdir / "result.json").read_text().splitlines() if x.strip()]
        if not results:
            continue
        busy += results[-1]["time_total_s"]
        durations.append(results[-1]["time_total_s"])
        if len(results) >= 2:
            startups.append(results[0]["time_this_iter_s"] - results[1]["time_this_iter_s"])
        last = results[-1]
        if last.get("health/fatal"):
            verdict = last.get("health/verdict", "")
            streak = 1
            if "steps=" in verdict:
                streak = int(float(verdict.split("steps=")[1].split(",")[0]))
            doomed.append({"trial": last["trial_id"], "reason": last["health/stop_reason"], "rule": last.get("health/rule"),
                           "fired_at_step": int(last.get("health/step", 0)), "steps_after_problem_began": streak - 1,
                           "epochs_run": last["training_iteration"]})
    spent = sum(r.epochs for r in rows)
    return {"space": spec.name, "trials": len(rows), "wall_s": wall, "busy_s": busy,
            "max_concurrent": spec.max_concurrent, "overhead_ratio": wall / (busy / spec.max_concurrent),
            "ideal_makespan_s": list_schedule_makespan(durations, spec.max_concurrent),
            "overhead_ratio_vs_ideal_schedule": wall / list_schedule_makespan(durations, spec.max_concurrent),
            "startup_s_mean": sum(startups) / len(startups) if startups else 0.0,
            "trial_epochs_used": spent, "trial_epochs_if_all_to_max_t": len(rows) * spec.max_t,
            "stop_reasons": {r.reason: sum(1 for x in rows if x.reason == r.reason) for r in rows},
            "doomed": doomed}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default="smoke")
    ap.add_argument("--hazard", default="hazard")
    ap.add_argument("--out", default="benchmarks/out/bench_search.json")
    args = ap.parse_args()
    storage = Path("benchmarks/out/results").resolve()
    out = {}
    for label, space in (("search", args.space), ("hazard", args.hazard)):
        if not space:
            continue
        wall, exp = run_space(space, storage, f"bench_{label}")
        out[label] = res = analyse(exp, wall)
        print(f"\n[{label}] {res['trials']} trials, wall {wall:.0f} s, busy {res['busy_s']:.0f} s over "
              f"{res['max_concurrent']} slots: overhead x{res['overhead_ratio']:.3f} "
              f"(x{res['overhead_ratio_vs_ideal_schedule']:.3f} vs an ideal schedule of {res['ideal_makespan_s']:.0f} s); "
              f"start-up {res['startup_s_mean']:.1f} s/trial; trial-epochs {res['trial_epochs_used']} of "
              f"{res['trial_epochs_if_all_to_max_t']}; {res['stop_reasons']}")
        for d in res["doomed"]:
            print(f"  doomed {d['trial']}: {d['reason']} ({d['rule']}) at step {d['fired_at_step']}, "
                  f"{d['steps_after_problem_began']} steps after the problem began, {d['epochs_run']} epoch(s)")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
