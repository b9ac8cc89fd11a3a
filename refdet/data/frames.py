"""Decodes the frames a run needs from each video once, into an on-disk frame cache.

The cache holds, per video and frame selection, one ``.npy`` file of uint8 frames
[n, h, w, 3] (RGB, resized so the longer side is ``max_side`` px) and a JSON sidecar with
the frame numbers and the scale. Files are written to a temp name and renamed, so several
processes (Ray trials on one node) can fill the cache at once and readers never see half a
file. The key hashes the video's path, size and modification time and the selection, so a
changed video is decoded again. Reading is a memory map: trials on one node share the pages.

Which frames (documented policy, used by `episodes.py`):
  train: every annotated frame (or `max_frames_per_video` of them, evenly spaced) plus
         `neg_frames_per_video` frames without the object, evenly spaced over the video;
  val:   every `val_frame_stride`-th frame of the video, annotated or not (capped at
         `val_max_frames`, evenly spaced), so ST-IoU sees false positives on empty frames.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from refdet.data.aeroeyes import VideoEntry
from refdet.io import atomic_path

CACHE_VERSION = 1


class CacheError(ValueError):
    """The frame cache cannot be written (a read-only dataset folder, a full disk)."""


@dataclass
class CachedFrames:
    """frames [n, h, w, 3] uint8 RGB (memory-mapped); frame_ids [n] video frame numbers;
    scale: cached px per video px; missing: requested frames the video could not deliver."""

    frames: np.ndarray
    frame_ids: np.ndarray
    scale: float
    missing: int
    path: str = ""  # the .npy the frames are mapped from

    def __getstate__(self) -> dict:
        """Pickled (to a DataLoader worker) as the file path, not the pixels: the worker maps
        the same file."""
        state = dict(self.__dict__)
        if self.path:
            state["frames"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.frames is None:
            self.frames = np.load(self.path, mmap_mode="r")


def evenly(items: list[int], n: int) -> list[int]:
    """At most n items, evenly spaced (all of them when n <= 0 or n >= len)."""
    if n <= 0 or n >= len(items):
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def train_frames(entry: VideoEntry, max_pos: int, n_neg: int) -> list[int]:
    pos = evenly(sorted(entry.boxes), max_pos)
    negatives = [f for f in range(entry.info.num_frames) if f not in entry.boxes]
    return sorted(set(pos) | set(evenly(negatives, n_neg)))


def val_frames(entry: VideoEntry, stride: int, cap: int) -> list[int]:
    return evenly(list(range(0, entry.info.num_frames, max(1, stride))), cap)


class FrameCache:
    def __init__(self, cache_dir: str | os.PathLike, max_side: int):
        self.dir = Path(cache_dir)
        self.max_side = max_side

    def key(self, entry: VideoEntry, frames: list[int]) -> str:
        st = entry.video_path.stat()
        h = hashlib.sha1()
        h.update(json.dumps([CACHE_VERSION, str(entry.video_path.resolve()), st.st_size, st.st_mtime_ns,
                             self.max_side]).encode())
        h.update(np.asarray(frames, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def get(self, entry: VideoEntry, frames: list[int]) -> CachedFrames:
        key = self.key(entry, frames)
        folder = self.dir / entry.video_id
        data, meta = folder / f"{key}.npy", folder / f"{key}.json"
        if not (data.is_file() and meta.is_file()):
            try:
                self._fill(entry, frames, data, meta)
            except OSError as exc:
                raise CacheError(f"{folder}: cannot write the frame cache of video {entry.video_id} ({exc}); "
                                 f"set data.cache_dir to a writable folder") from None
        info = json.loads(meta.read_text())
        arr = np.load(data, mmap_mode="r")
        return CachedFrames(arr, np.asarray(info["frame_ids"], dtype=np.int64), info["scale"], info["missing"], str(data))

    def _fill(self, entry: VideoEntry, frames: list[int], data: Path, meta: Path) -> None:
        folder = data.parent
        folder.mkdir(parents=True, exist_ok=True)
        w, h = entry.info.width, entry.info.height
        scale = min(1.0, self.max_side / max(w, h))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        wanted = set(frames)
        out = np.empty((len(frames), size[1], size[0], 3), np.uint8)
        got: list[int] = []
        cap = cv2.VideoCapture(str(entry.video_path))
        try:
            last = max(frames) if frames else -1
            f = 0
            # Sequential grab() is the cheap path through a compressed stream; only the
            # wanted frames are decoded (retrieve) and resized.
            while f <= last and cap.grab():
                if f in wanted:
                    ok, img = cap.retrieve()
                    if ok and img is not None:
                        if img.shape[1] != size[0] or img.shape[0] != size[1]:
                            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
                        out[len(got)] = img[..., ::-1]
                        got.append(f)
                f += 1
        finally:
            cap.release()
        # The inner (data) is renamed first: a meta file always has its data beside it.
        with atomic_path(meta) as tmp_meta, atomic_path(data) as tmp_data:
            with open(tmp_data, "wb") as fh:
                np.save(fh, out[: len(got)])
            tmp_meta.write_text(json.dumps({"video": str(entry.video_path), "frame_ids": got, "scale": scale,
                                            "missing": len(frames) - len(got)}))


def load_reference_images(entry: VideoEntry, k: int, max_side: int) -> list[np.ndarray]:
    """The first k readable reference photos, RGB uint8, longer side at most max_side px."""
    out = []
    for p in entry.ref_paths:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            continue
        s = min(1.0, max_side / max(img.shape[:2]))
        if s < 1.0:
            img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        out.append(np.ascontiguousarray(img[..., ::-1]))
        if len(out) == k:
            break
    return out
