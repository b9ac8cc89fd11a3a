"""Dataset index for the AeroEyes (Zalo AI Challenge 2025) video format, with validation.

    <root>/samples/<video_id>/drone_video.mp4
    <root>/samples/<video_id>/object_images/img_1.jpg .. img_K.jpg
    <root>/annotations/annotations.json

Validation policy (the trainer uses the same code at start-up):
  errors (the dataset is refused, every problem listed): missing/unreadable/non-video files,
  too few or unreadable reference images, annotations that are not JSON or not the schema,
  video ids that are unsafe (could escape the root) or have no sample folder, boxes with
  x2 <= x1 or y2 <= y1 or lying wholly outside the frame, frames at or beyond the video's
  frame count, non-finite numbers.
  warnings (counted, reported, the item named): duplicate frames (deduplicated, last wins),
  boxes partly outside the frame (clipped to it), sample folders with no annotation entry
  (excluded from the dataset).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAX_LISTED = 25  # problems listed in an error message; the rest are counted


class DatasetError(ValueError):
    """The dataset cannot be used; `problems` lists every error found."""

    def __init__(self, root: Path, problems: list[str]):
        self.root, self.problems = root, problems
        shown = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        super().__init__(f"dataset {root}: {len(problems)} problem(s)\n  {shown}{more}")


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    width: int
    height: int
    fps: float


@dataclass
class VideoEntry:
    """One sample. boxes: frame (0-based) -> (x1, y1, x2, y2) px in the video's resolution."""

    video_id: str
    video_path: Path
    ref_paths: tuple[Path, ...]
    boxes: dict[int, tuple[float, float, float, float]]
    num_intervals: int
    info: VideoInfo

    @property
    def group(self) -> str:
        """`<cat>_0` and `<cat>_1` show the same object: they share a group (split and identity)."""
        return re.sub(r"_\d+$", "", self.video_id)


@dataclass
class DatasetSummary:
    warnings: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


@dataclass
class AeroEyesDataset:
    root: Path
    videos: list[VideoEntry]
    summary: DatasetSummary

    def describe(self) -> str:
        boxes = [b for v in self.videos for b in v.boxes.values()]
        sizes = sorted(math.sqrt(max(b[2] - b[0], 0) * max(b[3] - b[1], 0)) for b in boxes)
        frames = sum(v.info.num_frames for v in self.videos)
        c = self.summary.counts
        lines = [
            f"dataset {self.root}",
            f"  videos: {len(self.videos)} ({len({v.group for v in self.videos})} objects)",
            f"  frames: {frames} in all; annotated frames (boxes): {len(boxes)}",
            f"  intervals: {sum(v.num_intervals for v in self.videos)}",
            f"  duplicate frames removed: {c['duplicate_frames']}",
            f"  boxes clipped to the frame: {c['boxes_clipped']}",
            f"  sample folders without annotations (excluded): {c['unannotated_samples']}",
        ]
        if sizes:
            pick = lambda q: sizes[min(len(sizes) - 1, int(q * len(sizes)))]  # noqa: E731
            lines.append(f"  box size sqrt(w*h) px: min {sizes[0]:.1f}, median {pick(0.5):.1f}, "
                         f"p95 {pick(0.95):.1f}, max {sizes[-1]:.1f}")
        for w in self.summary.warnings[:MAX_LISTED]:
            lines.append(f"  warning: {w}")
        if len(self.summary.warnings) > MAX_LISTED:
            lines.append(f"  ... and {len(self.summary.warnings) - MAX_LISTED} more warnings")
        return "\n".join(lines)


