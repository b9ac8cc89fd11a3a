"""The Ray session and the Tuner's run set-up, in one place (search, confirmation, final run).

    with ray_session(address):          # connects or starts a local Ray; shuts it down after
        tuner = tune.Tuner(trainable, run_config=run_config("confirm", storage, callbacks=[...]))

One console style everywhere (tune/console.py); Ray's newer console output ignores a
ProgressReporter, so the classic one (our table, in driver.log) is selected before Ray is imported.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Seconds a reused actor waits for the previous trial's thread to end (Ray's default: 2). A
# trial stopped by ASHA ends its thread after Trainer.close() (loader workers, gc, freeing
# memory), which on a loaded machine takes longer; then Ray 2.60 marks the next trial ERROR
# without telling the searcher or the callbacks (TuneController._on_trial_reset), whose
# concurrency slot is never freed: with max_concurrent 1 the search waits for ever, and
# --resume (errored trials stay failed) too. Passed to the trial actors through the runtime
# environment (an environment variable of the driver reaches no other node).
THREAD_TIMEOUT = {"TUNE_FUNCTION_THREAD_TIMEOUT_S": os.environ.get("TUNE_FUNCTION_THREAD_TIMEOUT_S", "300")}

import ray  # noqa: E402
from ray import tune  # noqa: E402

from tune.console import SearchConsole  # noqa: E402
from tune.output import library_output  # noqa: E402


@contextmanager
def ray_session(address: str | None, log: Path | None = None) -> Iterator[None]:
    """Connect to `address`, or start a local Ray (no dashboard), and shut it down afterwards.
    A Ray already initialised in this process (a test's) is used and left running. While it
    lasts, what Ray and Optuna print goes to `log` (results/<name>/driver.log; written from
    the moment its folder exists), not to the console (`tune.output.library_output`)."""
    with library_output(log):
        if ray.is_initialized():
            yield
            return
        kwargs = dict(include_dashboard=False, log_to_driver=True, configure_logging=True, logging_level="WARNING",
                      runtime_env={"env_vars": THREAD_TIMEOUT})  # read in the trial actors
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(**kwargs)  # local: Ray counts this machine's CPUs and GPUs
        try:
            yield
        finally:
            ray.shutdown()


def run_config(name: str, storage: str, callbacks: list, max_failures: int = 2, keep: int = 2,
               reporter=None, console: SearchConsole | None = None) -> tune.RunConfig:
    """Tune's RunConfig as every run of this project uses it: retries for lost workers (a
    health stop is a report, never an exception, so it is not retried), the last `keep`
    checkpoints per trial, our TensorBoard callback, our console (one line per trial event and
    a progress bar), and Ray's classic status table (into driver.log; --verbose: on the console).
    Keep 2 or more: Tune snapshots the experiment whenever a trial has checkpointed `keep` times
    since the last snapshot, so with 1 every checkpoint forced one (the confirmation's did: 13
    "snapshotting has been triggered multiple times" warnings in one smoke run)."""
    return tune.RunConfig(name=name, storage_path=storage, verbose=1, progress_reporter=reporter,
                          failure_config=tune.FailureConfig(max_failures=max_failures),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
                          callbacks=[*callbacks, console] if console is not None else callbacks)


def ran_to_the_end(result, max_t: int) -> bool:
    """Did this trial (one without early stopping: confirmation, final run) end for real --
    max_t epochs, a health stop, or an error? After a Ctrl-C Tune marks the trials it stops
    TERMINATED like finished ones, so the trial's own last result is what tells."""
    m = result.metrics or {}
    return bool(result.error) or bool(m.get("health/fatal")) or int(m.get("training_iteration", 0)) >= max_t


__all__ = ["ran_to_the_end", "ray_session", "run_config"]
