"""Search RefDet's training hyperparameters with Ray Tune + Optuna + ASHA.

    python tune/run.py --space smoke                 # tiny synthetic search on this machine
    python tune/run.py --space stage2.yaml           # the real search (./datasets/train, ./datasets/val)
    python tune/run.py --space stage2 --set checkpoint=checkpoints/best.pt  # from your stage-1 weights
    python tune/run.py --space stage2 --address auto # on a running Ray cluster (ray start --head)
    python tune/run.py --space smoke --resume        # continue an interrupted search
    python tune/run.py --space smoke --dry-run       # print the resolved space and first configs
    python tune/run.py --space stage2 --set data.root=/data/train --set data.val_root=/data/val

Results land in results/<name>/ (or <--storage>/<name>): Ray's trial dirs (TensorBoard
events), space.yaml, optuna.log (Optuna journal), leaderboard.csv, summary.md,
health_report.md, plots/, best_config.yaml.

Exit codes: 0 done; 2 bad input (space file, names, paths); 130 interrupted (resume with
--resume).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refdet.config import ConfigError, parse_set  # noqa: E402
from tune.space import NOT_SEARCHABLE, SAFE_NAME, SpaceError, check_spec, load_space  # noqa: E402

EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 2, 130
DEFAULT_RESULTS = Path("results")


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python tune/run.py", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--space", default="smoke", help="search space: a name in search_spaces/ or a YAML path")
    ap.add_argument("--name", default=None, help="experiment name (default: the space's name)")
    ap.add_argument("--num-samples", type=int, default=None, help="override search.num_samples")
    ap.add_argument("--max-concurrent", type=int, default=None, help="override search.max_concurrent")
    ap.add_argument("--resume", action="store_true", help="continue the search in results/<name>")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved space and the first configs; run nothing")
    ap.add_argument("--address", default=None, help="Ray cluster address (auto, host:port or ray://...)")
    ap.add_argument("--storage", default=None,
                    help="experiment storage: a path or URI (s3://...) shared by all nodes (default ./results)")
    ap.add_argument("--max-failures", type=int, default=None,
                    help="retries of a trial whose worker died (default search.max_failures, 2)")
    ap.add_argument("--confirm-top", type=int, default=None, metavar="K",
                    help="after the search, re-run the K best configs with new seeds (see --seeds) and export the "
                         "best by mean; 0: off. Default: search.confirm_top, else 2 for a search of at most 16 "
                         "trials, 0 for a larger one")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per config for --confirm-top (default "
                    "search.confirm_seeds, 2)")
    ap.add_argument("--report-every", type=float, default=10.0,
                    help="seconds between Ray's status tables in driver.log (default 10)")
    ap.add_argument("--verbose", action="store_true",
                    help="Ray's and Optuna's own output on the console too (it always goes to results/<name>/driver.log)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the space's base TrainConfig, e.g. --set steps_per_epoch=20 "
                         "(repeatable; not a searched parameter, not epochs: that is scheduler.max_t)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        spec = resumed_spec(space_for_resume(args), args) if args.resume else apply_cli(load_space(args.space), args)
    except SpaceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.dry_run:
        from tune.sampler import preview  # Optuna only: a dry run does not start Ray

        print(preview(spec))
        return dry_run_data(spec, remote=bool(args.address))
    from tune.launch import (  # imports Ray: after the input checks
        ExperimentError,
        SearchOptions,
        run_search,
    )
    from tune.output import set_verbose

    set_verbose(args.verbose)

    confirm, seeds = spec.confirm_plan()
    opts = SearchOptions(space=args.space, storage=args.storage, address=args.address, resume=args.resume,
                         max_failures=spec.max_failures, report_every=args.report_every, confirm_top=confirm,
                         seeds=seeds)
    from tune.results import ReportError

    try:
        return run_search(spec, opts)
    except (ExperimentError, ReportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune's loop started
        print(f"\ninterrupted; continue with: {opts.resume_command(spec.name)}", file=sys.stderr)
        return EXIT_INTERRUPTED


def dry_run_data(spec, remote: bool) -> int:
    """Where the trials start, and whether the start weights and the datasets are usable: the
    checks a search makes before anything is written (tune/preflight.py), said by the dry run.
    Exit 2 where the search would stop."""
    from refdet.data import DatasetError, load_dataset
    from refdet.data.synthetic import check_recipes
    from tune.preflight import ExperimentError, check_start, schedule_line, start_line

    d, stale, hints = spec.base.data, None, []
    print(("\n" + start_line(spec.base).strip()) if spec.base.stage == 2 else "")
    print(schedule_line(spec).strip())
    try:
        check_start(spec, remote)
    except ExperimentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        hints.append("the start weights: --set checkpoint=PATH or --set model.pretrained=PATH")
    data_ok = True
    if d.synthetic:
        try:
            check_recipes(d)
        except DatasetError as exc:
            print(f"data: {exc}", file=sys.stderr)
            data_ok, stale = False, Path(exc.root)
    for root in filter(None, (d.root, d.val_root)):
        if stale is not None and Path(root) == stale:
            continue
        if not Path(root).exists() and (d.synthetic or remote):
            print(f"data: {root}: not here; " + ("the synthetic dataset is generated on first use" if d.synthetic
                                                  else "on a cluster the trials check it on their nodes"))
            continue
        try:
            ds = load_dataset(root, min_refs=d.k_shot)
            print(f"data: {root}: {len(ds.videos)} videos, valid")
        except DatasetError as exc:
            print(f"data: {exc}", file=sys.stderr)
            data_ok = False
    if not data_ok:
        hints.append("the data: --set data.root=PATH --set data.val_root=PATH, or delete a stale generated dataset")
    if hints:
        print(f"error: the search would stop here (exit 2): fix what is named above ({'; '.join(hints)})",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


# The options that set a search's plan: (flag, SearchSpec field, smallest value). A new search
# records them in results/<name>/space.yaml; --resume takes them from there.
PLAN_OPTIONS = (("num_samples", "num_samples", 1), ("max_concurrent", "max_concurrent", 1),
                ("confirm_top", "confirm_top", 0), ("seeds", "confirm_seeds", 1), ("max_failures", "max_failures", 0))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def experiment_name(spec, args) -> str:
    if args.name is not None and (not SAFE_NAME.match(args.name) or args.name in (".", "..")):
        raise SpaceError(f"--name {args.name!r}: must be a plain folder name (letters, digits, _ . -)")
    return args.name if args.name is not None else spec.name


def apply_cli(spec, args):
    changes = {"name": experiment_name(spec, args)}
    for flag, field, low in PLAN_OPTIONS:
        v = getattr(args, flag)
        if v is not None:
            if v < low:
                raise SpaceError(f"{_flag(flag)}: must be >= {low}")
            changes[field] = v
    base_items = [x for x in args.set if not x.startswith("resources.")]
    for item in args.set:
        if item.startswith("resources."):
            changes.update(override_resource(item, args.resume))
    if base_items:
        changes["base"] = override_base(spec, base_items, args.resume)
    spec = replace(spec, **changes) if changes else spec
    check_spec(spec)
    return spec


def space_for_resume(args):
    """The --space of a resumed search, or None where it cannot be read any more (moved,
    edited into something invalid): the experiment's own space.yaml is what resumes."""
    try:
        return load_space(args.space)
    except SpaceError:
        if args.name is None and not (Path(args.storage or DEFAULT_RESULTS) / Path(args.space).stem).is_dir():
            raise
        return None


