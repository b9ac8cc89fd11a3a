"""Datasets. One entry point, `load_splits(DataConfig)`: the training and validation videos,
validated, whatever the format on disk (today the AeroEyes layout, `refdet.data.aeroeyes`;
a second format is one new module and a branch here)."""

from __future__ import annotations

from dataclasses import dataclass

from refdet.config import DataConfig
from refdet.data.aeroeyes import DatasetError, VideoEntry, load_dataset, split_by_group
from refdet.data.synthetic import ensure_dataset


@dataclass
class Splits:
    train: list[VideoEntry]
    val: list[VideoEntry]
    summary: str  # what was loaded (counts, warnings), for the console and the log


def load_splits(d: DataConfig) -> Splits:
    """`d.root` (generated first when `d.synthetic`), validated; validation from `d.val_root`,
    or a split of `d.root` by object group (or video) with `d.val_fraction`."""
    if d.synthetic:
        ensure_dataset(d)
    train = load_dataset(d.root, min_refs=d.k_shot)
    if d.val_root:
        train_videos, val_videos = train.videos, load_dataset(d.val_root, min_refs=d.k_shot).videos
    else:
        train_videos, val_videos = split_by_group(train.videos, d.val_fraction, seed=0, by=d.split)
    if not val_videos:
        unit = "objects" if d.split == "group" else "videos"
        raise DatasetError(d.val_root or d.root, [f"no validation videos (set data.val_root, or use a dataset with "
                                                  f"at least two {unit} to split)"])
    return Splits(train_videos, val_videos, train.describe())


__all__ = ["DatasetError", "Splits", "load_dataset", "load_splits"]
