"""Typed, frozen training configuration: the one place where defaults live.

`TrainConfig.from_dict` / `from_yaml` reject unknown keys and values of the wrong type with a
`ConfigError` that names the key path (e.g. ``optim.lr: expected float, got 'abc'``).
`to_yaml` writes a file that `from_yaml` reads back to an equal object.

Units: sizes in pixels, memory in GB, times in seconds, `lr` per optimizer step.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from refdet.io import atomic_write_text

PRESET_DIR = Path(__file__).parent / "presets"
PACKAGED = "preset:"  # a `checkpoint` value "preset:NAME" is the file NAME shipped beside the presets


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key path."""


@dataclass(frozen=True)
class ModelConfig:
    depth_multiple: float = 0.33  # YOLOv8 "n" scale
    width_multiple: float = 0.25
    max_channels: int = 1024
    reg_max: int = 16  # DFL bins per box side
    num_classes: int = 1
    embed_dim: int = 128  # CPE projection size
    roi_size: int = 4  # ROI-align output cells per side (averaged: CPE uses the ROI mean)
    pretrained: str = ""  # a YOLOv8n-layout state dict for backbone, neck and box branch (refdet/model/pretrained.py)


@dataclass(frozen=True)
class LossConfig:
    bbox_weight: float = 7.5
    cls_weight: float = 0.5
    dfl_weight: float = 1.5
    cpe_weight: float = 0.5
    cpe_temperature: float = 0.1
    cpe_iou_threshold: float = 0.5  # a proposal matching its GT at this IoU is a positive
    cpe_num_proposals: int = 8  # top-scoring predicted boxes per image used as proposals
    cpe_num_jitter: int = 4  # jittered copies of each GT box per image
    cpe_jitter: float = 0.15  # jitter scale, fraction of the box size
    assigner_topk: int = 10
    assigner_alpha: float = 0.5
    assigner_beta: float = 6.0


@dataclass(frozen=True)
class DataConfig:
    root: str = "./datasets/train"
    val_root: str = ""  # empty: split `root` (val_fraction of it) for validation
    val_fraction: float = 0.25
    # How `root` is split when there is no val_root: "group" keeps <cat>_0/<cat>_1 together,
    # so validation objects are never seen in training (the competition's setting); "video"
    # holds out whole videos only, so a validation video may show a training object in
    # another scene (the CPU smoke preset: a tiny model cannot learn novel objects in minutes).
    split: str = "group"
    synthetic: bool = False  # generate a synthetic dataset at `root` when it is missing
    synthetic_videos: int = 8
    synthetic_frames: int = 120
    synthetic_size: str = "320x180"
    synthetic_object_scale: float = 0.3  # object size as a fraction of the frame height
    synthetic_scenes: int = 2  # videos per object in `root` (<cat>_0, <cat>_1, ...)
    # > 0: `val_root` is generated too, each object of `root` in this many new scenes (a
    # fixed validation set of held-out scenes of the training objects; see refdet.data.synthetic).
    synthetic_val_scenes: int = 0
    # Probability that a synthetic distractor is another object of the dataset (in root and
    # val_root alike): only the references then tell the target from the other objects.
    synthetic_hard_negatives: float = 0.0
    # Stage 1 only: false trains a plain class-agnostic detector on frames drawn from every
    # training video (no references, no fusion), batch_size frames per step.
    episodic: bool = True
    img_size: int = 640  # query letterbox size (px, square)
    ref_size: int = 128  # reference letterbox size (px, square)
    k_shot: int = 3
    n_way: int = 4
    n_query: int = 4
    neg_fraction: float = 0.25  # share of query frames without the object
    neg_frames_per_video: int = 64  # object-free frames cached per video as negatives
    max_frames_per_video: int = 0  # cap on annotated frames cached per video (0 = all)
    val_frame_stride: int = 1  # validation evaluates every Nth frame of each val video
    val_max_frames: int = 0  # cap on frames evaluated per val video (0 = all)
    cache_dir: str = ""  # empty: <root>/.frame_cache
    augment: bool = True
    # On a CUDA device, warp and colour-jitter the queries there as batched tensor ops (the
    # loader ships unwarped frames). Training on the CPU, or false: cv2 in the loader (on the
    # CPU, cv2 is faster than the tensor ops: measured +10 % per smoke step the other way).
    augment_on_device: bool = True
    # DataLoader worker processes; -1 (auto): on CUDA the run's CPU threads less one (a
    # trial's resources.cpu - 1), so loading overlaps the step; on the CPU 0 (in-process).
    num_workers: int = -1


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_epochs: int = 3
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    gradient_clip_norm: float = 10.0
    # The schedule's length in epochs (warmup + cosine); 0: the run's own `epochs`. A run of
    # fewer epochs is a truncation of that schedule, e.g. search trials as the first epochs of
    # the run they export to (measured for smoke, and not kept: docs/design.md, #21).
    schedule_epochs: int = 0


