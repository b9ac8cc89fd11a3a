"""Input-pipeline benchmark: query images/s the CPU side delivers, against a floor and the model.

    python benchmarks/bench_loader.py [--workers 1 2] [--batches 6] [--out benchmarks/out/bench_loader.json]

For the stage2 settings (640 px queries, 160 px references, 4-way x 4-query, batch 32, frames
1280x720 from the frame cache) and the smoke settings, in one run:
  pipeline/core   `sampler.train_batch` in this process, OpenCV and torch at one thread, as a
                  CUDA trial runs it (frames shipped unwarped: the device warps and jitters
                  them); pipeline_cv2 the same with the augmentation in cv2 (the CPU path)
  floor/core      one cv2.warpAffine of each cached frame to the query size + the stack into a
                  batch: the least any CPU-side augmentation can cost
  workers N       the trainer's DataLoader with N spawned workers (on this CPU-only machine:
                  the cv2 path; a CUDA trial with resources.cpu = N + 1 gets N workers)
  model           the trainer's own training images/s on this machine's device (CPU here;
                  the GPU where one is visible), batch 8
and a CPU-only smoke step with the query augmentation as tensor ops against cv2 in the
loader (data.augment_on_device true / false), timed in alternation.
Prints a table and writes JSON; measured, never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from refdet.config import TrainConfig  # noqa: E402
from refdet.data.episodes import EpisodeSampler  # noqa: E402
from refdet.data.synthetic import generate  # noqa: E402
from refdet.engine.trainer import Trainer  # noqa: E402

SETTINGS = {
    "stage2": {"data.img_size": 640, "data.ref_size": 160, "data.n_way": 4, "data.n_query": 4, "batch_size": 32,
               "size": (1280, 720)},
    "smoke": {"data.img_size": 160, "data.ref_size": 64, "data.n_way": 2, "data.n_query": 4, "batch_size": 8,
              "size": (320, 180)},
}


def dataset(root: Path, size: tuple[int, int]) -> Path:
    folder = root / f"bench_{size[0]}x{size[1]}"
    if not (folder / "annotations" / "annotations.json").is_file():
        generate(folder, videos=8, frames=48, size=size, seed=0)
    return folder


def trainer(root: Path, name: str, **over) -> Trainer:
    s = {k: v for k, v in SETTINGS[name].items() if k != "size"}
    cfg = TrainConfig.preset("smoke").with_overrides({
        "data.root": str(dataset(root, SETTINGS[name]["size"])), "data.val_max_frames": 8, "health.enabled": False,
        "steps_per_epoch": 1000, **s, **over})
    return Trainer(cfg, tensorboard=False)


def per_second(fn, n: int, images: int) -> float:
    fn(0)  # warm-up (page cache, lazy init)
    times = []
    for i in range(1, n + 1):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return images / statistics.median(times)


def floor_fn(t: Trainer):
    """One warpAffine per cached frame to the query size, then the stack into a batch."""
    size = t.cfg.data.img_size
    frames = [v.cached.frames for v in t.train_videos]
    per_batch = t.cfg.episodes_per_batch * t.cfg.data.n_way * t.cfg.data.n_query if t.cfg.data.episodic \
        else t.cfg.batch_size
    rng = np.random.default_rng(0)

    def run(_):
        imgs = []
        for _ in range(per_batch):
            f = frames[rng.integers(len(frames))]
            img = np.asarray(f[rng.integers(len(f))])
            s = size / max(img.shape[:2])
            m = np.array([[s, 0, 0], [0, s, 0]], np.float32)
            imgs.append(cv2.warpAffine(img, m, (size, size), borderValue=(114, 114, 114)))
        torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()

    return run, per_batch


def measure(root: Path, name: str, batches: int, workers: list[int]) -> dict:
    """The CPU side as the trainer runs it (augmentation on the device by default)."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    t = trainer(root, name, num_threads=1, **{"data.num_workers": 0})
    floor, images = floor_fn(t)
    # The CPU side as a CUDA trial runs it: frames shipped unwarped (the device warps them).
    on_device = EpisodeSampler(t.train_videos, replace(t.sampler.cfg, augment_on_device=True),
                               t.cfg.episodes_per_batch, t.cfg.seed)
    out = {"setting": name, "images_per_batch": images,
           "pipeline_per_core": per_second(lambda i: on_device.train_batch(0, i), batches, images),
           "pipeline_cv2_per_core": per_second(lambda i: t.sampler.train_batch(0, i), batches, images),
           "floor_per_core": per_second(floor, batches, images)}
    out["pipeline_over_floor"] = out["floor_per_core"] / out["pipeline_per_core"]
    t.close()
    for n in workers:
        t = trainer(root, name, num_threads=1, **{"data.num_workers": n})
        it = iter(t.loader(0))
        next(it)  # workers started
        t0 = time.perf_counter()
        for _ in range(batches * n):
            next(it)
        out[f"workers_{n}"] = images * batches * n / (time.perf_counter() - t0)
        t.close()
    torch.set_num_threads(torch.get_num_threads() if torch.cuda.is_available() else 2)
    t = trainer(root, name, **{"data.num_workers": 0, "batch_size": 8, "device": "auto"})
    batch = t.sampler.train_batch(0, 0)
    per = t.cfg.episodes_per_batch * t.cfg.data.n_way * t.cfg.data.n_query
    out["model_device"] = str(t.device)
    out["model_train_images_per_s"] = per_second(lambda i: t.train_step(batch), 2, per)
    t.close()
    return out


