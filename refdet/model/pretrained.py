"""Start from COCO-pretrained YOLOv8n weights: a YOLOv8n-layout state dict mapped onto the
query backbone, the neck and the box branch of the head.

The user exports the state dict once, where the popular detection library is installed:

    python -c "import torch; from ultralytics import YOLO; torch.save(YOLO('yolov8n.pt').model.state_dict(), 'yolov8n_state_dict.pt')"

and trains with `model.pretrained: yolov8n_state_dict.pt` (or `--pretrained`). The file is
loaded with `weights_only=True` (tensors only, no pickled code). Loaded: layers 0-9
(backbone), 12/15/16/18/19/21 (neck), 22.cv2 (box branch). Skipped, and listed: 22.cv3 (the
class branch: COCO's 80 classes, not "the referenced object"), 22.dfl (a fixed
expectation here). The fusion and CPE heads start fresh.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

# reference layer index -> our module prefix
LAYERS = {0: "backbone.stem.0", 1: "backbone.stem.1", 2: "backbone.stem.2", 3: "backbone.stage3.0",
          4: "backbone.stage3.1", 5: "backbone.stage4.0", 6: "backbone.stage4.1", 7: "backbone.stage5.0",
          8: "backbone.stage5.1", 9: "backbone.stage5.2", 12: "neck.td4", 15: "neck.td3", 16: "neck.down3",
          18: "neck.bu4", 19: "neck.down4", 21: "neck.bu5"}
HEAD = 22
SKIPPED = {"cv3": "the class branch starts fresh (COCO classes are not the referenced object)",
           "dfl": "DFL is a fixed expectation here, not a layer"}
KEY = re.compile(r"^model\.(\d+)\.(.+)$")


class PretrainedError(ValueError):
    """The file is not a YOLOv8n-layout state dict this model can take."""


def map_state_dict(reference: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(our name -> tensor for the mapped tensors, reference name -> why for the skipped ones).
    A key outside the YOLOv8 layout is an error naming it."""
    mapped, skipped = {}, {}
    for name, tensor in reference.items():
        m = KEY.match(name)
        if m is None:
            raise PretrainedError(f"{name!r} is not a YOLOv8-layout key (expected model.<layer>.<...>)")
        layer, rest = int(m.group(1)), m.group(2)
        if layer in LAYERS:
            mapped[f"{LAYERS[layer]}.{rest}"] = tensor
        elif layer == HEAD and rest.startswith("cv2."):
            mapped[f"head.box.{rest[4:]}"] = tensor
        elif layer == HEAD and rest.split(".")[0] in SKIPPED:
            skipped[name] = SKIPPED[rest.split(".")[0]]
        else:
            raise PretrainedError(f"{name!r}: layer {layer} has no counterpart in RefDet's query branch")
    return mapped, skipped


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain state dict, or one under "model" / "state_dict", loaded with weights_only=True."""
    p = Path(path)
    if not p.is_file():
        raise PretrainedError(f"{p}: no such file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # a full pickled model, or not a torch file at all
        raise PretrainedError(f"{p}: not a plain state dict loadable with weights_only=True ({type(exc).__name__}: "
                              f"{str(exc)[:160]}); export one with the one-liner in refdet/model/pretrained.py") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedError(f"{p}: expected a mapping of tensor names to tensors")
    return obj


def load_pretrained(model: torch.nn.Module, path: str | os.PathLike) -> list[str]:
    """Copies the mapped tensors into `model`; returns the log lines (what was loaded, what
    was skipped and why). Wrong shapes: an error naming the first mismatching key."""
    try:
        mapped, skipped = map_state_dict(read_state_dict(path))
    except PretrainedError as exc:
        raise PretrainedError(f"model.pretrained {path}: {exc}") from None
    own = model.state_dict()
    for name, tensor in mapped.items():
        if name not in own:
            raise PretrainedError(f"model.pretrained {path}: {name} is not a parameter of this model")
        if own[name].shape != tensor.shape:
            raise PretrainedError(f"model.pretrained {path}: first mismatching key {name}: file {tuple(tensor.shape)}, "
                                  f"model {tuple(own[name].shape)} (a YOLOv8n file needs model.width_multiple 0.25, "
                                  f"depth_multiple 0.33, reg_max 16)")
    with torch.no_grad():
        for name, tensor in mapped.items():
            own[name].copy_(tensor)
    fresh = sorted({k.split(".")[0] for k in own if k not in mapped} | {"head.cls"})
    return [f"pretrained {path}: loaded {len(mapped)} tensors (backbone, neck, box branch)",
            f"pretrained {path}: skipped {len(skipped)} tensors: " + "; ".join(sorted(set(skipped.values()))),
            f"pretrained {path}: starting fresh: {', '.join(fresh)}"]
