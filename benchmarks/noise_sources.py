"""Where does the noise in a trial's value come from: the validation set or the training seed?

    python benchmarks/noise_sources.py run --config smoke --seeds 0 1 --out benchmarks/out/noise/default
    python benchmarks/noise_sources.py run --config smoke --seeds 2 3 --out benchmarks/out/noise/default  # a 2nd core
    python benchmarks/noise_sources.py analyse benchmarks/out/noise/default [--json out.json]

`run` trains one configuration (a preset or TrainConfig YAML, `--set` overrides) with each
seed, and after every epoch scores the weights on a large *pool* of validation videos: the
dataset's objects in scenes it does not have (`refdet.data.synthetic`, `first_scene` 2;
generated once into `--pool`). It keeps every video's per-frame ground truth and top box, so
ST-IoU can be recomputed offline for any subset of videos or frames. The run's own validation
set is not used (the pool replaces it); training is exactly the configuration's.

`analyse` reads those files and, per epoch, splits the variance of the per-video ST-IoU
F[seed, video] two ways (no replication): the seed's main effect (training noise: how far
one seed's model is from another's on average over videos) and the seed x video interaction
(what a finite validation set adds: which videos a model happens to get right). From them:

  eval noise (n)      std of the mean ST-IoU of the *same weights* over disjoint sets of n
                      pool videos (measured directly, mean over seeds)
  seed std at n       the std over seeds a search sees with a fixed validation set of n
                      videos: sqrt(train var + interaction var / n)
  training noise      the seed std with an infinite validation set: sqrt(train var)

and the same for every second validation frame (frames per video halved).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZES = (4, 8, 16, 32, 64)


def pool_videos(trainer, pool: Path):
    """The pool, prepared like the trainer's validation videos (frames cached at its img_size)."""
    from refdet.data.aeroeyes import load_dataset
    from refdet.data.episodes import object_identities, prepare_videos
    from refdet.data.frames import FrameCache

    d = trainer.cfg.data
    ds = load_dataset(pool, min_refs=d.k_shot)
    return prepare_videos(ds.videos, d, FrameCache(pool / ".frame_cache", d.img_size), "val",
                          object_identities(ds.videos))


