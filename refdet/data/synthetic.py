"""A synthetic dataset in the AeroEyes on-disk format (real mp4, jpg references, annotations.json).

    python -m refdet.data.synthetic OUT [--videos 8 --frames 120 --size 320x180 --seed 0]

Each video follows one textured object (its identity: a shape and a two-colour texture)
moving over a textured, panning background, growing and shrinking, visible in 2-5 intervals.
Every frame also shows 1-3 distractors of the same families of shapes and textures; with
`--hard-negatives P` each distractor is, with probability P, another object of the dataset
(exactly as it looks in its own videos), so a detector that memorised the objects cannot tell
the target without the reference photos. The three reference photos show the object
rotated, rescaled and colour-shifted on plain backgrounds. Deterministic by seed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

STAMP = "synthetic.json"  # the recipe a generated dataset was made with
GENERATOR_VERSION = 3  # bump when the same recipe would draw different videos
SHAPES = ("ellipse", "rect", "triangle", "star", "diamond", "cross")
TEXTURES = ("stripes", "checker", "dots", "solid")


def make_sprite(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A BGRA sprite: a random shape filled with a random two-colour texture."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    while np.abs(c1.astype(int) - c2).sum() < 150:
        c2 = rng.integers(0, 256, 3)
    w = size
    h = int(size * rng.uniform(0.6, 1.0))
    yy, xx = np.mgrid[0:h, 0:w]
    period = int(rng.integers(4, 10))
    if texture == "stripes":
        pat = ((xx + yy * rng.integers(0, 2)) // period) % 2
    elif texture == "checker":
        pat = (xx // period + yy // period) % 2
    elif texture == "dots":
        pat = (((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2 < (period / 3) ** 2)
    else:
        pat = np.zeros_like(xx)
    img = np.where(pat[..., None].astype(bool), c2, c1).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    if shape == "ellipse":
        cv2.ellipse(mask, (w // 2, h // 2), (w // 2 - 1, h // 2 - 1), 0, 0, 360, 255, -1)
    elif shape == "rect":
        mask[1:-1, 1:-1] = 255
    else:
        pts = {
            "triangle": [(w // 2, 0), (w - 1, h - 1), (0, h - 1)],
            "diamond": [(w // 2, 0), (w - 1, h // 2), (w // 2, h - 1), (0, h // 2)],
            "cross": [(w // 3, 0), (2 * w // 3, 0), (2 * w // 3, h // 3), (w - 1, h // 3), (w - 1, 2 * h // 3),
                      (2 * w // 3, 2 * h // 3), (2 * w // 3, h - 1), (w // 3, h - 1), (w // 3, 2 * h // 3),
                      (0, 2 * h // 3), (0, h // 3), (w // 3, h // 3)],
            "star": [(int(w / 2 + (w / 2 - 1) * r * np.sin(a)), int(h / 2 - (h / 2 - 1) * r * np.cos(a)))
                     for a, r in zip(np.linspace(0, 2 * np.pi, 10, endpoint=False), [1, 0.45] * 5)],
        }[shape]
        cv2.fillPoly(mask, [np.array(pts, np.int32)], 255)
    cv2.rectangle(img, (0, 0), (w - 1, h - 1), tuple(int(c) for c in c2), 1)
    return np.dstack([img, mask])


def make_background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A large textured field: blurred noise plus fields and roads (drone-like)."""
    noise = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    bg = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    bg = (bg.astype(np.float32) * 0.35 + rng.uniform(40, 140, 3)).clip(0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(6, 14))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        color = tuple(int(c) for c in rng.integers(30, 200, 3))
        if rng.random() < 0.5:
            cv2.rectangle(bg, (x, y), (x + int(rng.integers(30, 200)), y + int(rng.integers(30, 120))), color, -1)
        else:
            cv2.line(bg, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), color, int(rng.integers(2, 8)))
    return cv2.GaussianBlur(bg, (3, 3), 0)


