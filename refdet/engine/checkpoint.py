"""Atomic save and safe load (weights_only) of the full training state."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from refdet.io import atomic_path


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a RefDet checkpoint."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """torch.save to a temp file in the same folder, then rename: a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with weights_only=True: tensors and plain containers only, no pickled code."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise CheckpointError(f"{p}: cannot load as a checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{p}: not a RefDet checkpoint (no 'model' entry of weights)")
    return state


def check_fits(state: dict[str, Any], model_state: dict[str, torch.Tensor], path: str | os.PathLike) -> tuple[
        list[str], list[str]]:
    """Whether a checkpoint's weights fit a model (its state_dict): a tensor of another shape,
    or not one name in common (another network's file), is a CheckpointError naming the file;
    returns the model's names the file lacks and the file's names the model lacks."""
    weights = state["model"]
    made = state.get("config", {}).get("model") if isinstance(state.get("config"), dict) else None
    hint = f" (it was made with model {made})" if isinstance(made, dict) else ""
    common = [k for k in weights if k in model_state]
    if not common:
        raise CheckpointError(f"{path}: not weights of this model: none of its {len(weights)} tensors is named "
                              f"as a RefDet parameter{hint}")
    bad = [k for k in common if tuple(weights[k].shape) != tuple(model_state[k].shape)]
    if bad:
        k = bad[0]
        raise CheckpointError(f"{path}: made for another model size: {len(bad)} tensors differ in shape, first {k}: "
                              f"file {tuple(weights[k].shape)}, model {tuple(model_state[k].shape)}{hint}; "
                              "the config's model section must match the run that wrote it")
    return [k for k in model_state if k not in weights], [k for k in weights if k not in model_state]
