"""The RefDet trainer. Knows nothing about Ray or Optuna: a caller drives `fit()` epoch by epoch.

    trainer = Trainer(cfg, run_dir="checkpoints")
    for result in trainer.fit():      # EpochResult per epoch; stops after a fatal verdict
        print(result.metrics["val/st_iou"])

One training step (`train_step`) reads top to bottom: forward under autocast, loss, backward,
unscale, clip (keeping the norm `clip_grad_norm_` returns), one host sync for all the step's
numbers, optimizer step unless something was non-finite, scheduler step, `StepStats`.
"""

from __future__ import annotations

import math
import os
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from refdet.config import TrainConfig
from refdet.data import load_splits
from refdet.data.device_augment import queries_on_device
from refdet.data.episodes import (
    EpisodeSampler,
    EpochIndices,
    FrameSampler,
    TrainBatches,
    loader_worker_init,
    object_identities,
    prepare_videos,
)
from refdet.data.frames import FrameCache
from refdet.engine.checkpoint import check_fits, load_checkpoint, save_checkpoint
from refdet.engine.device import (
    GB,
    MemoryShare,
    cpu_threads,
    cuda_budget_gb,
    cuda_total_gb,
    host_rss_gb,
    is_out_of_memory,
    judge_oom,
    limit_cuda_memory,
    release_memory,
    resolve_device,
)
from refdet.engine.health import (
    DETECTION_TERMS,
    HealthMonitor,
    StepStats,
    Verdict,
    longest_patience,
)
from refdet.engine.optim import build_optimizer, build_schedule
from refdet.engine.runlog import RunLog, StepTrace
from refdet.losses.criterion import build_criterion
from refdet.metrics import VAL_METRICS, ap50, mean_st_iou, recall50, top_box
from refdet.model import build_model
from refdet.model.pretrained import load_pretrained
from refdet.ops.boxes import postprocess

COUNTS = ("num_fg", "num_gt", "cpe_positives")  # criterion stats a StepStats carries