def transform_sprite(sprite: np.ndarray, scale: float, angle: float = 0.0) -> np.ndarray:
    h, w = sprite.shape[:2]
    nw, nh = max(2, round(w * scale)), max(2, round(h * scale))
    out = cv2.resize(sprite, (nw, nh), interpolation=cv2.INTER_LINEAR)
    if angle:
        diag = int(np.ceil(np.hypot(nw, nh)))
        m = cv2.getRotationMatrix2D((nw / 2, nh / 2), angle, 1.0)
        m[:, 2] += [(diag - nw) / 2, (diag - nh) / 2]
        out = cv2.warpAffine(out, m, (diag, diag), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
    return out


def paste(frame: np.ndarray, sprite: np.ndarray, x: int, y: int) -> tuple[int, int, int, int] | None:
    """Alpha-blend sprite with its top-left at (x, y); returns the tight visible box or None."""
    fh, fw = frame.shape[:2]
    sh, sw = sprite.shape[:2]
    x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + sw, fw), min(y + sh, fh)
    if x2 <= x1 or y2 <= y1:
        return None
    crop = sprite[y1 - y : y2 - y, x1 - x : x2 - x]
    alpha = crop[..., 3:4].astype(np.float32) / 255.0
    region = frame[y1:y2, x1:x2]
    region[:] = (crop[..., :3] * alpha + region * (1 - alpha)).astype(np.uint8)
    ys, xs = np.nonzero(crop[..., 3] > 127)
    if len(xs) == 0:
        return None
    return x1 + int(xs.min()), y1 + int(ys.min()), x1 + int(xs.max()) + 1, y1 + int(ys.max()) + 1


def colour_shift(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hsv = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_BGR2HSV).astype(np.int32)
    hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-8, 9))) % 180
    hsv[..., 1:] = (hsv[..., 1:] * rng.uniform(0.75, 1.25, 2)).clip(0, 255)
    out = img.copy()
    out[..., :3] = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    return out


def visible_intervals(rng: np.random.Generator, frames: int) -> list[tuple[int, int]]:
    """2-5 disjoint [start, end) intervals, leaving gaps where the object is absent."""
    n = int(rng.integers(2, 6))
    cuts = np.sort(rng.choice(np.arange(1, frames), size=2 * n, replace=False))
    return [(int(cuts[2 * i]), int(cuts[2 * i + 1])) for i in range(n)]


