"""The CUDA paths, checked on a GPU machine (benchmarks/gpu_check.sh runs this in one go).

    python benchmarks/gpu_check.py amp        # bf16 and fp16+GradScaler steps at stage2 settings
    python benchmarks/gpu_check.py packing    # 4 trials with gpu: 0.25 on one GPU, at once

amp: for bf16 and fp16, trains `--steps` steps of the stage2 settings (640 px, batch 32,
4-way x 4-query) from the frame cache with the trial-style loader (3 workers), and prints
the median step time, the data wait, images/s, the CUDA memory statistics (allocated,
peak, reserved), the GradScaler's scale and skipped steps (fp16), and the CUDA budget a
trial gets at device_share 1, 0.5 and 0.25.
packing: a smoke search of 4 trials with resources {cpu: 2, gpu: 0.25}; from the trials'
logs: every trial on CUDA with the same device, all four running at once, and each with the
budget of a quarter of the device (so no verdict depends on a neighbour).
Writes JSON to --out; exit 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def amp(args) -> dict:
    import torch

    from benchmarks.bench_loader import trainer

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check amp: no CUDA device visible")
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "runs": []}
    for dtype in ("bf16", "fp16"):
        t = trainer(Path(args.data), "stage2", device="cuda", num_threads=4, amp_dtype=dtype,
                    **{"data.num_workers": 3, "steps_per_epoch": args.steps})
        stats = []
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        t_data = time.perf_counter()
        for batch in t.loader(0):
            s = t.train_step(batch, time.perf_counter() - t_data)
            stats.append(s)
            t_data = time.perf_counter()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        steady = stats[2:] or stats
        images = t.cfg.episodes_per_batch * t.cfg.data.n_way * t.cfg.data.n_query
        run = {"amp": dtype, "steps": len(stats), "median_step_s": statistics.median(s.step_time for s in steady),
               "median_data_wait_s": statistics.median(s.data_time for s in steady),
               "images_per_s": images * len(steady) / sum(s.step_time + s.data_time for s in steady),
               "wall_s": wall, "nonfinite_steps": sum(s.nonfinite for s in stats),
               "amp_skipped_steps": sum(s.amp_skipped for s in stats),
               "grad_scaler_scale": float(t.scaler.get_scale()) if t.scaler.is_enabled() else None,
               "cuda_allocated_gb": torch.cuda.memory_allocated() / 1024**3,
               "cuda_peak_gb": torch.cuda.max_memory_allocated() / 1024**3,
               "cuda_reserved_gb": torch.cuda.memory_reserved() / 1024**3,
               "last_loss": stats[-1].loss}
        out["runs"].append(run)
        print(json.dumps(run), flush=True)
        t.close()
    total = torch.cuda.get_device_properties(0).total_memory / 1024**3
    out["device_total_gb"] = total
    out["trial_budget_gb"] = {share: 0.9 * share * total for share in (1.0, 0.5, 0.25)}
    out["ok"] = all(r["nonfinite_steps"] == 0 for r in out["runs"])
    return out


def packing(args) -> dict:
    storage = Path(args.data) / "gpu_check_results"
    name = f"pack{int(time.time())}"
    cmd = [sys.executable, str(ROOT / "tune" / "run.py"), "--space", "smoke", "--name", name, "--storage", str(storage),
           "--num-samples", "4", "--max-concurrent", "4", "--set", "resources.cpu=2", "--set", "resources.gpu=0.25",
           "--set", "steps_per_epoch=30", "--report-every", "30"]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    exp = storage / name
    runs = []
    for log in exp.glob("*/refdet/training.log"):
        text = log.read_text()
        m = re.search(r"device (\S+) CUDA_VISIBLE_DEVICES=(\S*) cuda_budget_gb=(\S+)", text)
        stamps = [time.mktime(time.strptime(x[:19], "%Y-%m-%d %H:%M:%S")) for x in text.splitlines() if x[:4].isdigit()]
        if m and stamps:
            runs.append({"trial": log.parent.parent.name[:40], "device": m.group(1), "cvd": m.group(2),
                         "budget_gb": float(m.group(3)), "start": min(stamps), "end": max(stamps)})
    overlap = min((x["end"] for x in runs), default=0) - max((x["start"] for x in runs), default=0)
    out = {"rc": r.returncode, "wall_s": time.time() - t0, "trials": runs, "all_overlap_s": overlap,
           "stderr_tail": r.stderr[-2000:]}
    out["ok"] = (r.returncode == 0 and len(runs) == 4 and all(x["device"].startswith("cuda") for x in runs)
                 and len({x["cvd"] for x in runs}) == 1 and overlap > 0
                 and len({round(x["budget_gb"], 2) for x in runs}) == 1)
    print(json.dumps({k: v for k, v in out.items() if k != "stderr_tail"}, indent=1), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("check", choices=["amp", "packing"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--data", default="datasets/bench")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    result = amp(args) if args.check == "amp" else packing(args)
    result["date"] = time.strftime("%Y-%m-%d %H:%M")
    out = Path(args.out or f"benchmarks/out/gpu_check_{args.check}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
