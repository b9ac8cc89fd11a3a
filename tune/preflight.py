"""What a search checks on the driver before anything is written or Ray starts: the datasets
and the weights the trials start from. Ray-free, so `tune/run.py --dry-run` makes the same
checks and says where the search would stop."""

from __future__ import annotations

from pathlib import Path

from refdet.data import DatasetError, load_dataset
from refdet.data.synthetic import check_recipes
from tune.space import SearchSpec


class ExperimentError(ValueError):
    """The experiment folder, data, start weights or cluster cannot be used as asked."""


def check_data(spec: SearchSpec, remote: bool) -> None:
    """Validate the datasets on the driver, before any trial starts (the trainer validates them
    again in every trial). On a cluster the data may live only on the workers: a path missing
    here is then a warning, not an error."""
    d = spec.base.data
    if d.synthetic:
        try:
            check_recipes(d)  # a generated dataset made with another recipe is never trained on
        except DatasetError as exc:
            raise ExperimentError(str(exc)) from None
    for root in filter(None, (d.root, d.val_root)):
        if remote and not Path(root).exists():
            print(f"warning: {root} is not on this machine; the trials will check it on their nodes")
            continue
        try:
            load_dataset(root, min_refs=d.k_shot)
        except DatasetError as exc:
            raise ExperimentError(str(exc)) from None


def check_start(spec: SearchSpec, remote: bool) -> None:
    """The weights the trials start from: a named file must exist and fit the model (on a
    cluster, a file missing here is a warning). The console's header says where stage 2
    starts (start_line)."""
    b = spec.base
    for key, path in (("checkpoint", b.checkpoint_file), ("model.pretrained", b.model.pretrained)):
        if path and not Path(path).is_file():
            if not remote:
                raise ExperimentError(f"{spec.path}: base {key}: {path} not found")
            print(f"warning: {path} ({key}) is not on this machine; the trials will load it on their nodes")
        elif path:
            check_weights(spec, key, path)


def check_weights(spec: SearchSpec, key: str, path: str) -> None:
    """Load the file as a trial will (weights_only) into the base's model: a file made for
    another model is an error before Ray starts, not a failed trial."""
    from refdet.engine.checkpoint import CheckpointError, check_fits, load_checkpoint
    from refdet.model import build_model
    from refdet.model.pretrained import PretrainedError, load_pretrained

    model = build_model(spec.base.model)
    try:
        if key == "checkpoint":
            check_fits(load_checkpoint(path), model.state_dict(), path)
        else:
            load_pretrained(model, path)
    except CheckpointError as exc:
        raise ExperimentError(f"{spec.path}: base {key}: {exc}") from None
    except PretrainedError as exc:  # its message names model.pretrained and the file
        raise ExperimentError(f"{spec.path}: base {exc}") from None


def start_line(base) -> str:
    """Where stage 2 starts: the mission trains it from a stage-1 checkpoint or YOLOv8n weights."""
    if base.checkpoint or base.model.pretrained:
        return "  stage 2 from " + " + ".join(x for x in (base.checkpoint_file, base.model.pretrained) if x)
    return ("  stage 2 from random weights: no stage-1 checkpoint or YOLOv8n weights in the base "
            "(--set checkpoint=<stage-1 .pt> or --set model.pretrained=<yolov8n state dict>)")


def schedule_line(spec: SearchSpec) -> str:
    """What a trial is of the run it exports to."""
    total = spec.base.optim.schedule_epochs
    if total:
        return (f"  a trial: the first {spec.max_t} epochs of a {total}-epoch schedule, the exported run's "
                f"(final_epochs {spec.final_epochs})")
    return f"  a trial: {spec.max_t} epochs on its own schedule; the exported run: {spec.final_epochs} epochs"