def ensure_pool(cfg, pool: Path, scenes: int) -> Path:
    """New scenes of the objects of the config's synthetic dataset: neither its training nor
    its validation scenes."""
    from refdet.data.synthetic import generate, parse_size

    if not pool.exists():
        d = cfg.data
        objects = -(-d.synthetic_videos // d.synthetic_scenes)
        generate(pool, objects * scenes, d.synthetic_frames, parse_size(d.synthetic_size), seed=0, scenes=scenes,
                 object_scale=d.synthetic_object_scale, first_scene=d.synthetic_scenes + d.synthetic_val_scenes,
                 hard_negatives=d.synthetic_hard_negatives)
    return pool


def run_seed(cfg, pool: Path, out: Path) -> dict:
    from refdet.engine.trainer import Trainer

    trainer = Trainer(cfg, run_dir=None, tensorboard=False)
    trainer.val_videos = pool_videos(trainer, pool)
    epochs, t0 = [], time.time()
    try:
        while trainer.epoch < cfg.epochs:
            train_metrics, verdict = trainer.train_epoch()
            trainer.epoch += 1
            if verdict is not None:
                epochs.append({"epoch": trainer.epoch, "stop": verdict.stop_reason})
                break
            videos: list = []
            metrics = trainer.evaluate(per_video=videos)
            epochs.append({"epoch": trainer.epoch, "step": trainer.step, "time_s": round(time.time() - t0, 1),
                           **metrics, **train_metrics,
                           "videos": {vid: {"gt": {str(f): [round(x, 1) for x in b] for f, b in gt.items()},
                                            "pred": {str(f): [round(x, 1) for x in b] for f, b in pred.items()}}
                                      for vid, gt, pred in videos}})
            print(f"seed {cfg.seed} epoch {trainer.epoch}: pool ST-IoU {metrics['val/st_iou']:.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    finally:
        trainer.close()
    record = {"config": cfg.to_dict(), "seed": cfg.seed, "pool": str(pool), "epochs": epochs}
    out.mkdir(parents=True, exist_ok=True)
    from refdet.io import atomic_write_text

    atomic_write_text(out / f"seed{cfg.seed}.json", json.dumps(record))
    return record


# -- analysis --------------------------------------------------------------------------------
def video_scores(epoch: dict, frame_step: int = 1) -> dict[str, float]:
    """Per-video ST-IoU; with frame_step 2, over every second evaluated frame only."""
    from refdet.metrics import st_iou

    out = {}
    for vid, rec in epoch["videos"].items():
        frames = sorted({int(f) for f in rec["gt"]} | {int(f) for f in rec["pred"]})
        keep = set(frames) if frame_step == 1 else {f for f in frames if (f // 2) % frame_step == 0}
        gt = {f: rec["gt"][str(f)] for f in map(int, rec["gt"]) if f in keep}
        pred = {f: rec["pred"][str(f)] for f in map(int, rec["pred"]) if f in keep}
        out[vid] = st_iou(gt, pred)
    return out


def decompose(scores: list[dict[str, float]]) -> dict:
    """Two-way decomposition of F[seed, video] (seeds x videos, no replication)."""
    vids = sorted(set.intersection(*(set(s) for s in scores)))
    S, V = len(scores), len(vids)
    F = [[s[v] for v in vids] for s in scores]
    grand = statistics.fmean(x for row in F for x in row)
    seed_means = [statistics.fmean(row) for row in F]
    vid_means = [statistics.fmean(F[i][j] for i in range(S)) for j in range(V)]
    ms_seed = V * sum((m - grand) ** 2 for m in seed_means) / max(S - 1, 1)
    ss_res = sum((F[i][j] - seed_means[i] - vid_means[j] + grand) ** 2 for i in range(S) for j in range(V))
    ms_res = ss_res / max((S - 1) * (V - 1), 1)
    train_var = max(0.0, (ms_seed - ms_res) / V)
    # eval noise of the same weights: measured on disjoint sets of n pool videos (where the
    # pool holds >= 4 of them), and as video sd / sqrt(n) (a set of n videos drawn afresh)
    video_sd = statistics.fmean(statistics.stdev(r) for r in F)
    eval_measured = {}
    rng = random.Random(0)
    perms = [rng.sample(range(V), V) for _ in range(100)]  # random disjoint sets (the pool is ordered by object)
    for n in SIZES:
        k = V // n
        if k >= 4:
            eval_measured[n] = statistics.fmean(
                statistics.stdev(statistics.fmean(row[j] for j in p[i * n:(i + 1) * n]) for i in range(k))
                for row in F for p in perms)
    return {"seeds": S, "videos": V, "mean": grand, "seed_means": seed_means, "train_sd": train_var ** 0.5,
            "interaction_sd": ms_res ** 0.5, "video_sd": video_sd, "eval_sd_measured": eval_measured,
            "eval_sd": {n: video_sd / n ** 0.5 for n in SIZES},
            "seed_sd_at": {n: (train_var + ms_res / n) ** 0.5 for n in SIZES},
            "observed_seed_sd_full": statistics.stdev(seed_means) if S > 1 else 0.0}


def analyse(folder: Path) -> list[dict]:
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("seed*.json"))]
    if len(records) < 2:
        raise SystemExit(f"error: {folder}: need >= 2 seed files, found {len(records)}")
    rows = []
    n_epochs = min(len(r["epochs"]) for r in records)
    for e in range(n_epochs):
        eps = [r["epochs"][e] for r in records]
        if any("videos" not in ep for ep in eps):
            break
        for frame_step in (1, 2):
            d = decompose([video_scores(ep, frame_step) for ep in eps])
            rows.append({"epoch": e + 1, "step": eps[0]["step"], "frames": "all" if frame_step == 1 else "half", **d})
    return rows


def print_rows(rows: list[dict], folder: Path) -> None:
    r0 = rows[0]
    print(f"{folder}: {r0['seeds']} seeds, pool of {r0['videos']} videos; eval noise: video sd / sqrt(n), "
          "[measured on disjoint sets of the pool]")
    print("| epoch (steps) | frames | mean ST-IoU | training noise | seed x video sd | "
          + " | ".join(f"eval noise n={n}" for n in SIZES) + " | " + " | ".join(f"seed std n={n}" for n in SIZES)
          + " | seed std, whole pool (observed) |")
    print("|" + "---|" * (5 + 2 * len(SIZES) + 1))
    for r in rows:
        ev = [f"{r['eval_sd'][n]:.4f}" + (f" [{r['eval_sd_measured'][n]:.4f}]" if n in r["eval_sd_measured"] else "")
              for n in SIZES]
        print(f"| {r['epoch']} ({r['step']}) | {r['frames']} | {r['mean']:.3f} | {r['train_sd']:.4f} | "
              f"{r['interaction_sd']:.3f} | " + " | ".join(ev) + " | "
              + " | ".join(f"{r['seed_sd_at'][n]:.4f}" for n in SIZES) + f" | {r['observed_seed_sd_full']:.4f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train seeds, score each epoch on the pool")
    r.add_argument("--config", default="smoke")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    r.add_argument("--pool", type=Path, default=ROOT / "benchmarks" / "out" / "noise" / "pool")
    r.add_argument("--pool-scenes", type=int, default=4, help="new scenes per object in the pool")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--out", type=Path, required=True)
    a = sub.add_parser("analyse", help="variance components per epoch")
    a.add_argument("folder", type=Path)
    a.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    if args.cmd == "analyse":
        rows = analyse(args.folder)
        print_rows(rows, args.folder)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(rows, indent=1))
        return 0
    from refdet.config import ConfigError, TrainConfig, parse_set
    from refdet.data.synthetic import ensure_dataset

    try:
        cfg = TrainConfig.load(args.config).with_overrides({**parse_set(args.set), "num_threads": args.threads,
                                                            "device": "cpu"})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not cfg.data.synthetic:
        print("error: the pool is made by the synthetic generator: the config needs data.synthetic", file=sys.stderr)
        return 2
    cfg = cfg.resolve_paths()
    ensure_dataset(cfg.data)
    pool = ensure_pool(cfg, args.pool.resolve(), args.pool_scenes)
    for seed in args.seeds:
        run_seed(cfg.with_overrides({"seed": seed}), pool, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