def resumed_spec(spec, args):
    """--resume: the search exactly as it was started -- space, base (--set included),
    resources and plan (trials, concurrency, confirmation, retries) -- from the experiment's
    own space.yaml. An option given again that contradicts it is an error naming it. `spec`:
    the --space as loaded now, or None where it cannot be read (space_for_resume)."""
    if spec is None:
        spec = SimpleNamespace(name=Path(args.space).stem, params=None)
    name = experiment_name(spec, args)
    storage = args.storage or str(DEFAULT_RESULTS)
    if "://" in storage:  # remote storage: no local copy of the saved space to read
        if spec.params is None:
            raise SpaceError(f"{args.space}: cannot be read, and with remote storage it is what --resume needs")
        return apply_cli(spec, args)
    exp = Path(storage).resolve() / name
    saved_path = exp / "space.yaml"
    if not saved_path.is_file():
        raise SpaceError(f"{exp}: no search to resume (no space.yaml)")
    saved = load_space(str(saved_path))
    if spec.params is not None and saved.params.keys() != spec.params.keys():
        raise SpaceError(f"{saved_path}: the search was started with other parameters than {spec.path.name} "
                         f"({', '.join(saved.params)}); resume with the same --space")
    if args.set:
        raise SpaceError(f"--set: a resumed search keeps the base and resources it started with ({saved_path})")
    k, seeds = saved.confirm_plan()
    started = {"num_samples": saved.num_samples, "max_concurrent": saved.max_concurrent, "confirm_top": k,
               "seeds": seeds, "max_failures": saved.max_failures}
    for flag, _, _ in PLAN_OPTIONS:
        v = getattr(args, flag)
        if v is not None and v != started[flag]:
            raise SpaceError(f"{_flag(flag)} {v}: the search in {exp} was started with {started[flag]} "
                             f"({saved_path}); --resume continues it as it was started: drop the option, "
                             f"or start a new search with another --name")
    return replace(saved, name=name)


def override_resource(item: str, resume: bool) -> dict:
    """--set resources.cpu=N / resources.gpu=F: a trial's Ray resources."""
    key, _, value = item.partition("=")
    name = key.removeprefix("resources.")
    if name not in ("cpu", "gpu") or not value:
        raise SpaceError(f"--set {item}: expected resources.cpu=N or resources.gpu=F")
    if resume:
        raise SpaceError("--set: a resumed search keeps the resources it started with")
    try:
        v = float(value)
    except ValueError:
        raise SpaceError(f"--set {key}: expected a number, got {value!r}") from None
    if not (v > 0 if name == "cpu" else v >= 0) or v != v or v == float("inf"):
        raise SpaceError(f"--set {key}: must be {'> 0' if name == 'cpu' else '>= 0'} (got {value})")
    if name == "gpu" and v > 1 and not v.is_integer():
        raise SpaceError(f"--set {key}: fractions are for sharing one GPU (<= 1), got {value}")
    return {name: v}


def override_base(spec, items: list[str], resume: bool):
    """The space's base TrainConfig with --set KEY=VALUE applied, checked like the space file."""

    if resume:
        raise SpaceError("--set: a resumed search keeps the base it started with (results/<name>/space.yaml)")
    try:
        overrides = parse_set(items)
    except ConfigError as exc:
        raise SpaceError(str(exc)) from None
    for key in overrides:
        if key in spec.params:
            raise SpaceError(f"--set {key}: a searched parameter (change its range in {spec.path.name})")
        if key in ("epochs", "device_share", "host_share"):
            raise SpaceError(f"--set {key}: {NOT_SEARCHABLE[key]}")
    try:
        return spec.base.with_overrides(overrides).resolve_paths()
    except ConfigError as exc:
        raise SpaceError(f"--set: {exc}") from None


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    sys.exit(main())
