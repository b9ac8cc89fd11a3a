"""Trainer benchmark: overhead vs the bare model step, data wait, images/s by size, RSS per epoch.

    python benchmarks/bench_trainer.py [--sizes 160 320 640] [--epochs 10] [--out benchmarks/out/bench_trainer.json]

Where ultralytics is importable (not a dependency: `pip install ultralytics` in a separate
environment that sees this one's packages), the same table has the reference YOLOv8n step
measured in the same run, on the same CPU and threads: images/s targets only mean something
measured on the machine at hand.

Prints a table and writes JSON. Measured, never asserted (tests do not time things).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from refdet.config import TrainConfig  # noqa: E402
from refdet.engine.device import cpu_threads  # noqa: E402
from refdet.engine.trainer import Trainer  # noqa: E402


def preset(root: Path, size: int, **over) -> TrainConfig:
    return TrainConfig.preset("smoke").with_overrides({
        "data.root": str(root), "data.img_size": size, "batch_size": 8, "data.n_way": 2, "data.n_query": 4,
        "device": "cpu", "num_threads": cpu_threads(), "health.enabled": False, **over})


def timed(fn, n: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def step_fns(root: Path, size: int, **over) -> dict:
    """The trainer's train_step and the bare forward + loss + backward + AdamW step on one batch."""
    tr = Trainer(preset(root, size, **over))
    batch = tr.sampler.train_batch(0, 0)
    q, r, ri, tg = tr.to_device(batch)
    model, crit, opt = tr.model, tr.criterion, tr.optimizer

    def bare():
        out = model(q, r, ri)
        loss = crit(out, tg)
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        opt.step()

    return {"trainer": lambda: tr.train_step(batch), "bare": bare}


def reference_fn(size: int):
    """The YOLOv8n step of the popular detection library (ultralytics, if installed: it is not a
    dependency) on the same CPU, threads and batch: forward + its detection loss + backward +
    AdamW, channels-last like ours. Its own trainer adds data loading and augmentation on top."""
    threads = torch.get_num_threads()
    try:
        from ultralytics.nn.tasks import DetectionModel
        from ultralytics.utils import DEFAULT_CFG
    except ImportError:
        return None
    # Importing it sets OMP_NUM_THREADS=1, and its own trainer calls set_num_threads(cpus - 1):
    # 1 thread on this 2-core machine. Measure it with the threads ours has.
    torch.set_num_threads(threads)
    model = DetectionModel("yolov8n.yaml", nc=1, verbose=False).train().to(memory_format=torch.channels_last)
    model.args = DEFAULT_CFG
    crit = model.init_criterion()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.rand(8, 3, size, size).contiguous(memory_format=torch.channels_last)
    batch = {"img": x, "batch_idx": torch.arange(8.0), "cls": torch.zeros(8, 1),
             "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.2]]).repeat(8, 1)}

    def step():
        loss, _ = crit(model(x), batch)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()

    return step


def step_costs(root: Path, size: int, n: int, rounds: int, reference: bool) -> dict:
    """Seconds per step of the episodic stage-2 trainer, the plain stage-1 trainer (non-episodic:
    no references, fusion or CPE), their bare steps and the reference step. The machine's speed
    drifts (measured: 1.6x within an hour, and single rounds 15 % fast), so they are timed in
    alternation, round after round, and each keeps its median round."""
    fns = {f"{kind}_{part}": fn
           for kind, over in (("episodic", {}), ("plain", {"stage": 1, "data.episodic": False}))
           for part, fn in step_fns(root, size, **over).items()}
    ref = reference_fn(size) if reference else None
    if ref is not None:
        fns["reference"] = ref
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, n))
    median = {name: statistics.median(t) for name, t in times.items()}
    row = {"size": size}
    for kind in ("episodic", "plain"):
        t, b = median[f"{kind}_trainer"], median[f"{kind}_bare"]
        row[kind] = {"trainer_step_s": t, "bare_step_s": b, "overhead_ratio": t / b, "images_per_s": 8 / t}
        if ref is not None:
            row[kind]["of_reference"] = median["reference"] / t
    row["reference"] = {"step_s": median["reference"], "images_per_s": 8 / median["reference"],
                        "threads": torch.get_num_threads()} if ref is not None else None
    return row