def probe_video(path: Path) -> VideoInfo:
    """Open with OpenCV and decode the first frame; raises ValueError with the reason."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ValueError("cannot be opened as a video")
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        ok, frame = cap.read()
        if not ok or frame is None:
            raise ValueError("has no decodable frame (not a video, or corrupt)")
        if n <= 0:
            raise ValueError("reports no frames")
        h, w = frame.shape[:2]
        return VideoInfo(n, w, h, float(cap.get(cv2.CAP_PROP_FPS) or 0.0))
    finally:
        cap.release()


def reference_paths(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file()),
                  key=lambda p: (len(p.stem), p.stem))


def _finite_numbers(values: list) -> bool:
    """All ints or floats (not bools, not strings), all finite (an int of hundreds of digits,
    which JSON allows, counts as not finite: it has no float). On the hot path of indexing,
    one call per box: type checks, and ``v - v == 0`` is false for inf and NaN."""
    for v in values:
        t = type(v)
        if not ((t is float and v - v == 0) or (t is int and -1e300 < v < 1e300)):
            return False
    return True


def _parse_entry(item: object, i: int, ann: Path, problems: list[str]) -> tuple[str, list[list[dict]]] | None:
    if not isinstance(item, dict):
        problems.append(f"{ann}: entry {i}: expected an object, got {type(item).__name__}")
        return None
    vid = item.get("video_id")
    if not isinstance(vid, str):
        problems.append(f"{ann}: entry {i}: 'video_id' missing or not a string")
        return None
    if not SAFE_ID.match(vid) or vid in (".", ".."):
        problems.append(f"{ann}: entry {i}: video_id {vid!r} is not a safe folder name (letters, digits, _ . -)")
        return None
    intervals = item.get("annotations")
    if not isinstance(intervals, list):
        problems.append(f"{ann}: video {vid}: 'annotations' missing or not a list")
        return None
    out = []
    for j, iv in enumerate(intervals):
        bboxes = iv.get("bboxes") if isinstance(iv, dict) else None
        if not isinstance(bboxes, list):
            problems.append(f"{ann}: video {vid}: interval {j}: 'bboxes' missing or not a list")
            continue
        out.append(bboxes)
    return vid, out


def _collect_boxes(vid: str, intervals: list[list[dict]], info: VideoInfo | None, ann: Path,
                   problems: list[str], summary: DatasetSummary) -> dict[int, tuple[float, ...]]:
    boxes: dict[int, tuple[float, ...]] = {}

    def at(frame: int) -> str:  # formatted only for a problem: this loop sees every box
        return f"{ann}: video {vid}, frame {frame}"

    for j, bboxes in enumerate(intervals):
        for b in bboxes:
            if not isinstance(b, dict):
                problems.append(f"{ann}: video {vid}: interval {j}: a box is not an object")
                continue
            f = b.get("frame")
            vals = [b.get("x1"), b.get("y1"), b.get("x2"), b.get("y2")]
            if type(f) is not int or f < 0:
                problems.append(f"{ann}: video {vid}: interval {j}: frame {f!r} is not a non-negative integer")
                continue
            if not _finite_numbers(vals):
                problems.append(f"{at(f)}: x1/y1/x2/y2 must all be finite numbers (got {vals})")
                continue
            x1, y1, x2, y2 = float(vals[0]), float(vals[1]), float(vals[2]), float(vals[3])
            if x2 <= x1 or y2 <= y1:
                problems.append(f"{at(f)}: box {vals} has x2<=x1 or y2<=y1 (rejected)")
                continue
            if info is not None:
                if f >= info.num_frames:
                    problems.append(f"{at(f)}: beyond the video's {info.num_frames} frames")
                    continue
                cx1, cy1 = max(x1, 0.0), max(y1, 0.0)
                cx2, cy2 = min(x2, float(info.width)), min(y2, float(info.height))
                if cx2 <= cx1 or cy2 <= cy1:
                    problems.append(f"{at(f)}: box {vals} lies outside the "
                                    f"{info.width}x{info.height} frame (rejected)")
                    continue
                if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
                    summary.counts["boxes_clipped"] += 1
                    if summary.counts["boxes_clipped"] <= 5:
                        summary.warnings.append(f"{at(f)}: box {vals} partly outside the "
                                                f"frame, clipped")
                x1, y1, x2, y2 = cx1, cy1, cx2, cy2
            if f in boxes:
                summary.counts["duplicate_frames"] += 1
            boxes[f] = (x1, y1, x2, y2)  # last wins
    return boxes


def load_dataset(root: str | os.PathLike, min_refs: int = 1) -> AeroEyesDataset:
    """Index and validate a dataset; raises DatasetError listing every problem."""
    root = Path(root)
    problems: list[str] = []
    summary = DatasetSummary()
    ann = root / "annotations" / "annotations.json"
    samples = root / "samples"
    if not root.is_dir():
        raise DatasetError(root, [f"{root}: {'not a folder' if root.exists() else 'dataset folder not found'}"])
    if not samples.is_dir():
        problems.append(f"{samples}: folder not found")
    try:
        with open(ann, "rb") as fh:
            raw = json.load(fh)
    except FileNotFoundError:
        raise DatasetError(root, problems + [f"{ann}: file not found"]) from None
    except (OSError, ValueError) as exc:
        raise DatasetError(root, problems + [f"{ann}: not valid JSON ({exc})"]) from None
    if not isinstance(raw, list):
        raise DatasetError(root, problems + [f"{ann}: expected a list of videos, got {type(raw).__name__}"])

    parsed: dict[str, list[list[dict]]] = {}
    for i, item in enumerate(raw):
        entry = _parse_entry(item, i, ann, problems)
        if entry is None:
            continue
        vid, intervals = entry
        if vid in parsed:
            problems.append(f"{ann}: video {vid}: listed more than once (each video must appear once)")
            continue
        parsed[vid] = intervals

    videos = []
    for vid, intervals in parsed.items():
        folder = samples / vid
        video = folder / "drone_video.mp4"
        info = None
        if not folder.is_dir():
            problems.append(f"{folder}: video {vid} is annotated but has no sample folder")
        elif not video.is_file():
            problems.append(f"{video}: video {vid}: drone_video.mp4 not found")
        else:
            try:
                info = probe_video(video)
            except ValueError as exc:
                problems.append(f"{video}: video {vid}: {exc}")
        refs = reference_paths(folder / "object_images")
        bad_refs = [p for p in refs if cv2.imread(str(p)) is None]
        for p in bad_refs:
            problems.append(f"{p}: video {vid}: reference image cannot be read")
        if folder.is_dir() and len(refs) - len(bad_refs) < min_refs:
            problems.append(f"{folder / 'object_images'}: video {vid}: {len(refs) - len(bad_refs)} readable "
                            f"reference image(s), need at least {min_refs}")
        boxes = _collect_boxes(vid, intervals, info, ann, problems, summary)
        if info is not None:
            videos.append(VideoEntry(vid, video, tuple(refs), boxes, len(intervals), info))

    if samples.is_dir():
        for folder in sorted(samples.iterdir()):
            if folder.is_dir() and folder.name not in parsed:
                summary.counts["unannotated_samples"] += 1
                summary.warnings.append(f"{folder}: sample folder has no annotation entry; excluded")
    if summary.counts["duplicate_frames"]:
        summary.warnings.append(f"{ann}: {summary.counts['duplicate_frames']} duplicate frame(s) removed (last wins)")
    if problems:
        raise DatasetError(root, problems)
    if not videos:
        raise DatasetError(root, [f"{ann}: no annotated videos"])
    return AeroEyesDataset(root, videos, summary)


def split_by_group(videos: list[VideoEntry], val_fraction: float, seed: int,
                   by: str = "group") -> tuple[list[VideoEntry], list[VideoEntry]]:
    """Train/val split by object group (so `<cat>_0`/`<cat>_1` never straddle it), or with
    by="video" by single videos; at least one unit on each side when there are two or more."""
    import random

    key = (lambda v: v.group) if by == "group" else (lambda v: v.video_id)
    groups = sorted({key(v) for v in videos})
    random.Random(seed).shuffle(groups)
    n_val = min(len(groups) - 1, max(1, round(len(groups) * val_fraction))) if len(groups) > 1 else 0
    val_groups = set(groups[:n_val])
    return [v for v in videos if key(v) not in val_groups], [v for v in videos if key(v) in val_groups]