@dataclass(frozen=True)
class HealthConfig:
    """Thresholds of refdet.engine.health. None reads a searched value: a verdict must not
    depend on where the searcher put the clip, a loss weight, the lr or the warmup."""

    enabled: bool = True
    patience: int = 3  # consecutive steps a rule must hold before it is fatal
    # pre-clip norm per unit of loss weight (norm / sum of the loss weights: at most the largest
    # unweighted term's gradient norm, so no searched weight pushes a run whose every term is
    # within the limit over it; a term beyond it counts by its weight's share); the checklist's
    # ">10,000 explosion" on a raw norm whose weights sum to ~10
    grad_norm_max: float = 1e3
    grad_growth_factor: float = 20.0  # pre-clip norm vs its own running median (healthy runs here: < 3x for 3 steps)
    loss_spike_factor: float = 2.0  # unweighted loss vs its own running median
    loss_spike_patience: int = 10  # consecutive steps: a small batch's loss is noisy step to step
    history_window: int = 50  # steps in the running medians
    settle_steps: int = 20  # finite steps before the history rules (grad growth, loss spike) apply; the same for every trial
    dfl_max: float = 5.0  # unweighted DFL term
    dead_window: int = 20  # consecutive steps with ground truth but no detection loss: the detector is dead
    dead_loss_max: float = 1e-3  # box + class + DFL terms below this (learning runs: class term ~1)
    cpe_zero_window: int = 20  # steps; CPE == 0 on all of them is fatal (stage 2)
    mem_budget_gb: float = 50.0  # host RSS
    cuda_mem_fraction: float = 0.9  # of this trial's share of the device (resources.gpu x total)
    mem_growth_pct: float = 20.0  # RSS growth per epoch, checked from epoch 3
    mem_growth_after_epoch: int = 2


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    stage: int = 2  # 1: detection only (no CPE); 2: episodic with CPE
    epochs: int = 100
    steps_per_epoch: int = 200
    batch_size: int = 32  # query frames per step, rounded down to whole episodes (min 1)
    seed: int = 0
    val_interval: int = 1  # validate every N epochs (and always after the last)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    device_share: float = 1.0  # share of the CUDA device this run may use (a trial's resources.gpu, at most 1)
    host_share: float = 1.0  # share of the node's host memory this run may count on (a trial's packing fraction)
    mixed_precision: bool = True  # AMP on CUDA; ignored on CPU
    amp_dtype: str = "auto"  # auto (bf16 where supported, else fp16 + GradScaler) | bf16 | fp16
    num_threads: int = 0  # torch CPU threads; 0 = every CPU this process may use
    checkpoint: str = ""  # initial weights (e.g. a stage-1 checkpoint); "preset:NAME": refdet/presets/NAME
    output_dir: str = "./checkpoints"
    conf_threshold: float = 0.25  # detection score threshold for ST-IoU / recall
    debug_mode: bool = False

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TrainConfig:
        cfg = _build(cls, data or {}, "")
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TrainConfig:
        return cls.from_dict(load_yaml_mapping(path))

    @classmethod
    def preset(cls, name: str) -> TrainConfig:
        path = PRESET_DIR / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
            raise ConfigError(f"unknown preset {name!r} (known: {known})")
        return cls.from_yaml(path)

    @classmethod
    def load(cls, name_or_path: str) -> TrainConfig:
        """A preset name (``smoke``) or a YAML file path."""
        if (PRESET_DIR / f"{name_or_path}.yaml").is_file() and not Path(name_or_path).exists():
            return cls.preset(name_or_path)
        return cls.from_yaml(name_or_path)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | os.PathLike | None = None, header: str = "") -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if header:
            text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + text
        if path is not None:
            atomic_write_text(path, text)
        return text

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """Apply ``{"optim.lr": 1e-3, ...}`` (dotted paths) or nested mappings."""
        merged = self.to_dict()
        for key, value in overrides.items():
            set_path(merged, key, value)
        return TrainConfig.from_dict(merged)

    @property
    def checkpoint_file(self) -> str:
        """The file `checkpoint` names: "preset:NAME" is resolved here, in the process that loads
        it, so a config written on one machine means the shipped file on every other."""
        if self.checkpoint.startswith(PACKAGED):
            return str(PRESET_DIR / self.checkpoint[len(PACKAGED):])
        return self.checkpoint

    def resolve_paths(self, base: str | os.PathLike | None = None) -> TrainConfig:
        """Relative data/checkpoint paths made absolute against `base` (default: the CWD), so
        the config means the same in a process with another working directory (a Ray trial)."""
        base = Path(base or os.getcwd())
        absolute = lambda p: (str((base / p).resolve()) if p and not Path(p).is_absolute()  # noqa: E731
                              and not p.startswith(PACKAGED) else p)
        d = self.data
        return replace(self, data=replace(d, root=absolute(d.root), val_root=absolute(d.val_root), cache_dir=absolute(d.cache_dir)),
                       checkpoint=absolute(self.checkpoint),
                       model=replace(self.model, pretrained=absolute(self.model.pretrained)))

    def validate(self) -> None:
        name = self.checkpoint[len(PACKAGED):] if self.checkpoint.startswith(PACKAGED) else None
        if name is not None and (not name or Path(name).name != name or name in (".", "..")):
            raise ConfigError(f"checkpoint: {self.checkpoint!r}: {PACKAGED}NAME is a file shipped beside the "
                              f"presets ({PRESET_DIR}), named without a folder")
        checks = [
            (self.stage in (1, 2), "stage", "must be 1 or 2"),
            (self.epochs >= 1, "epochs", "must be >= 1"),
            (self.steps_per_epoch >= 1, "steps_per_epoch", "must be >= 1"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.val_interval >= 1, "val_interval", "must be >= 1"),
            (self.optim.lr > 0, "optim.lr", "must be > 0"),
            (self.optim.gradient_clip_norm > 0, "optim.gradient_clip_norm", "must be > 0"),
            (self.optim.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0"),
            (self.optim.schedule_epochs == 0 or self.optim.schedule_epochs >= self.epochs, "optim.schedule_epochs",
             f"must be 0 (the run's epochs) or >= epochs ({self.epochs}; in a search space, scheduler.max_t): "
             f"a run is at most its whole schedule"),
            (self.data.k_shot >= 1, "data.k_shot", "must be >= 1"),
            (self.data.n_way >= 1, "data.n_way", "must be >= 1"),
            (self.data.n_query >= 1, "data.n_query", "must be >= 1"),
            (0 <= self.data.neg_fraction < 1, "data.neg_fraction", "must be in [0, 1)"),
            (self.data.img_size % 32 == 0 and self.data.img_size >= 64, "data.img_size",
             "must be a multiple of 32, >= 64"),
            (self.data.ref_size % 32 == 0 and self.data.ref_size >= 32, "data.ref_size",
             "must be a multiple of 32, >= 32"),
            (self.model.reg_max >= 2, "model.reg_max", "must be >= 2"),
            (self.model.width_multiple > 0, "model.width_multiple", "must be > 0"),
            (self.model.depth_multiple > 0, "model.depth_multiple", "must be > 0"),
            (self.loss.cpe_temperature > 0, "loss.cpe_temperature", "must be > 0"),
            (self.amp_dtype in ("auto", "bf16", "fp16"), "amp_dtype", "must be auto, bf16 or fp16"),
            (self.data.num_workers >= -1, "data.num_workers", "must be >= 0, or -1 (auto)"),
            (self.health.patience >= 1, "health.patience", "must be >= 1"),
            (self.health.settle_steps >= 0, "health.settle_steps", "must be >= 0"),
            (self.health.dead_window >= 1, "health.dead_window", "must be >= 1"),
            (self.health.history_window >= 1, "health.history_window", "must be >= 1"),
            (0 < self.device_share <= 1, "device_share", "must be in (0, 1]"),
            (0 < self.host_share <= 1, "host_share", "must be in (0, 1]"),
            (self.data.split in ("group", "video"), "data.split", "must be group or video"),
            (self.data.synthetic_scenes >= 1, "data.synthetic_scenes", "must be >= 1"),
            (self.data.synthetic_val_scenes >= 0 and (self.data.val_root or not self.data.synthetic_val_scenes),
             "data.synthetic_val_scenes", "must be >= 0, and needs data.val_root (where the scenes are written)"),
            (0 <= self.data.synthetic_hard_negatives <= 1, "data.synthetic_hard_negatives", "must be in [0, 1]"),
            (self.data.episodic or self.stage == 1, "data.episodic",
             "false is for stage 1 only (stage 2 learns from references and CPE, on episodes)"),
            (re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
             "device", "must be auto, cpu, cuda or cuda:N"),
        ]
        for ok, key, why in checks:
            if not ok:
                raise ConfigError(f"{key}: {why} (got {get_path(self.to_dict(), key)!r})")
        for f in ("bbox_weight", "cls_weight", "dfl_weight", "cpe_weight"):
            if getattr(self.loss, f) < 0:
                raise ConfigError(f"loss.{f}: must be >= 0")

    @property
    def episodes_per_batch(self) -> int:
        return max(1, self.batch_size // (self.data.n_way * self.data.n_query))


# -- helpers ------------------------------------------------------------------------------
def parse_set(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "data.root=x"]`` (CLI ``--set`` values) -> ``{"optim.lr": 0.001, ...}``;
    values are read as YAML scalars (safely), so numbers and booleans keep their types."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def load_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping safely; errors name the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def get_path(d: dict[str, Any], key: str) -> Any:
    cur: Any = d
    for part in key.split("."):
        cur = cur[part]
    return cur


def set_path(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for part in parts[:-1]:
        if not isinstance(cur.get(part), dict):
            raise ConfigError(f"{key}: {part!r} is not a section")
        cur = cur[part]
    if isinstance(value, dict) and isinstance(cur.get(parts[-1]), dict):
        for k, v in value.items():
            set_path(cur[parts[-1]], k, v)
    else:
        cur[parts[-1]] = value


def field_type(key: str) -> type:
    """The Python type of a dotted TrainConfig path (raises ConfigError if it does not exist)."""
    cls: Any = TrainConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            where = ".".join(parts[:i]) or "the top level"
            known = ", ".join(f.name for f in fields(cls))
            raise ConfigError(f"{key}: no key {part!r} in {where} (known: {known})")
        cls = hints[part]
        if i < len(parts) - 1 and not dataclasses.is_dataclass(cls):
            raise ConfigError(f"{key}: {part!r} is not a section")
    if dataclasses.is_dataclass(cls):
        raise ConfigError(f"{key}: is a section, not a value")
    return cls


def coerce(value: Any, typ: type, key: str) -> Any:
    """Check `value` against `typ`; ints are accepted for floats, and numeric strings such as
    '1e-4' (which YAML 1.1 reads as a string) for floats. Anything else is an error."""
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                out = None
        else:
            out = None
        if out is not None:
            if not math.isfinite(out):
                raise ConfigError(f"{key}: must be finite (got {value!r})")
            return out
    elif typ is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - no other field types exist
        raise ConfigError(f"{key}: unsupported type {typ}")
    raise ConfigError(f"{key}: expected {typ.__name__}, got {type(value).__name__} {value!r}")


# Keys earlier versions accepted, with what to do instead.
RETIRED_KEYS = {
    "health.clip_ratio_max": "removed: the pre/post clip ratio is a function of the searched clip value; "
                             "health.grad_norm_max and health.grad_growth_factor judge the pre-clip norm itself",
    "health.loss_window": "renamed health.history_window",
}


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        key = f"{prefix}{unknown[0]}"
        if key in RETIRED_KEYS:
            raise ConfigError(f"{key}: {RETIRED_KEYS[key]}")
        raise ConfigError(f"{key}: unknown key (known here: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        typ = hints[name]
        if isinstance(typ, types.UnionType):  # pragma: no cover - not used
            raise ConfigError(f"{prefix}{name}: unions are not supported")
        if dataclasses.is_dataclass(typ):
            kwargs[name] = _build(typ, value, f"{prefix}{name}.")
        else:
            kwargs[name] = coerce(value, typ, f"{prefix}{name}")
    return cls(**kwargs)


__all__ = [
    "ConfigError",
    "DataConfig",
    "HealthConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "field_type",
    "load_yaml_mapping",
]
