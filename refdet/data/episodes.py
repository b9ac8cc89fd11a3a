"""Episodic sampling for RefDet, letterboxing, augmentation and collation.

A training batch is `episodes_per_batch` episodes. An episode takes `n_way` videos (distinct
objects where the dataset has enough) and, for each, its K reference photos and `n_query`
query frames, of which round(n_query * neg_fraction) show no target: half of those are frames
of the same video without the object, half are frames of *another* object's video
(conditioned on this object's references, so their target is empty although a salient
object is in view). The object's identity is its group (`<cat>` of `<cat>_<k>`).

Batches are a pure function of (seed, epoch, index): resuming training replays them exactly,
and workers need no shared state. `FrameSampler` (below) makes the non-episodic stage-1
batches: frames of every video, no references.

Batch layout (uint8 images; the trainer converts to float on its device):
  query       [B, 3, S, S] uint8 RGB, S = img_size, letterboxed (grey 114 padding)
  references  [R, K, 3, r, r] uint8 RGB, r = ref_size, R = episodes * n_way reference sets
  ref_index   [B] long: the reference set each query is conditioned on
  boxes       [B, 1, 4] float32 xyxy px in the letterboxed query; mask [B, 1] bool
  object_ids  [R] long: identity of each reference set (for CPE)
  frame_ids   [B] long: the video frame of each query (val) or -1
  source_ids  [B] long: identity of the object whose video the query frame came from (train)
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from refdet.config import DataConfig
from refdet.data.aeroeyes import VideoEntry
from refdet.data.device_augment import PAD, theta_for
from refdet.data.frames import (
    CachedFrames,
    FrameCache,
    load_reference_images,
    train_frames,
    val_frames,
)


@dataclass
class PreparedVideo:
    """A video ready for sampling. boxes [n, 4] float32 in cached px, NaN where no object."""

    entry: VideoEntry
    object_id: int
    cached: CachedFrames
    boxes: np.ndarray
    pos: np.ndarray
    neg: np.ndarray
    refs: list[np.ndarray]


def prepare_videos(entries: list[VideoEntry], cfg: DataConfig, cache: FrameCache, split: str,
                   object_ids: dict[str, int]) -> list[PreparedVideo]:
    out = []
    for e in entries:
        if split == "train":
            wanted = train_frames(e, cfg.max_frames_per_video, cfg.neg_frames_per_video)
        else:
            wanted = val_frames(e, cfg.val_frame_stride, cfg.val_max_frames)
        cached = cache.get(e, wanted)
        boxes = np.full((len(cached.frame_ids), 4), np.nan, np.float32)
        for i, f in enumerate(cached.frame_ids.tolist()):
            if f in e.boxes:
                boxes[i] = np.asarray(e.boxes[f], np.float32) * cached.scale
        has = ~np.isnan(boxes[:, 0])
        refs = load_reference_images(e, cfg.k_shot, max(cfg.ref_size * 2, 64))
        out.append(PreparedVideo(e, object_ids[e.group], cached, boxes, np.flatnonzero(has),
                                 np.flatnonzero(~has), refs))
    return out


# -- geometry & augmentation ---------------------------------------------------------------
def letterbox_matrix(w: int, h: int, size: int, rng: np.random.Generator | None,
                     scale_jitter: float = 0.25, flip: bool = False) -> np.ndarray:
    """2x3 affine: fit (w, h) into size x size. With rng: scale jitter and random placement
    (translation) inside the square, and a horizontal flip if `flip`."""
    s = min(size / w, size / h)
    if rng is not None:
        s *= float(rng.uniform(1 - scale_jitter, 1 + scale_jitter))
    nw, nh = w * s, h * s
    if rng is not None:
        tx = float(rng.uniform(min(0, size - nw), max(0, size - nw)))
        ty = float(rng.uniform(min(0, size - nh), max(0, size - nh)))
    else:
        tx, ty = (size - nw) / 2, (size - nh) / 2
    m = np.array([[s, 0, tx], [0, s, ty]], np.float64)
    if flip:
        m = np.array([[-1, 0, size], [0, 1, 0]], np.float64) @ np.vstack([m, [0, 0, 1]])
    return m


def warp(img: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    return cv2.warpAffine(np.ascontiguousarray(img), m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(PAD, PAD, PAD))


def warp_box(box: np.ndarray, m: np.ndarray, size: int, min_visible: float = 0.3) -> np.ndarray | None:
    """Transform an xyxy box; None if less than `min_visible` of its area stays in the image."""
    xs = m[0, 0] * box[[0, 2]] + m[0, 2]
    ys = m[1, 1] * box[[1, 3]] + m[1, 2]
    x1, x2 = sorted(xs)
    y1, y2 = sorted(ys)
    area = (x2 - x1) * (y2 - y1)
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, size), min(y2, size)
    if cx2 - cx1 < 2 or cy2 - cy1 < 2 or (cx2 - cx1) * (cy2 - cy1) < min_visible * area:
        return None
    return np.array([cx1, cy1, cx2, cy2], np.float32)


HSV_GAINS = (0.015, 0.5, 0.3)


def hsv_factors(rng: np.random.Generator, gains=HSV_GAINS) -> np.ndarray:
    """The per-image hue/saturation/value multipliers (one draw of the generator)."""
    return rng.uniform(-1, 1, 3) * gains + 1


@dataclass
class RawQuery:
    """A query left unwarped for the device (refdet.data.device_augment): the cached frame,
    the pixel affine to the query size, and the colour multipliers (1, 1, 1: none)."""

    frame: np.ndarray
    matrix: np.ndarray
    hsv: np.ndarray


def hsv_jitter(img: np.ndarray, rng: np.random.Generator, gains=HSV_GAINS) -> np.ndarray:
    """YOLO-style hue/saturation/value jitter through lookup tables (RGB uint8 in, out)."""
    r = hsv_factors(rng, gains)
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_RGB2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x * r[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def to_chw(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def raw_queries(queries: list[RawQuery], size: int) -> dict[str, torch.Tensor]:
    """Unwarped frames on one uint8 canvas (top-left, padded with PAD) [B, 3, H, W], the
    affine_grid thetas [B, 2, 3] to `size`, and the colour multipliers [B, 3]."""
    h = max(q.frame.shape[0] for q in queries)
    w = max(q.frame.shape[1] for q in queries)
    canvas = np.full((len(queries), h, w, 3), PAD, np.uint8)
    for i, q in enumerate(queries):
        canvas[i, : q.frame.shape[0], : q.frame.shape[1]] = q.frame
    return {"query": torch.from_numpy(canvas).permute(0, 3, 1, 2),
            "query_theta": torch.from_numpy(np.stack([theta_for(q.matrix, (h, w), size) for q in queries])),
            "query_hsv": torch.from_numpy(np.stack([q.hsv for q in queries]).astype(np.float32))}


class VideoSampler:
    """What every training sampler shares: query frames and reference sets of prepared
    videos (letterboxed, augmented when an rng is given), validation batches, collation.
    Subclasses make the training batches; a batch is a pure function of (seed, epoch, index)."""

    def __init__(self, videos: list[PreparedVideo], cfg: DataConfig, seed: int):
        if not videos:
            raise ValueError("no videos to sample from")
        self.videos, self.cfg, self.seed = videos, cfg, seed
        self.with_pos = [i for i, v in enumerate(videos) if len(v.pos)]
        if not self.with_pos:
            raise ValueError("no video has an annotated frame to train on")

    # -- pieces --------------------------------------------------------------------------
    def query(self, video: PreparedVideo, idx: int, target: bool, rng: np.random.Generator | None):
        """One query: the cached frame `idx` of `video`, its box kept only if `target`."""
        cfg = self.cfg
        img = np.asarray(video.cached.frames[idx])
        h, w = img.shape[:2]
        augment = rng is not None
        flip = augment and bool(rng.random() < 0.5)
        m = letterbox_matrix(w, h, cfg.img_size, rng if augment else None, flip=flip)
        if cfg.augment_on_device:  # the same generator draws; the pixels are the device's work
            out = RawQuery(img, m, hsv_factors(rng) if augment else np.ones(3))
        else:
            out = warp(img, m, cfg.img_size)
            if augment:
                out = hsv_jitter(out, rng)
        box = video.boxes[idx]
        tbox = warp_box(box, m, cfg.img_size) if target and not np.isnan(box[0]) else None
        return out, tbox

    def references(self, video: PreparedVideo, rng: np.random.Generator | None) -> list[np.ndarray]:
        cfg = self.cfg
        refs = video.refs
        if rng is not None and len(refs) > cfg.k_shot:
            refs = [refs[i] for i in rng.choice(len(refs), cfg.k_shot, replace=False)]
        refs = [refs[i % len(refs)] for i in range(cfg.k_shot)]
        out = []
        for r in refs:
            flip = rng is not None and bool(rng.random() < 0.5)
            m = letterbox_matrix(r.shape[1], r.shape[0], cfg.ref_size, rng, scale_jitter=0.1, flip=flip)
            img = warp(r, m, cfg.ref_size)
            out.append(hsv_jitter(img, rng) if rng is not None else img)
        return out

    # -- batches -------------------------------------------------------------------------
    def val_batches(self, video: PreparedVideo, batch_size: int):
        """Every cached frame of a validation video, in order, without augmentation."""
        refs = [self.references(video, None)]
        n = len(video.cached.frame_ids)
        for start in range(0, n, batch_size):
            idx = range(start, min(n, start + batch_size))
            items = [self.query(video, i, True, None) for i in idx]
            yield self._collate([q for q, _ in items], [b for _, b in items], [0] * len(items), refs,
                                [video.object_id], [int(video.cached.frame_ids[i]) for i in idx])

    def _collate(self, queries, boxes, ref_index, refsets, object_ids, frame_ids) -> dict[str, torch.Tensor]:
        size = self.cfg.img_size
        b = len(queries)
        box_t = torch.zeros(b, 1, 4)
        mask = torch.zeros(b, 1, dtype=torch.bool)
        for i, box in enumerate(boxes):
            if box is not None:
                box_t[i, 0] = torch.from_numpy(box)
                mask[i, 0] = True
        batch = {
            "query": to_chw(queries) if not queries or not isinstance(queries[0], RawQuery) else None,
            "references": torch.stack([to_chw(r) for r in refsets]) if refsets else torch.empty(0, dtype=torch.uint8),
            "ref_index": torch.tensor(ref_index, dtype=torch.long),
            "boxes": box_t,
            "mask": mask,
            "object_ids": torch.tensor(object_ids, dtype=torch.long),
            "frame_ids": torch.tensor(frame_ids, dtype=torch.long),
        }
        if batch["query"] is None:
            batch.update(raw_queries(queries, size))
        return batch


class EpisodeSampler(VideoSampler):
    """Episodic batches: `episodes_per_batch` episodes of n_way objects x n_query frames,
    each object with its k_shot reference set."""

    def __init__(self, videos: list[PreparedVideo], cfg: DataConfig, episodes_per_batch: int, seed: int):
        super().__init__(videos, cfg, seed)
        self.episodes_per_batch = episodes_per_batch
        # Constant per dataset: built once, not per episode or per negative query.
        self.by_obj: dict[int, list[int]] = {}
        for i in self.with_pos:
            self.by_obj.setdefault(videos[i].object_id, []).append(i)
        self.others = {v.object_id: [o for o in videos if o.object_id != v.object_id] for v in videos}


    def train_batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, epoch, index])
        rng_aug = rng if cfg.augment else None
        queries, boxes, ref_index, refsets, object_ids, sources = [], [], [], [], [], []
        n_neg = round(cfg.n_query * cfg.neg_fraction)
        for _ in range(self.episodes_per_batch):
            ways = self._choose_ways(rng)
            for vi in ways:
                video = self.videos[vi]
                r = len(refsets)
                refsets.append(self.references(video, rng_aug))
                object_ids.append(video.object_id)
                for q in range(cfg.n_query):
                    if q < cfg.n_query - n_neg and len(video.pos):
                        src, idx, target = video, int(rng.choice(video.pos)), True
                    else:
                        src, idx, target = self._negative(video, rng)
                    img, box = self.query(src, idx, target, rng_aug)
                    queries.append(img)
                    boxes.append(box)
                    ref_index.append(r)
                    sources.append(src.object_id)
        batch = self._collate(queries, boxes, ref_index, refsets, object_ids, [-1] * len(queries))
        batch["source_ids"] = torch.tensor(sources, dtype=torch.long)
        return batch

    def _choose_ways(self, rng: np.random.Generator) -> list[int]:
        """n_way videos of distinct objects where possible (every one with a positive frame)."""
        objs = list(self.by_obj)
        n = self.cfg.n_way
        chosen = rng.choice(len(objs), size=n, replace=n > len(objs))
        return [int(rng.choice(self.by_obj[objs[c]])) for c in chosen]

    def _negative(self, video: PreparedVideo, rng: np.random.Generator) -> tuple[PreparedVideo, int, bool]:
        """(source video, cached frame, keep target?) for a query without this object."""
        others = self.others[video.object_id]
        if len(video.neg) and (not others or rng.random() < 0.5):
            return video, int(rng.choice(video.neg)), False
        if others:
            other = others[int(rng.integers(len(others)))]
            pool = other.pos if len(other.pos) else np.arange(len(other.boxes))
            return other, int(rng.choice(pool)), False
        return video, int(rng.choice(video.pos)), True  # a one-object dataset: nothing else to show


class FrameSampler(VideoSampler):
    """Non-episodic stage-1 batches (`data.episodic: false`): `batch_size` frames drawn from
    every training video, each with its own video's object as the target -- a class-agnostic
    detector, trained without references. Annotated frames are drawn without replacement
    through a permutation seeded by (seed, epoch), so an epoch walks the annotated frames
    before repeating any; round(batch_size * neg_fraction) of each batch (at most all but one)
    are the videos' object-free frames, drawn at random. Validation batches are the episodic
    sampler base's (the trainer leaves their references unused). Batches are still a pure function
    of (seed, epoch, index); `references` is empty, `ref_index` and `object_ids` have length 0."""

    def __init__(self, videos: list[PreparedVideo], cfg: DataConfig, batch_size: int, seed: int):
        super().__init__(videos, cfg, seed)
        self.batch_size = batch_size
        self.pos_pairs = self._pairs(videos, "pos")
        self.neg_pairs = self._pairs(videos, "neg")
        self._order: tuple[int, np.ndarray] | None = None

    @staticmethod
    def _pairs(videos: list[PreparedVideo], kind: str) -> np.ndarray:
        """[n, 2] (video index, cached frame index) of every positive or negative frame."""
        parts = [np.stack([np.full(len(getattr(v, kind)), i), getattr(v, kind)], 1) for i, v in enumerate(videos)]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 2), np.int64)

    def positives(self, epoch: int, index: int, n: int) -> np.ndarray:
        """[n, 2] (video, cached frame) of batch `index`'s annotated frames: the next n of the
        epoch's permutation (wrapping around once the epoch has used them all)."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.pos_pairs)))
        order = self._order[1]
        return self.pos_pairs[order[(index * n + np.arange(n)) % len(order)]]

    def train_batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, epoch, index])
        n_neg = min(round(self.batch_size * cfg.neg_fraction), self.batch_size - 1) if len(self.neg_pairs) else 0
        n_pos = self.batch_size - n_neg
        picks = [*self.positives(epoch, index, n_pos), *self.neg_pairs[rng.integers(len(self.neg_pairs), size=n_neg)]]
        items = [self.query(self.videos[vi], int(i), True, rng if cfg.augment else None) for vi, i in picks]
        batch = self._collate([q for q, _ in items], [b for _, b in items], [], [], [], [-1] * len(items))
        batch["source_ids"] = torch.tensor([self.videos[vi].object_id for vi, _ in picks], dtype=torch.long)
        return batch