def smoke_step_on_cpu(root: Path, rounds: int) -> dict:
    """A CPU-only smoke training step (loading the batch included) with the augmentation on
    the device (here: the CPU, as tensor ops) against cv2 in the loader, timed in alternation."""
    torch.set_num_threads(2)
    cv2.setNumThreads(2)
    trainers = {on: trainer(root, "smoke", device="cpu", num_threads=2, **{"data.num_workers": 0,
                                                                             "data.augment_on_device": on})
                for on in (True, False)}
    times = {True: [], False: []}
    for r in range(rounds + 1):
        for on, t in trainers.items():
            t0 = time.perf_counter()
            t.train_step(t.sampler.train_batch(0, r))
            if r:  # round 0 warms up
                times[on].append(time.perf_counter() - t0)
    for t in trainers.values():
        t.close()
    dev, cpu = statistics.median(times[True]), statistics.median(times[False])
    return {"step_s_augment_on_device": dev, "step_s_augment_cv2": cpu, "slowdown_pct": 100 * (dev / cpu - 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=["stage2", "smoke"], choices=sorted(SETTINGS))
    ap.add_argument("--workers", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--data", default="datasets/bench", help="where the benchmark datasets are generated")
    ap.add_argument("--smoke-rounds", type=int, default=8, help="alternated smoke steps per variant (0: skip)")
    ap.add_argument("--out", default="benchmarks/out/bench_loader.json")
    args = ap.parse_args(argv)
    rows = [measure(Path(args.data), s, args.batches, args.workers) for s in args.settings]
    cols = ["pipeline_per_core", "pipeline_cv2_per_core", "floor_per_core", "pipeline_over_floor",
            *[f"workers_{n}" for n in args.workers], "model_train_images_per_s"]
    print("setting  " + "  ".join(f"{c:>22}" for c in cols) + "  (query images/s)")
    for r in rows:
        print(f"{r['setting']:8} " + "  ".join(f"{r[c]:22.1f}" for c in cols) + f"  model on {r['model_device']}")
    smoke = smoke_step_on_cpu(Path(args.data), args.smoke_rounds) if args.smoke_rounds else {}
    if smoke:
        print(f"smoke step on the CPU: {smoke['step_s_augment_on_device'] * 1000:.0f} ms with the augmentation as "
              f"tensor ops, {smoke['step_s_augment_cv2'] * 1000:.0f} ms with cv2 ({smoke['slowdown_pct']:+.1f} %)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows, "smoke_cpu_step": smoke},
                                         indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