@dataclass
class EpochResult:
    """metrics: the flat dict of DESIGN.md (floats, plus the string health/stop_reason);
    verdict: the fatal health verdict that ended training, if any; validated: this epoch measured
    the val/* metrics (else they are carried forward); trace: the step signals kept for
    TensorBoard (every log_every-th step and the last stretch before a stop)."""

    epoch: int
    step: int
    metrics: dict
    verdict: Verdict | None
    validated: bool
    trace: list[dict] = field(default_factory=list)  # step signals (RunLog.step_signals) of the epoch


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: str | os.PathLike | None = None, tensorboard: bool = True):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        torch.set_num_threads(cfg.num_threads or cpu_threads())
        self._seed_everything(cfg.seed)
        self.log = RunLog(run_dir, tensorboard=tensorboard, log_every=1 if cfg.debug_mode else 10)
        self.run_dir = Path(run_dir) if run_dir else None
        self._loader = self._epoch_indices = None
        self._build_data()
        # Channels-last: oneDNN (CPU) and cuDNN (AMP) convolutions run without layout
        # reorders; measured 13 % faster per step on this CPU.
        model = build_model(cfg.model)
        if cfg.model.pretrained:
            for line in load_pretrained(model, cfg.model.pretrained):
                self.log.line(line)
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.criterion = build_criterion(cfg.loss, cfg.model.reg_max, self.model.cpe_embed, cfg.stage)
        self.loss_weight_sum = sum(self.criterion.weights().values())  # the health rules' gradient scale
        self.optimizer = build_optimizer(self.model, cfg.optim, self.device)
        self.scheduler = build_schedule(self.optimizer, cfg.optim, cfg.steps_per_epoch, cfg.epochs)
        cuda = self.device.type == "cuda"
        self.amp_dtype = None
        if cuda and cfg.mixed_precision:
            bf16 = cfg.amp_dtype == "bf16" or (cfg.amp_dtype == "auto" and torch.cuda.is_bf16_supported())
            self.amp_dtype = torch.bfloat16 if bf16 else torch.float16
        # A GradScaler is needed for fp16 only; bf16 has fp32's range.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.memory_share = MemoryShare(cfg.device_share, cfg.host_share, cfg.health.mem_budget_gb)
        limit_cuda_memory(self.device, cfg.device_share)
        self.health = HealthMonitor(cfg.health, cpe_active=cfg.stage == 2,
                                    cuda_budget_gb=cuda_budget_gb(cfg, cuda_total_gb(self.device)))
        self.val_peak_rss_gb = 0.0  # host RSS peak of the last validation (read per video)
        self.epoch = 0  # completed epochs
        self.step = 0  # completed optimizer steps
        self.val_metrics = dict.fromkeys(VAL_METRICS, math.nan)  # not measured yet (val/fresh says so)
        if cfg.checkpoint:
            self.load_weights(cfg.checkpoint_file)

    # -- construction ----------------------------------------------------------------------
    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _build_data(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        if self.device.type != "cuda" and d.augment_on_device:
            d = replace(d, augment_on_device=False)  # cv2 in the loader is the faster CPU path
        splits = load_splits(d)
        self.dataset_summary = splits.summary
        ids = object_identities(splits.train + splits.val)
        cache = FrameCache(d.cache_dir or Path(d.root) / ".frame_cache", d.img_size)
        self.train_videos = prepare_videos(splits.train, d, cache, "train", ids)
        self.val_videos = prepare_videos(splits.val, d, cache, "val", ids)
        if d.episodic:
            self.sampler = EpisodeSampler(self.train_videos, d, cfg.episodes_per_batch, cfg.seed)
        else:
            self.sampler = FrameSampler(self.train_videos, d, cfg.batch_size, cfg.seed)

    # -- one step --------------------------------------------------------------------------
    def to_device(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, dict]:
        dev = self.device
        non_blocking = dev.type == "cuda"  # with pinned memory: copies overlap compute
        query = queries_on_device(batch, dev, self.cfg.data.img_size, non_blocking).contiguous(
            memory_format=torch.channels_last)
        targets = {k: batch[k].to(dev, non_blocking=non_blocking) for k in ("boxes", "mask", "object_ids")}
        if not self.cfg.data.episodic:  # the plain detector: references are not used, even in validation
            return query, None, None, targets
        refs = batch["references"].to(dev, non_blocking=non_blocking).float().div_(255)
        return query, refs, batch["ref_index"].to(dev, non_blocking=non_blocking), targets

    def train_step(self, batch: dict, data_time: float = 0.0) -> StepStats:
        t0 = time.perf_counter()
        cfg = self.cfg
        self.model.train()
        query, refs, ref_index, targets = self.to_device(batch)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            outputs = self.model(query, refs, ref_index)
        loss = self.criterion(outputs, targets)  # computed in fp32 (the criterion casts)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss.total).backward()
        self.scaler.unscale_(self.optimizer)
        pre = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.gradient_clip_norm)
        # The one host sync of the step: every number the step reports, in one transfer.
        names = list(loss.terms)
        numbers = torch.stack([loss.total.detach(), pre, *(loss.terms[k].detach().float() for k in names),
                               *(loss.stats[k].float() for k in COUNTS)]).tolist()
        total, pre_v = numbers[:2]
        terms = dict(zip(names, numbers[2:2 + len(names)]))
        counts = {k: int(v) for k, v in zip(COUNTS, numbers[2 + len(names):])}
        # Under fp16 AMP an inf gradient with a finite loss is GradScaler's overflow: it skips
        # the step and lowers its scale. That is routine, not a health event.
        amp_skipped = self.scaler.is_enabled() and math.isfinite(total) and not math.isfinite(pre_v)
        nonfinite = not (math.isfinite(total) and math.isfinite(pre_v)) and not amp_skipped
        if nonfinite:
            self.optimizer.zero_grad(set_to_none=True)  # skip the update; the monitor decides
            if self.scaler.is_enabled():
                self.scaler.update()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.step += 1
        max_norm = cfg.optim.gradient_clip_norm
        post = pre_v * min(1.0, max_norm / (pre_v + 1e-6)) if math.isfinite(pre_v) else pre_v
        cuda = self.device.type == "cuda"
        return StepStats(
            step=self.step, epoch=self.epoch + 1, loss=total, terms=terms, **counts, grad_norm_pre=pre_v,
            grad_norm_post=post, clipped=bool(pre_v > max_norm), nonfinite=nonfinite, amp_skipped=amp_skipped, lr=lr,
            loss_weight_sum=self.loss_weight_sum,
            mem_rss_gb=host_rss_gb(),
            mem_cuda_alloc_gb=torch.cuda.memory_allocated(self.device) / GB if cuda else 0.0,
            mem_cuda_peak_gb=torch.cuda.max_memory_allocated(self.device) / GB if cuda else 0.0,
            step_time=time.perf_counter() - t0, data_time=data_time,
        )

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, batch_size: int = 16, per_video: list | None = None) -> dict[str, float]:
        """ST-IoU over every cached validation frame (see refdet.data.frames), AP@0.5, recall@0.5,
        and val/loss: the unweighted box + class + DFL loss, mean over frames (a signal that
        moves while the detection metrics are still 0). `per_video`, if given, receives
        (video_id, gt, pred) per validation video, frame -> box (benchmarks/noise_sources.py)."""
        self.model.eval()
        thr = self.cfg.conf_threshold
        videos, preds_ap, gts_ap, preds_rec = [], [], [], []
        outputs = None
        loss_sum = torch.zeros((), device=self.device)
        frames = 0
        for video in self.val_videos:
            gt, pred = {}, {}
            for batch in self.sampler.val_batches(video, batch_size):
                query, refs, ref_index, targets = self.to_device(batch)
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    outputs = self.model(query, refs, ref_index)
                terms = self.criterion(outputs, targets, with_cpe=False).terms
                loss_sum += sum(terms[k] for k in DETECTION_TERMS) * len(query)
                frames += len(query)
                dets = postprocess(outputs, self.cfg.model.reg_max, conf_threshold=0.001)
                for i, det in enumerate(dets):
                    frame = int(batch["frame_ids"][i])
                    boxes, scores = det["boxes"].cpu().tolist(), det["scores"].cpu().tolist()
                    g = [batch["boxes"][i, 0].tolist()] if batch["mask"][i, 0] else []
                    if g:
                        gt[frame] = g[0]
                    best = top_box(boxes, scores, thr)
                    if best is not None:
                        pred[frame] = best
                    preds_ap.append((boxes, scores))
                    gts_ap.append(g)
                    preds_rec.append([b for b, s in zip(boxes, scores) if s >= thr])
            videos.append((gt, pred))
            if per_video is not None:
                per_video.append((video.entry.video_id, gt, pred))
            self.val_peak_rss_gb = max(self.val_peak_rss_gb, host_rss_gb())  # one /proc read per video
        del outputs
        release_memory(self.device)  # what validation allocated, before training resumes (the original leak)
        return {"val/st_iou": mean_st_iou(videos), "val/ap50": ap50(preds_ap, gts_ap),
                "val/recall": recall50(preds_rec, gts_ap), "val/loss": float(loss_sum) / max(frames, 1)}

    # -- epochs ----------------------------------------------------------------------------
    def loader_workers(self) -> int:
        """data.num_workers, or auto (-1): on CUDA the run's CPU threads less one (a trial's
        resources.cpu - 1) load while the GPU computes; on the CPU none, since the model
        already uses every thread and loading in-process costs a few % of a step."""
        n = self.cfg.data.num_workers
        if n >= 0:
            return n
        return max(0, (self.cfg.num_threads or cpu_threads()) - 1) if self.device.type == "cuda" else 0

    def loader(self, epoch: int) -> torch.utils.data.DataLoader:
        """The epoch's training batches. One DataLoader for the run: with workers, they
        persist across epochs and prefetch two batches each; on CUDA into pinned memory, so
        `to_device` copies without blocking."""
        if self._loader is None:
            workers = self.loader_workers()
            self._epoch_indices = EpochIndices(self.cfg.steps_per_epoch)
            self._loader = torch.utils.data.DataLoader(
                TrainBatches(self.sampler, self.cfg.steps_per_epoch), batch_size=None, sampler=self._epoch_indices,
                num_workers=workers, persistent_workers=workers > 0, prefetch_factor=2 if workers else None,
                pin_memory=self.device.type == "cuda", worker_init_fn=loader_worker_init if workers else None,
                # Not fork: a forked worker deadlocks in OpenCV's thread pool once the parent
                # has used it (measured: the first batch never came). Spawned workers map the
                # frame cache by path (CachedFrames pickles as its file).
                multiprocessing_context="spawn" if workers else None)
        self._epoch_indices.epoch = epoch
        return self._loader

    def batches(self, epoch: int) -> Iterator[dict]:
        """The epoch's batches. A loader worker killed by SIGKILL surfaces from torch as "exited
        unexpectedly" (its SIGCHLD handler, which names the signal, only runs in a main thread;
        a Ray trial is not one): the worker's exit code tells a kill -- in practice the kernel's
        OOM killer -- from a crash, and only a kill is raised as out of memory."""
        it = iter(self.loader(epoch))
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except RuntimeError as exc:
                dead = [w.pid for w in getattr(it, "_workers", ()) if w.exitcode == -signal.SIGKILL]
                if dead and "DataLoader worker" in str(exc):
                    raise RuntimeError(f"DataLoader worker (pid {dead[0]}) is killed by signal: Killed.") from exc
                raise
            yield batch

    def train_epoch(self, progress=None) -> tuple[dict[str, float], Verdict | None]:
        """Runs one epoch; stops within the step where a health rule fires. An out-of-memory
        error anywhere in the epoch (a batch, a step) is an `oom` verdict."""
        sums: dict[str, float] = {}
        n = 0
        self.trace = StepTrace(self.log, longest_patience(self.cfg.health))
        verdict = None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)  # peak per epoch window
        try:
            t_data = time.perf_counter()
            for batch in self.batches(self.epoch):
                stats = self.train_step(batch, time.perf_counter() - t_data)
                self.log.step(stats)
                verdict = self.health.update(stats)
                self.trace.add(stats, final=verdict is not None)
                if not stats.nonfinite:
                    n += 1
                    for k, v in {"loss": stats.loss, **{f"loss_{t}": x for t, x in stats.terms.items()}}.items():
                        sums[k] = sums.get(k, 0.0) + v
                if progress is not None:
                    progress(stats)
                if verdict is not None:
                    break
                t_data = time.perf_counter()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            verdict = self._oom(exc)
        return {f"train/{k}": v / max(n, 1) for k, v in sums.items()}, verdict

    def _oom(self, exc: BaseException) -> Verdict:
        """The `oom` verdict, or MemoryPushedOver when a run sharing the device or node ran out
        within its share (judge_oom); memory is freed either way."""
        try:
            return judge_oom(exc, self.step + 1, self.device, self.memory_share)
        finally:
            if self.optimizer is not None:
                self.optimizer.zero_grad(set_to_none=True)
            release_memory(self.device)

    def fit(self, progress=None) -> Iterator[EpochResult]:
        """Trains from the current epoch to cfg.epochs, yielding after each epoch; ends after
        a fatal verdict."""
        while self.epoch < self.cfg.epochs:
            result = self.run_epoch(progress)
            yield result
            if result.verdict is not None:
                return

    def run_epoch(self, progress=None) -> EpochResult:
        """One epoch of training, then validation when due. `progress(StepStats)` is called
        after every step."""
        cfg = self.cfg
        train_metrics, verdict = self.train_epoch(progress)
        self.epoch += 1
        validated = False
        self.val_peak_rss_gb = 0.0
        if verdict is None and (self.epoch % cfg.val_interval == 0 or self.epoch == cfg.epochs):
            try:
                self.val_metrics = self.evaluate()
                validated = True
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                verdict = self._oom(exc)
        if not validated:
            # RSS is compared epoch to epoch: measure it after the same hand-back evaluate() ends
            # with, or an epoch after a validation reads as growth (measured: 0.41 -> 0.53 GB,
            # "+28 %", from the trim alone, with val_interval 4).
            release_memory(self.device)
        # The epoch's memory peaks, validation included (the CUDA peak is reset when the next
        # epoch starts, so this is the only look at validation's).
        cuda_peak = torch.cuda.max_memory_allocated(self.device) / GB if self.device.type == "cuda" else 0.0
        leak = self.health.end_epoch(self.epoch, self.step, host_rss_gb(), cuda_peak, self.val_peak_rss_gb)
        verdict = verdict or leak
        metrics = self.epoch_metrics(train_metrics, verdict, validated)
        self.log.epoch(metrics, self.step)
        if verdict is not None:
            self.log.line(verdict.message)
        return EpochResult(self.epoch, self.step, metrics, verdict, validated, self.trace.rows)

    def epoch_metrics(self, train_metrics: dict, verdict: Verdict | None, validated: bool) -> dict:
        m = dict(train_metrics)
        # Carried forward between validations (Tune needs the metric in every report);
        # val/fresh says whether this epoch measured it. Only fresh values reach ASHA and
        # Optuna: a space's rungs must fall on validated epochs (tune/space.py).
        m.update(self.val_metrics)
        m["val/fresh"] = 1.0 if validated else 0.0
        m["lr"] = self.optimizer.param_groups[0]["lr"]
        m["epoch"] = float(self.epoch)
        m.update(self.health.epoch_summary())
        m["health/fatal"] = 1.0 if verdict else 0.0
        m["health/stop_reason"] = verdict.stop_reason if verdict else "ok"
        return m

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "val_metrics": dict(self.val_metrics),
            "health": self.health.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "config": self.cfg.to_dict(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        return save_checkpoint(path, self.state_dict())

    def resume(self, path: str | os.PathLike) -> None:
        """Restore the full training state (continues from the epoch after the saved one)."""
        state = load_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.val_metrics = dict(state["val_metrics"])
        self.health.load_state_dict(state["health"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])

    def load_weights(self, path: str | os.PathLike) -> None:
        """Initial weights only (e.g. a stage-1 checkpoint for stage 2); optimizer starts fresh."""
        state = load_checkpoint(path, map_location=self.device)
        missing, unexpected = check_fits(state, self.model.state_dict(), path)  # a foreign file: CheckpointError
        self.model.load_state_dict(state["model"], strict=False)
        if unexpected or missing:
            self.log.line(f"loaded {path}: {len(missing)} missing, {len(unexpected)} unexpected keys")
        saved = state.get("config")
        data = saved.get("data") if isinstance(saved, dict) else None
        if isinstance(data, dict) and data.get("episodic") is False and self.cfg.data.episodic:
            self.model.fusion.reset_to_identity()  # its weights were never trained
            self.log.line(f"loaded {path}: trained without references (non-episodic stage 1); "
                          "the reference fusion starts as the identity")

    def close(self) -> None:
        """Close the logs and free what this trainer held (a reused Ray actor runs the next trial)."""
        self.log.close()
        self._loader = None  # ends persistent loader workers
        self.model = self.optimizer = self.criterion = self.sampler = None
        self.train_videos = self.val_videos = []
        release_memory(self.device)