def data_wait_and_rss(root: Path, epochs: int, steps: int) -> dict:
    cfg = preset(root, 160, epochs=epochs, steps_per_epoch=steps)
    tr = Trainer(cfg)
    data_t, step_t = [], []
    rss = []

    def on_step(s):
        data_t.append(s.data_time)
        step_t.append(s.step_time)

    for r in tr.fit(on_step):
        rss.append(r.metrics["health/mem_rss_gb"])
    growth_after_2 = 100 * (rss[-1] - rss[1]) / rss[1] / max(1, len(rss) - 2) if len(rss) > 2 else 0.0
    return {"epochs": epochs, "steps_per_epoch": steps, "data_wait_frac": sum(data_t) / (sum(data_t) + sum(step_t)),
            "rss_gb_per_epoch": rss, "rss_growth_pct_per_epoch_after_2": growth_after_2,
            "rss_growth_pct_total_after_2": 100 * (rss[-1] - rss[1]) / rss[1] if len(rss) > 2 else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[160, 320, 640])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round (half at 640 px, at least 2)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds; each step keeps its median")
    ap.add_argument("--epochs", type=int, default=10, help="epochs of the data-wait/RSS run (0 skips it)")
    ap.add_argument("--epoch-steps", type=int, default=20)
    ap.add_argument("--data", default="datasets/synthetic", help="the smoke dataset (generated if missing)")
    ap.add_argument("--out", default="benchmarks/out/bench_trainer.json")
    ap.add_argument("--no-reference", dest="reference", action="store_false",
                    help="skip the reference YOLOv8n step (measured only where ultralytics is installed)")
    args = ap.parse_args()
    from refdet.data.synthetic import ensure_dataset

    root = Path(args.data).resolve()
    ensure_dataset(preset(root, 160).data)
    print(f"threads {torch.get_num_threads()} of {os.cpu_count()} CPUs; torch {torch.__version__}")
    rows = []
    for size in args.sizes:
        n = args.steps if size < 640 else max(2, args.steps // 2)
        row = step_costs(root, size, n, args.rounds, args.reference)
        rows.append(row)
        for kind, name in (("episodic", "episodic stage 2"), ("plain", "plain stage 1")):
            r = row[kind]
            line = (f"{size:4d} px {name:16s}: trainer {r['trainer_step_s'] * 1000:6.0f} ms/step, "
                    f"bare {r['bare_step_s'] * 1000:6.0f} ms, overhead x{r['overhead_ratio']:.3f}, "
                    f"{r['images_per_s']:5.1f} query images/s")
            if "of_reference" in r:
                line += f" = {100 * r['of_reference']:.0f} % of the reference"
            print(line)
        if row["reference"]:
            ref = row["reference"]
            print(f"{size:4d} px reference YOLOv8n step: {ref['step_s'] * 1000:.0f} ms, {ref['images_per_s']:.1f} images/s")
    mem = data_wait_and_rss(root, args.epochs, args.epoch_steps) if args.epochs > 0 else None
    if mem:
        print(f"data wait {100 * mem['data_wait_frac']:.2f} % of step time; RSS per epoch (GB): "
              + ", ".join(f"{x:.3f}" for x in mem["rss_gb_per_epoch"]))
        print(f"RSS growth after epoch 2: {mem['rss_growth_pct_total_after_2']:.2f} % in all, "
              f"{mem['rss_growth_pct_per_epoch_after_2']:.3f} % per epoch")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"steps": rows, "memory": mem, "threads": torch.get_num_threads(),
                               "torch": torch.__version__}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