def write_video(out: Path, vid: str, frames: int, size: tuple[int, int], target: np.ndarray,
                rng: np.random.Generator, object_scale: float = 0.3, others: list[np.ndarray] = (),
                hard_negatives: float = 0.0) -> dict:
    """Writes one sample folder following `target` (a BGRA sprite); returns its annotation entry.
    Each distractor is, with probability `hard_negatives`, one of `others` (the dataset's other
    objects), else a random sprite."""
    w, h = size
    sample = out / "samples" / vid
    (sample / "object_images").mkdir(parents=True, exist_ok=True)
    distractors = [_distractor(rng, others, hard_negatives) for _ in range(int(rng.integers(1, 4)))]
    bg = make_background(rng, w * 2, h * 2)
    pan0, pan1 = rng.uniform(0, [w, h], 2), rng.uniform(0, [w, h], 2)
    # Sprites are 48 px nominal; object_scale is their nominal size as a fraction of the frame
    # height (0.3: about 30-50 px in a 320x180 frame, shrinking and growing over time).
    base = object_scale * h / 48.0
    tracks = []
    for _ in range(1 + len(distractors)):
        p0, v = rng.uniform([0, 0], [w * 0.8, h * 0.8], 2), rng.uniform(-1.5, 1.5, 2) * base
        tracks.append((p0, v, rng.uniform(0, 2 * np.pi), rng.uniform(0.02, 0.08)))
    intervals = visible_intervals(rng, frames)
    visible = np.zeros(frames, bool)
    for a, b in intervals:
        visible[a:b] = True

    writer = cv2.VideoWriter(str(sample / "drone_video.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write mp4 (mp4v) here")
    boxes: dict[int, tuple[int, int, int, int]] = {}
    try:
        for f in range(frames):
            t = f / max(frames - 1, 1)
            px, py = (pan0 + (pan1 - pan0) * t).astype(int)
            frame = bg[py : py + h, px : px + w].copy()
            for k, sprite in enumerate([target, *distractors]):
                p0, v, phase, freq = tracks[k]
                pos = p0 + v * f
                pos = np.abs((pos + w) % (2 * np.array([w * 0.85, h * 0.85])) - np.array([w * 0.85, h * 0.85]))
                scale = base * (0.55 + 0.3 * np.sin(phase + freq * f))
                if k == 0 and not visible[f]:
                    continue
                box = paste(frame, transform_sprite(sprite, scale), int(pos[0]), int(pos[1]))
                if k == 0 and box is not None and (box[2] - box[0]) * (box[3] - box[1]) >= 16:
                    boxes[f] = box
            writer.write(frame)
    finally:
        writer.release()

    for i in range(3):
        ref = colour_shift(transform_sprite(target, rng.uniform(1.0, 1.6), rng.uniform(-40, 40)), rng)
        side = max(ref.shape[:2]) + int(rng.integers(8, 24))
        canvas = np.full((side, side, 3), rng.integers(90, 220, 3), np.uint8)
        paste(canvas, ref, (side - ref.shape[1]) // 2, (side - ref.shape[0]) // 2)
        cv2.imwrite(str(sample / "object_images" / f"img_{i + 1}.jpg"), canvas, [cv2.IMWRITE_JPEG_QUALITY, 95])

    runs, cur = [], []
    for f in sorted(boxes):
        if cur and f != cur[-1] + 1:
            runs.append(cur)
            cur = []
        cur.append(f)
    if cur:
        runs.append(cur)
    return {"video_id": vid, "annotations": [
        {"bboxes": [dict(frame=f, x1=boxes[f][0], y1=boxes[f][1], x2=boxes[f][2], y2=boxes[f][3]) for f in run]}
        for run in runs]}


def _distractor(rng: np.random.Generator, others: list[np.ndarray], hard_negatives: float) -> np.ndarray:
    # No extra draw when hard_negatives is 0: such datasets draw the same videos as before the knob.
    if hard_negatives > 0 and len(others) and rng.random() < hard_negatives:
        return others[int(rng.integers(len(others)))]
    return make_sprite(rng)


def generate(out: str | os.PathLike, videos: int = 8, frames: int = 120, size: tuple[int, int] = (320, 180),
             seed: int = 0, scenes: int = 2, object_scale: float = 0.3, first_scene: int = 0,
             hard_negatives: float = 0.0) -> Path:
    """Write the dataset to `out` atomically (built in a temp folder beside it, then renamed).
    Videos come in groups of `scenes` (`<cat>_0`, `<cat>_1`, ...: the same object identity in
    different scenes, like the real data's pairs). An object's identity depends on (seed, cat)
    only and a scene on (seed, cat, k): a dataset made with `first_scene` = 2 shows the same
    objects as one made with the default, in scenes that one does not have (a held-out
    validation set of seen objects). `hard_negatives`: the probability that a distractor is
    another object of the dataset (one of the other categories' targets)."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        entries = []
        # The object's identity comes from the category's stream, the scene from the video's.
        objects = [make_sprite(np.random.default_rng([seed, cat])) for cat in range(-(-videos // scenes))]
        for i in range(videos):
            cat, k = i // scenes, first_scene + i % scenes
            scene = np.random.default_rng([seed, cat, k, 1])
            others = objects[:cat] + objects[cat + 1:]
            entries.append(write_video(tmp, f"obj{cat:03d}_{k}", frames, size, objects[cat], scene, object_scale,
                                       others, hard_negatives))
        (tmp / "annotations").mkdir()
        (tmp / "annotations" / "annotations.json").write_text(json.dumps(entries))
        (tmp / STAMP).write_text(json.dumps(recipe(videos, frames, size, seed, scenes, object_scale, first_scene,
                                                   hard_negatives)))
        try:
            os.replace(tmp, out)
        except OSError:
            if out.exists():  # another process finished the same dataset first
                raise FileExistsError(f"{out}: already exists") from None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_dataset(data) -> bool:
    """Generate the synthetic dataset a `DataConfig` with `synthetic: true` names, if missing:
    `root` (objects in `synthetic_scenes` scenes each) and, with `synthetic_val_scenes`,
    `val_root` (the same objects in that many new scenes). Safe when several processes call it
    at once. Returns True if this call wrote either."""
    if not data.synthetic:
        return False
    wrote = False
    for root, p in _plan(data):
        wrote |= _generate_once(root, **p)
    return wrote


def recipe(videos: int, frames: int, size: tuple[int, int], seed: int, scenes: int, object_scale: float,
           first_scene: int, hard_negatives: float = 0.0) -> dict:
    """What a generated dataset was made with (written to <root>/synthetic.json)."""
    return {"generator": GENERATOR_VERSION, "videos": videos, "frames": frames, "size": list(size), "seed": seed,
            "scenes": scenes, "object_scale": object_scale, "first_scene": first_scene,
            "hard_negatives": hard_negatives}


def _plan(data) -> list[tuple[str, dict]]:
    """(root, recipe) of each dataset `data` generates: root, and val_root with validation scenes."""
    size, scenes, hard = parse_size(data.synthetic_size), data.synthetic_scenes, data.synthetic_hard_negatives
    plan = [(data.root, dict(videos=data.synthetic_videos, scenes=scenes, first_scene=0))]
    if data.synthetic_val_scenes and data.val_root:
        objects = -(-data.synthetic_videos // scenes)
        plan.append((data.val_root, dict(videos=objects * data.synthetic_val_scenes, scenes=data.synthetic_val_scenes,
                                         first_scene=scenes)))
    return [(root, dict(p, frames=data.synthetic_frames, size=size, object_scale=data.synthetic_object_scale,
                        hard_negatives=hard)) for root, p in plan]


def check_recipes(data) -> None:
    """Raise DatasetError where a generated dataset of `data` exists with another recipe."""
    for root, p in _plan(data):
        _check_recipe(root, **p)


def _check_recipe(root: str, videos: int, frames: int, size: tuple[int, int], object_scale: float,
                  scenes: int = 2, first_scene: int = 0, hard_negatives: float = 0.0) -> None:
    """An existing `root` must have been made with this recipe (a preset whose synthetic
    settings changed must not train on the old data silently)."""
    if not Path(root).exists():
        return
    want = recipe(videos, frames, size, 0, scenes, object_scale, first_scene, hard_negatives)
    try:
        have = json.loads((Path(root) / STAMP).read_text())
    except (OSError, ValueError):
        have = None
    if have != want:
        from refdet.data.aeroeyes import DatasetError

        made = f"made with {have}" if have else f"has no {STAMP} (made by an older version, or not generated)"
        raise DatasetError(Path(root), [f"the synthetic dataset here {made}; the config asks for {want}: "
                                        f"delete {root} to generate it again, or point data.root/val_root elsewhere"])


def _generate_once(root: str, videos: int, frames: int, size: tuple[int, int], object_scale: float,
                   scenes: int = 2, first_scene: int = 0, hard_negatives: float = 0.0) -> bool:
    """Generate `root` unless it exists (then it must have been made with this recipe)."""
    if Path(root).exists():
        _check_recipe(root, videos, frames, size, object_scale, scenes, first_scene, hard_negatives)
        return False
    try:
        generate(root, videos, frames, size, seed=0, scenes=scenes, object_scale=object_scale,
                 first_scene=first_scene, hard_negatives=hard_negatives)
    except FileExistsError:  # another process finished it first
        return False
    return True


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected WxH, e.g. 320x180") from None
    if not (32 <= w <= 4096 and 32 <= h <= 4096):
        raise argparse.ArgumentTypeError(f"size {text!r}: each side must be 32-4096 px")
    return w, h


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m refdet.data.synthetic", description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output folder (must not exist)")
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--size", type=parse_size, default=(320, 180), help="WxH (default 320x180)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenes", type=int, default=2, help="videos per object (default 2: <cat>_0, <cat>_1)")
    ap.add_argument("--first-scene", type=int, default=0,
                    help="number of the first scene: 2 makes new scenes of the objects a default run makes")
    ap.add_argument("--object-scale", type=float, default=0.3,
                    help="nominal object size as a fraction of the frame height (default 0.3)")
    ap.add_argument("--hard-negatives", type=float, default=0.0, metavar="P",
                    help="probability that a distractor is another object of the dataset (default 0)")
    args = ap.parse_args(argv)
    if (args.videos < 2 or args.frames < 12 or not 0.05 <= args.object_scale <= 0.9 or args.scenes < 1
            or args.first_scene < 0 or not 0 <= args.hard_negatives <= 1):
        print("error: --videos must be >= 2, --frames >= 12, --object-scale in [0.05, 0.9], --scenes >= 1, "
              "--first-scene >= 0, --hard-negatives in [0, 1]", file=sys.stderr)
        return 2
    try:
        out = generate(args.out, args.videos, args.frames, args.size, args.seed, scenes=args.scenes,
                       object_scale=args.object_scale, first_scene=args.first_scene,
                       hard_negatives=args.hard_negatives)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.videos} videos x {args.frames} frames ({args.size[0]}x{args.size[1]}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
