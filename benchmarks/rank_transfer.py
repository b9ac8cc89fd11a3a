"""Does a short trial rank configurations as a longer run would, and can its seeds tell them apart?

    python benchmarks/rank_transfer.py SHORT.jsonl LONG.jsonl [--short-epochs E] [--rule best|last|mean2]
    python benchmarks/rank_transfer.py LONG.jsonl LONG.jsonl --short-epochs 4   # trials as truncations

Two curve tables (benchmarks/record_curves.py) of the same configurations and seeds: SHORT at
the search's budget, LONG at a longer one (the issue's check: 4x the epochs). With
`--short-epochs E`, SHORT's value is read after its first E epochs, so one table of long runs
also answers for trials that are truncations of the long schedule. Per configuration with at
least `--min-seeds` seeds in both: the mean value over seeds at each budget. Prints the pooled
seed std at the short budget as a share of the best configuration's mean (the 5 % goal), the
best mean, and the Spearman rank correlation of the two means over configurations, with a
bootstrap interval (seeds resampled within each configuration, 2000 draws) and without the
configurations that score the penalty at both budgets (ties that flatter the correlation). A
search runs each configuration once, so the Spearman of each seed's single values against the
long means is printed too ("one trial each"). SHORT's value is read by `--rule`, LONG's by
`--long-rule` (default best: the final run keeps its best validated checkpoint, best.pt).
`--model` also ranks the configurations by the replay's GP model of SHORT (benchmarks/replay/
sources/model.py), each fitted without that configuration's runs: whether the landscape a dense
short table shows -- what a model-based search builds from many trials -- transfers where one
trial's value does not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.replay.sources.table import CurveError, CurveTable, read_table  # noqa: E402


def seed_values(table: CurveTable, epochs: int | None, rule: str) -> dict[int, dict[int, float]]:
    """config -> seed -> value."""
    return {c: {r.seed: table.run_value(r, epochs, rule) for r in runs} for c, runs in table.configs().items()}


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    rho = spearmanr(a, b).statistic
    return float(rho) if np.isfinite(rho) else float("nan")


def sd(values) -> float:
    values = list(values)
    return statistics.stdev(values) if len(values) >= 2 else float("nan")


def pooled_sd(groups: list[dict]) -> float:
    """The pooled seed std over configurations; nan where some configuration has one seed."""
    if any(len(g) < 2 for g in groups):
        return float("nan")
    return statistics.fmean(statistics.variance(g.values()) for g in groups) ** 0.5


def transfer(short: CurveTable, long: CurveTable, short_epochs: int | None, rule: str, min_seeds: int,
             draws: int = 2000, seed: int = 0, long_rule: str | None = None) -> dict:
    sv, lv = seed_values(short, short_epochs, rule), seed_values(long, None, long_rule or rule)
    params_s, params_l = short.configs(), long.configs()
    configs = [c for c in sorted(sv) if c in lv and params_s[c][0].params == params_l[c][0].params
               and len(sv[c]) >= min_seeds and len(lv[c]) >= min_seeds]
    if len(configs) < 3:
        raise CurveError(f"{short.path} / {long.path}: only {len(configs)} configurations with >= {min_seeds} seeds in both")
    s_mean = np.array([statistics.fmean(sv[c].values()) for c in configs])
    l_mean = np.array([statistics.fmean(lv[c].values()) for c in configs])
    pooled, pooled_long = pooled_sd([sv[c] for c in configs]), pooled_sd([lv[c] for c in configs])
    best = float(s_mean.max() if short.sign > 0 else s_mean.min())
    rng = np.random.default_rng(seed)
    # Where both sides are the same runs read at two budgets (--short-epochs on one table), a
    # resampled seed is resampled on both sides: the pairs are what carries the shared noise.
    paired = all(set(sv[c]) == set(lv[c]) for c in configs) and short.path.resolve() == long.path.resolve()
    boot = []
    for _ in range(draws):
        bs, bl = [], []
        for c in configs:
            seeds = sorted(sv[c])
            pick = rng.choice(seeds, len(seeds))
            bs.append(np.mean([sv[c][k] for k in pick]))
            other = pick if paired else rng.choice(sorted(lv[c]), len(lv[c]))
            bl.append(np.mean([lv[c][k] for k in other]))
        boot.append(spearman(bs, bl))
    boot = np.array([b for b in boot if np.isfinite(b)])
    keep = [i for i, c in enumerate(configs) if not (s_mean[i] == short.penalty and l_mean[i] == long.penalty)]
    # One trial per configuration, as a search runs it: each seed every configuration has, alone.
    common = sorted(set.intersection(*(set(sv[c]) for c in configs)))
    one_trial = {int(k): spearman([sv[c][k] for c in configs], l_mean) for k in common}
    return {"configs": configs, "short_mean": s_mean.tolist(), "long_mean": l_mean.tolist(),
            "short_sd": [sd(sv[c].values()) for c in configs],
            "long_sd": [sd(lv[c].values()) for c in configs],
            "params": [params_s[c][0].params for c in configs],
            "seeds": min(min(len(sv[c]), len(lv[c])) for c in configs),
            "pooled_seed_sd": pooled, "pooled_seed_sd_long": pooled_long, "best_mean": best,
            "sd_share": pooled / abs(best) if best else float("inf"),
            "best_long": float(l_mean.max() if long.sign > 0 else l_mean.min()),
            "spearman": spearman(s_mean, l_mean),
            "spearman_ci90": [float(np.quantile(boot, 0.05)), float(np.quantile(boot, 0.95))] if len(boot) else None,
            "spearman_without_penalty_ties": spearman(s_mean[keep], l_mean[keep]) if len(keep) >= 3 else float("nan"),
            "configs_at_penalty_both": len(configs) - len(keep), "paired_bootstrap": paired,
            "spearman_one_trial": one_trial,
            "short_seeds": [len(sv[c]) for c in configs], "long_seeds": [len(lv[c]) for c in configs]}


def model_transfer(short: CurveTable, long_means: dict[int, float]) -> dict:
    """Spearman of the GP model's value (best over epochs of its mean, noise-free) at each of the
    configurations, fitted to SHORT without that configuration, against their long means."""
    import copy

    from tqdm import tqdm

    from benchmarks.replay.sources import SourceError
    from benchmarks.replay.sources.model import ModelSource

    configs = sorted(long_means)
    predicted = []
    for c in tqdm(configs, desc="--model: one fit per held-out configuration", unit="fit", file=sys.stderr):
        rest = copy.copy(short)
        rest.runs = [r for r in short.runs if r.config != c]
        try:
            predicted.append(ModelSource(rest, 0).true_value(short.configs()[c][0].params))
        except SourceError as exc:
            raise CurveError(f"--model: {exc}") from None
    return {"configs": configs, "model_value": predicted,
            "spearman": spearman(predicted, [long_means[c] for c in configs]), "fitted_on": len(short.configs()) - 1}


def print_result(r: dict, short_label: str, long_label: str) -> None:
    print(f"{len(r['configs'])} configurations x >= {r['seeds']} seeds; short = {short_label}, long = {long_label}")
    print("| config | params | short mean (sd) | long mean (sd) |")
    print("|---|---|---|---|")
    order = np.argsort(r["short_mean"])[::-1]
    for i in order:
        p = ", ".join(f"{k.split('.')[-1]} {v:.3g}" for k, v in r["params"][i].items())
        print(f"| {r['configs'][i]} | {p} | {r['short_mean'][i]:.3f} ({r['short_sd'][i]:.3f}) | "
              f"{r['long_mean'][i]:.3f} ({r['long_sd'][i]:.3f}) |")
    ci = r["spearman_ci90"]
    if r["pooled_seed_sd"] == r["pooled_seed_sd"]:
        long_sd = r["pooled_seed_sd_long"]
        print(f"pooled seed std (short) {r['pooled_seed_sd']:.4f} = {100 * r['sd_share']:.1f} % of the best mean "
              f"{r['best_mean']:.3f}; long: seed std {f'{long_sd:.4f}' if long_sd == long_sd else 'n/a'}, "
              f"best mean {r['best_long']:.3f}")
    else:
        print(f"pooled seed std: n/a (a configuration has one seed); best mean short {r['best_mean']:.3f}, "
              f"long {r['best_long']:.3f}")
    print(f"Spearman short vs long: {r['spearman']:.3f}" + (f" (90 % bootstrap {ci[0]:.2f} .. {ci[1]:.2f})" if ci else "")
          + f"; without the {r['configs_at_penalty_both']} configs at the penalty in both: "
          f"{r['spearman_without_penalty_ties']:.3f}")
    if ci and any(n == 1 for n in r["long_seeds"]) and not r["paired_bootstrap"]:
        print("  (a configuration has one long seed: the interval resamples the short side only, so it is too narrow)")
    if ci and any(n == 1 for n in r["short_seeds"]):
        print("  (a configuration has one short seed: the interval does not include that side's seed noise)")
    one = r["spearman_one_trial"]
    if one:
        vals = list(one.values())
        print(f"Spearman of one trial each (one seed's values vs the long means), over {len(vals)} seeds: "
              f"mean {statistics.fmean(vals):.2f}, range {min(vals):.2f} .. {max(vals):.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("short", type=Path)
    ap.add_argument("long", type=Path)
    ap.add_argument("--short-epochs", type=int, default=None, help="read SHORT after this many epochs")
    ap.add_argument("--rule", choices=("best", "last", "mean2"), default="best",
                    help="a run's value: best fresh value, last, or mean of the last two (default best)")
    ap.add_argument("--long-rule", choices=("best", "last", "mean2"), default="best",
                    help="the long run's value (default best: the final run keeps best.pt)")
    ap.add_argument("--min-seeds", type=int, default=2,
                    help="seeds a configuration needs in both tables (1: no seed std, the ranks only)")
    ap.add_argument("--model", action="store_true",
                    help="also rank by the GP model of SHORT, fitted without the configuration ranked")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.min_seeds < 1 or (args.short_epochs is not None and args.short_epochs < 1):
        print("error: --min-seeds and --short-epochs must be >= 1", file=sys.stderr)
        return 2
    try:
        short, long = read_table(args.short), read_table(args.long)
        if args.short_epochs is not None and args.short_epochs > short.max_t:
            raise CurveError(f"--short-epochs {args.short_epochs}: {args.short} has {short.max_t} epochs")
        r = transfer(short, long, args.short_epochs, args.rule, args.min_seeds, long_rule=args.long_rule)
        if args.model:
            if args.short_epochs is not None:
                raise CurveError("--model reads SHORT at its own budget: drop --short-epochs")
            r["model"] = model_transfer(short, dict(zip(r["configs"], r["long_mean"])))
    except CurveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    e = args.short_epochs or short.max_t
    print_result(r, f"{args.short.name} after {e} epochs ({args.rule})", f"{args.long.name} ({long.max_t} epochs, {args.long_rule})")
    if args.model:
        m = r["model"]
        print(f"Spearman of the GP model of SHORT (best over epochs of its mean; fitted on the other "
              f"{m['fitted_on']} configurations each time) vs long: {m['spearman']:.3f}")
    if args.json:
        try:
            from refdet.io import atomic_write_text

            args.json.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.json, json.dumps(r, indent=1))
        except OSError as exc:
            print(f"error: --json {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
