"""The strategies the replay compares, each built as a searcher + scheduler pair (and how the
controller feeds them) from a source's search space:

  default        this project: tune/searcher.py RefDetOptunaSearch (TPE from tune/sampler.py,
                 health stops told infeasible) + tune/scheduler.py HealthAwareASHA (the space's
                 grace, reduction and tie-break) + the space's seed configuration first; the
                 export confirmed as tune/confirm.py does where the space's confirm_plan says so
  random_full    random search (Optuna's RandomSampler), every trial to max_t
  random_asha    the same random proposals + the project's ASHA
  tpe_median     Optuna's TPE (its defaults) + Optuna's MedianPruner at the ASHA rungs
                 (baselines.PrunerScheduler): YAHPO's "optuna" baseline; no seed configuration
  hyperband      the same random proposals + Ray's HyperBandScheduler (its defaults: eta 3),
                 fed as Tune feeds a variant generator (up to 200 PENDING trials; PAUSE honoured)
  tpe_full       the project's searcher (TPE, constraints, seed configuration), no early stopping
  genetic        the detection library's tuner rule (baselines.Genetic), every trial to max_t
  default_health_fail   the default with health stops told as plain failures (the trainable
                 raises; Optuna is told FAIL, which TPE ignores): the constraint's counterfactual
  default:K=V    a variant of the default with one setting changed (grace_period,
                 reduction_factor, tie_break, startup, multivariate, constant_liar,
                 confirm_top: re-run the K best with the space's confirm_seeds before exporting)

Replication seed s gives every strategy the same sampler seed s (the three random strategies
propose the same configurations in the same order) and the same source draws stream.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

STRATEGIES = ("default", "random_full", "random_asha", "tpe_median", "hyperband", "tpe_full", "genetic")
EXTRA = ("default_health_fail",)
VARIANT_KEYS = ("grace_period", "reduction_factor", "tie_break", "startup", "multivariate", "constant_liar", "confirm_top")


@dataclass
class Built:
    searcher: object
    scheduler: object
    health_as_error: bool = False
    max_pending: int | None = None  # None: Tune's concurrency limit (max_concurrent_trials)
    confirm: tuple[int, int] = (0, 0)


def apply_variant(spec, variant: dict | None):
    for key, value in (variant or {}).items():
        if key in ("grace_period", "reduction_factor", "confirm_top"):
            spec = replace(spec, **{key: int(value)})
        elif key == "tie_break":
            spec = replace(spec, tie_break=None if value in ("none", "null", "") else value)
    return spec


def build(strategy: str, spec, seed: int, variant: dict | None = None) -> Built:
    import optuna
    from ray.tune.schedulers import FIFOScheduler, HyperBandScheduler

    from benchmarks.replay.baselines import Genetic, PrunerScheduler
    from tune.scheduler import build_scheduler
    from tune.searcher import build_searcher
    from tune.space import asha_rungs

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = apply_variant(spec, variant)
    plain = replace(spec, initial_points=())

    def random_searcher():
        return build_searcher(plain, None, optuna.samplers.RandomSampler(seed=seed))

    if strategy in ("default", "default_health_fail"):
        searcher = build_searcher(spec, None, sampler=_variant_sampler(spec, variant))
        return Built(searcher, build_scheduler(spec), health_as_error=strategy == "default_health_fail",
                     confirm=spec.confirm_plan())
    if strategy == "random_full":
        return Built(random_searcher(), FIFOScheduler())
    if strategy == "random_asha":
        return Built(random_searcher(), build_scheduler(plain))
    if strategy == "tpe_median":
        searcher = build_searcher(plain, None, optuna.samplers.TPESampler(seed=seed))
        rungs = [r for r in asha_rungs(spec.grace_period, spec.reduction_factor, spec.max_t) if r < spec.max_t]
        return Built(searcher, PrunerScheduler(searcher, rungs))
    if strategy == "hyperband":
        hb = HyperBandScheduler(time_attr="training_iteration", metric=spec.metric, mode=spec.mode, max_t=spec.max_t)
        return Built(random_searcher(), hb, max_pending=200)
    if strategy == "tpe_full":
        return Built(build_searcher(spec, None), FIFOScheduler())
    if strategy == "genetic":
        return Built(Genetic(spec, seed), FIFOScheduler())
    raise ValueError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES + EXTRA)})")


def _variant_sampler(spec, variant: dict | None):
    """None (the project's sampler) unless the variant changes a TPE option."""
    import optuna

    from tune.sampler import startup_trials

    if not variant or not {"startup", "multivariate", "constant_liar"} & set(variant):
        return None
    flag = {"1": True, "true": True, "0": False, "false": False}
    kwargs = {"seed": spec.seed, "n_startup_trials": int(variant.get("startup", startup_trials(spec)))}
    for key in ("multivariate", "constant_liar"):
        if key in variant:
            kwargs[key] = flag[str(variant[key]).lower()]
    return optuna.samplers.TPESampler(**kwargs)


# variant key -> the least integer it takes (the replay's schedulers and samplers refuse less)
_INT_MIN = {"grace_period": 1, "reduction_factor": 2, "startup": 0, "confirm_top": 0}
_FLAGS = ("0", "1", "true", "false")


class VariantError(ValueError):
    """A `--variant` the replay cannot run; the message names it."""


def parse_variant(text: str, max_t: int | None = None) -> tuple[str, dict]:
    """`KEY=VALUE` -> (the strategy's name, {key: value}), checked before any replay runs
    (a bad value would otherwise raise mid-run, after other replays had been spent)."""
    key, _, value = text.partition("=")
    if key not in VARIANT_KEYS or not value:
        raise VariantError(f"--variant {text!r}: expected grace_period=N, reduction_factor=N, "
                           f"tie_break=METRIC|none, startup=N, multivariate=0|1, constant_liar=0|1 or confirm_top=K")
    if key in _INT_MIN:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < _INT_MIN[key]:
            raise VariantError(f"--variant {text!r}: {key} must be an integer >= {_INT_MIN[key]}")
        if key == "grace_period" and max_t is not None and number > max_t:
            raise VariantError(f"--variant {text!r}: grace_period must be <= max_t ({max_t})")
    if key in ("multivariate", "constant_liar") and value.lower() not in _FLAGS:
        raise VariantError(f"--variant {text!r}: {key} must be 0 or 1")
    return f"default:{key}={value}", {key: value}