class TrainBatches(torch.utils.data.Dataset):
    """Every training batch of a run as one map-style dataset: item `epoch * steps + index`
    is `sampler.train_batch(epoch, index)`, a pure function of (seed, epoch, index), so a
    DataLoader gives the same batches with any number of workers, and its workers can
    persist across epochs (the epoch travels in the index, see `EpochIndices`)."""

    def __init__(self, sampler: VideoSampler, steps: int):
        self.sampler, self.steps = sampler, steps

    def __len__(self) -> int:
        return 2**62  # every epoch's indices; only those EpochIndices yields are read

    def __getitem__(self, flat_index: int) -> dict[str, torch.Tensor]:
        epoch, index = divmod(int(flat_index), self.steps)
        return self.sampler.train_batch(epoch, index)


class EpochIndices(torch.utils.data.Sampler):
    """The indices of one epoch of `TrainBatches`; set `epoch` before iterating."""

    def __init__(self, steps: int):
        self.steps, self.epoch = steps, 0

    def __iter__(self):
        return iter(range(self.epoch * self.steps, (self.epoch + 1) * self.steps))

    def __len__(self) -> int:
        return self.steps


def loader_worker_init(_: int) -> None:
    """One thread per worker for OpenCV and torch: the workers are the parallelism."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def object_identities(entries: list[VideoEntry]) -> dict[str, int]:
    return {g: i for i, g in enumerate(sorted({e.group for e in entries}))}


__all__ = ["EpochIndices", "TrainBatches", "loader_worker_init", "EpisodeSampler", "FrameSampler", "VideoSampler", "PreparedVideo", "object_identities", "prepare_videos"]
