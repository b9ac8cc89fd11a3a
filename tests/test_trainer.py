import json
import math

import pytest
import torch

from refdet.config import ConfigError
from refdet.engine.checkpoint import CheckpointError, load_checkpoint
from refdet.engine.health import STOP_REASONS
from refdet.engine.optim import lr_lambda
from refdet.engine.trainer import Trainer

DESIGN_KEYS = {"train/loss", "train/loss_bbox", "train/loss_cls", "train/loss_dfl", "train/loss_cpe", "val/st_iou",
               "val/ap50", "val/recall", "lr", "epoch", "health/grad_norm_pre_max", "health/grad_norm_post_max",
               "health/clip_ratio_max", "health/nonfinite_steps", "health/cpe_zero_frac", "health/mem_rss_gb",
               "health/mem_rss_growth", "health/mem_cuda_peak_gb", "health/fatal", "health/stop_reason", "val/fresh",
               "val/loss"}


def test_metric_name_lists_are_the_design_names():
    from refdet.metrics import HEALTH_METRICS, SEARCHABLE_METRICS

    assert set(SEARCHABLE_METRICS) | set(HEALTH_METRICS) | {"lr", "epoch", "val/fresh"} == DESIGN_KEYS


def test_healthy_training_reports_design_metrics(tiny_cfg, tmp_path):
    trainer = Trainer(tiny_cfg(), run_dir=tmp_path / "run")
    steps = []
    results = list(trainer.fit(progress=steps.append))
    trainer.close()
    assert [r.epoch for r in results] == [1, 2] and all(r.verdict is None for r in results)
    m = results[-1].metrics
    assert set(m) == DESIGN_KEYS
    assert m["health/stop_reason"] == "ok" and m["health/fatal"] == 0.0
    assert all(math.isfinite(v) for k, v in m.items() if k != "health/stop_reason")
    assert m["val/loss"] > 0 and m["val/loss"] != results[0].metrics["val/loss"]  # measured each epoch
    s = steps[-1]
    assert isinstance(s.loss, float) and isinstance(s.grad_norm_pre, float) and s.mem_rss_gb > 0
    assert s.grad_norm_post <= trainer.cfg.optim.gradient_clip_norm + 1e-3
    assert s.clipped == (s.grad_norm_pre > trainer.cfg.optim.gradient_clip_norm)
    assert s.terms["cpe"] > 0 and s.cpe_positives > 0  # stage 2: CPE is live
    assert s.num_gt > 0 and s.num_fg > 0
    log = (tmp_path / "run" / "training.log").read_text()
    for needle in ("CPE Loss", "Total Grad Norm pre-clip", "post-clip", "DFL loss"):
        assert needle in log
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["epoch"] == 1.0


def test_warmup_then_cosine():
    f = lr_lambda(warmup_steps=10, total_steps=110, min_ratio=0.01)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.505, abs=1e-3)
    assert f(110) == pytest.approx(0.01)
    g = lr_lambda(0, 100, 0.0)  # warmup 0 allowed
    assert g(0) == pytest.approx(1.0)


def test_a_run_shorter_than_its_schedule_is_that_schedules_truncation():
    """optim.schedule_epochs: a 2-epoch run of a 8-epoch schedule steps through the first quarter
    of the 8-epoch run's learning rates, not a cosine squeezed into 2 epochs; 0 means the run's
    own length, and a schedule shorter than the run is refused."""
    import torch

    from refdet.config import OptimConfig, TrainConfig
    from refdet.engine.optim import build_schedule

    def lrs(o, epochs):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = build_schedule(opt, o, steps_per_epoch=5, epochs=epochs)
        out = []
        for _ in range(epochs * 5):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    full = lrs(OptimConfig(warmup_epochs=1), 8)
    assert lrs(OptimConfig(warmup_epochs=1, schedule_epochs=8), 2) == pytest.approx(full[:10])
    assert lrs(OptimConfig(warmup_epochs=1, schedule_epochs=0), 2)[-1] < full[9]  # its own, annealed
    with pytest.raises(ConfigError, match="optim.schedule_epochs"):
        TrainConfig().with_overrides({"epochs": 4, "optim.schedule_epochs": 3})


def test_absurd_lr_is_stopped_within_the_step(tiny_cfg):
    cfg = tiny_cfg(**{"optim.lr": 1e6, "optim.gradient_clip_norm": 1e9, "steps_per_epoch": 30, "epochs": 3,
                      "health.patience": 2, "health.grad_norm_max": 1e3})
    trainer = Trainer(cfg)
    results = list(trainer.fit())
    v = results[-1].verdict
    assert v is not None and v.stop_reason in ("nonfinite", "grad_explosion", "loss_spike", "dfl_divergence")
    assert results[-1].metrics["health/fatal"] == 1.0 and results[-1].metrics["health/stop_reason"] == v.stop_reason
    assert trainer.step == v.step  # stopped within the step the rule fired
    assert len(results) == 1 and trainer.step < 30


def test_cpe_threshold_above_one_fires_cpe_zero(tiny_cfg):
    trainer = Trainer(tiny_cfg(**{"loss.cpe_iou_threshold": 1.5, "steps_per_epoch": 8}))
    result = next(trainer.fit())
    assert result.verdict is not None and result.verdict.stop_reason == "cpe_zero"
    assert result.verdict.step == 4 and result.metrics["health/cpe_zero_frac"] == 1.0


def test_stage1_has_no_cpe_and_loads_into_stage2(tiny_cfg, tmp_path):
    t1 = Trainer(tiny_cfg(stage=1, epochs=1))
    r = next(t1.fit())
    assert r.metrics["train/loss_cpe"] == 0.0 and r.verdict is None  # cpe_zero only applies to stage 2
    t1.save(tmp_path / "stage1.pt")
    t2 = Trainer(tiny_cfg(stage=2, checkpoint=str(tmp_path / "stage1.pt")))
    for (k, a), b in zip(t1.model.state_dict().items(), t2.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert t2.step == 0  # weights only; a fresh optimizer


def test_non_episodic_stage1_trains_the_plain_detector(tiny_cfg, tmp_path):
    t1 = Trainer(tiny_cfg(stage=1, epochs=1, batch_size=3, **{"data.episodic": False}))
    assert t1.sampler.train_batch(0, 0)["query"].shape[0] == 3  # batch_size frames, not whole episodes
    r = next(t1.fit())
    assert r.verdict is None and r.validated and math.isfinite(r.metrics["train/loss"])
    assert r.metrics["train/loss_cpe"] == 0.0
    # No references anywhere: the fusion and the CPE embedder never saw a gradient.
    assert all(p.grad is None for m in (t1.model.fusion, t1.model.cpe_embed) for p in m.parameters())
    assert t1.model.backbone.stem[0].conv.weight.grad is not None
    t1.save(tmp_path / "stage1.pt")
    # Stage 2 starts from it and, its fusion being the identity at first, predicts what stage 1 did.
    t2 = Trainer(tiny_cfg(stage=2, checkpoint=str(tmp_path / "stage1.pt")))
    batch = t2.sampler.train_batch(0, 0)
    q, refs, ri, _ = t2.to_device(batch)
    t1.model.eval(), t2.model.eval()
    with torch.no_grad():
        plain, conditioned = t1.model(q, None), t2.model(q, refs, ri)
    assert torch.allclose(plain["cls_logits"], conditioned["cls_logits"], atol=1e-5)
    with pytest.raises(ConfigError, match="data.episodic"):
        tiny_cfg(stage=2, **{"data.episodic": False})


def test_a_checkpoint_of_another_model_is_refused(tiny_cfg, tmp_path):
    """Initial weights that do not fit the model are an error naming the file, never a silent
    start from random weights: another size (embed_dim 64 against the tiny config's 32) or
    another network's names."""
    from conftest import foreign_checkpoint

    foreign = foreign_checkpoint(tmp_path / "big.pt")
    with pytest.raises(CheckpointError, match=r"big.pt: made for another model size.*embed_dim': 64"):
        Trainer(tiny_cfg(stage=2, checkpoint=str(foreign)))
    torch.save({"model": {"model.0.conv.weight": torch.zeros(16, 3, 3, 3)}}, tmp_path / "yolo.pt")
    with pytest.raises(CheckpointError, match="yolo.pt: not weights of this model"):
        Trainer(tiny_cfg(stage=2, checkpoint=str(tmp_path / "yolo.pt")))


@pytest.mark.parametrize("mode", [{}, {"stage": 1, "data.episodic": False}], ids=["episodic", "plain-stage1"])
def test_resume_equals_straight_through(tiny_cfg, tmp_path, mode):
    cfg = tiny_cfg(epochs=2, steps_per_epoch=3, **mode)
    straight = Trainer(cfg)
    list(straight.fit())
    first = Trainer(cfg)
    next(first.fit())
    first.save(tmp_path / "ckpt.pt")
    resumed = Trainer(cfg)
    resumed.resume(tmp_path / "ckpt.pt")
    assert resumed.epoch == 1
    list(resumed.fit())
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k
    assert straight.val_metrics == resumed.val_metrics


def test_checkpoint_is_safe_and_complete(tiny_cfg, tmp_path):
    t = Trainer(tiny_cfg(epochs=1, steps_per_epoch=1))
    next(t.fit())
    t.save(tmp_path / "c.pt")
    state = load_checkpoint(tmp_path / "c.pt")
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "rng", "config", "health"):
        assert key in state
    assert not list(tmp_path.glob(".*tmp"))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")
    # a pickle that would run code is refused by weights_only
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")


def test_every_stop_reason_is_documented_and_plotted():
    from pathlib import Path

    from tune.plots import COLORS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for reason in set(STOP_REASONS) - {"ok"}:
        assert reason in COLORS and f"`{reason}`" in readme, reason


BLOWUP_STEPS = 40  # a real blow-up is stopped within this many steps, whatever the clip


@pytest.mark.parametrize("clip", [0.5, 10.0, 100.0])
def test_verdicts_do_not_depend_on_the_clip(tiny_cfg, clip):
    """Healthy training gets no verdict at any clip (a clip of 0.5 means pre/post ratios of
    100+, which the old clip-ratio rule called an explosion); lr 20 is stopped at each."""
    healthy = Trainer(tiny_cfg(**{"optim.lr": 2e-3, "optim.gradient_clip_norm": clip, "steps_per_epoch": 30,
                                  "epochs": 1, "seed": 1}))
    result = next(healthy.fit())
    assert result.verdict is None, result.verdict.message
    assert result.metrics["health/clip_ratio_max"] > 1 or clip >= 100
    blowup = Trainer(tiny_cfg(**{"optim.lr": 20.0, "optim.gradient_clip_norm": clip, "steps_per_epoch": 60,
                                 "epochs": 1, "seed": 1}))
    result = next(blowup.fit())
    assert result.verdict is not None and result.verdict.step <= BLOWUP_STEPS, result.verdict
    assert result.verdict.stop_reason in ("nonfinite", "grad_explosion", "dead_detector", "dfl_divergence", "loss_spike")


def test_memory_budget_fires_from_real_training(tiny_cfg):
    trainer = Trainer(tiny_cfg(**{"health.mem_budget_gb": 0.05}))
    result = next(trainer.fit())
    assert result.verdict.stop_reason == "memory_budget" and result.verdict.step == 1


@pytest.mark.slow
def test_tiny_model_learns_on_synthetic_data(learn_dataset):
    """200 steps lift validation (held-out scenes) clearly above an untrained model.

    Measured here with seeds 0-2: ST-IoU of the last two epochs 0.057-0.086 (untrained 0.0).
    Single epochs of so short a run jump by +-0.05, hence the mean of the last two."""
    from conftest import tiny_train_config

    cfg = tiny_train_config(learn_dataset, None, **{
        "model.width_multiple": 0.25, "data.n_way": 2, "data.n_query": 4, "batch_size": 8, "data.img_size": 128,
        "steps_per_epoch": 40, "epochs": 5, "conf_threshold": 0.1, "data.val_frame_stride": 2,
        "data.val_fraction": 0.25, "optim.lr": 1e-3, "optim.warmup_epochs": 1})
    trainer = Trainer(cfg)
    untrained = trainer.evaluate()
    results = list(trainer.fit())
    assert all(r.verdict is None for r in results)  # healthy training fires no rule
    curve = [r.metrics["val/st_iou"] for r in results]
    assert untrained["val/st_iou"] < 0.01 and untrained["val/ap50"] < 0.01
    assert (curve[-1] + curve[-2]) / 2 >= untrained["val/st_iou"] + 0.03, curve
    assert max(r.metrics["val/ap50"] for r in results[-2:]) > untrained["val/ap50"]


def test_out_of_memory_is_caught_freed_and_fatal(tiny_cfg, monkeypatch):
    trainer = Trainer(tiny_cfg(steps_per_epoch=6))
    real_forward = trainer.model.forward
    calls = {"n": 0}

    def forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("simulated: cannot allocate 62 GB")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(trainer.model, "forward", forward)
    result = next(trainer.fit())
    assert result.verdict.stop_reason == "oom" and result.verdict.step == 3
    assert "62 GB" in result.verdict.values["error"]
    assert result.metrics["health/stop_reason"] == "oom" and result.metrics["health/fatal"] == 1.0
    assert all(p.grad is None for p in trainer.model.parameters())  # gradients released


def test_a_failed_cpu_allocation_counts_as_out_of_memory():
    from refdet.engine.device import is_out_of_memory

    try:
        torch.empty(10**13)  # 40 TB: torch's CPU allocator refuses with a RuntimeError
    except RuntimeError as exc:
        assert is_out_of_memory(exc)
    else:  # pragma: no cover - a machine with 40 TB
        pytest.skip("the allocation succeeded")
    assert is_out_of_memory(MemoryError()) and not is_out_of_memory(RuntimeError("shape mismatch"))


def test_an_oom_is_the_configs_only_when_the_run_used_its_share():
    """judge_oom on real allocation failures: a request beyond the run's share of the host is
    its own (the `oom` verdict); a failure while it held far less than its share, on a node it
    shares, was a neighbour's doing (MemoryPushedOver: retried, never a verdict on the config);
    a run with the machine to itself owns every OOM."""
    from refdet.engine.device import (
        MemoryPushedOver,
        MemoryShare,
        host_total_gb,
        judge_oom,
        requested_gb,
    )

    cpu = torch.device("cpu")
    try:
        torch.empty(10**13)  # 40 TB
    except RuntimeError as exc:
        huge = exc
    assert requested_gb(huge) > 30_000
    v = judge_oom(huge, 7, cpu, MemoryShare(host_share=0.25))
    assert v.stop_reason == "oom" and v.step == 7 and "share of the host" in v.values["used"]
    small = MemoryError("numpy: Unable to allocate 8.00 MiB for an array")
    assert abs(requested_gb(small) - 8 / 1024) < 1e-9
    with pytest.raises(MemoryPushedOver, match="within its share of the host"):
        judge_oom(small, 3, cpu, MemoryShare(host_share=0.5))
    assert judge_oom(small, 3, cpu, MemoryShare(host_share=1.0)).stop_reason == "oom"  # alone: its own
    # the share is capped by the run's health budget: past it, the OOM is the config's
    assert judge_oom(small, 3, cpu, MemoryShare(host_share=0.5, host_budget_gb=1e-6)).stop_reason == "oom"
    assert host_total_gb() > 0


def test_a_killed_loader_worker_is_an_oom_judged_by_the_runs_share(tiny_cfg):
    """A DataLoader worker SIGKILLed (what the kernel's OOM killer does) mid-epoch: on a node
    the run shares, holding little, it was pushed over (MemoryPushedOver, so a search retries
    it from its checkpoint); the same failure judged with the node to itself is `oom`."""
    import os
    import signal

    from refdet.engine.device import MemoryPushedOver, MemoryShare, is_out_of_memory, judge_oom

    trainer = Trainer(tiny_cfg(**{"data.num_workers": 1, "steps_per_epoch": 6, "host_share": 0.5}))
    killed = {}

    def kill_worker(stats):
        if stats.step == 2:
            worker = trainer._loader._iterator._workers[0]
            os.kill(worker.pid, signal.SIGKILL)
            worker.join()
            killed["pid"] = worker.pid

    # In a thread, as in a Ray trial: torch's SIGCHLD handler (which names the signal) only
    # runs in the main thread, so the trainer tells the kill from the worker's exit code.
    import threading

    raised = []
    thread = threading.Thread(target=_run_catching, args=(trainer, kill_worker, raised))
    thread.start()
    thread.join(timeout=300)
    assert killed and len(raised) == 1 and isinstance(raised[0], MemoryPushedOver), raised
    cause = raised[0].__cause__
    assert is_out_of_memory(cause) and "killed by signal: Killed" in str(cause)
    assert not is_out_of_memory(raised[0])  # decided: not judged again as an OOM
    v = judge_oom(cause, 3, torch.device("cpu"), MemoryShare(host_share=1.0))
    assert v.stop_reason == "oom" and str(killed["pid"]) in v.values["error"]
    trainer.close()


def _run_catching(trainer, progress, out: list) -> None:
    try:
        next(trainer.fit(progress=progress))
    except Exception as exc:  # the test asserts what it was
        out.append(exc)


def test_cuda_budget_is_the_trials_share_of_the_device(tiny_dataset, tmp_path):
    """The budget the trainer hands the health monitor, from the trial config the search builds:
    0.9 x resources.gpu x the device's memory (here an 80 GB device, 2 trials per GPU)."""
    from search_fixtures import write_space

    from refdet.engine.device import cuda_budget_gb
    from tune.space import load_space
    from tune.trainable import build_trial_config

    spec = load_space(str(write_space(tmp_path, tiny_dataset, "gpu", num_samples=1, resources={"cpu": 1, "gpu": 0.5})))
    cfg = build_trial_config(spec, dict(spec.initial_points[0]))
    assert cfg.device_share == 0.5 and cfg.health.cuda_mem_fraction == 0.9
    assert cuda_budget_gb(cfg, 80.0) == pytest.approx(36.0)
    whole = build_trial_config(spec.__class__(**{**spec.__dict__, "gpu": 2.0}), dict(spec.initial_points[0]))
    assert cuda_budget_gb(whole, 80.0) == pytest.approx(72.0)  # a trial with whole GPUs: 0.9 of one device
    assert cuda_budget_gb(cfg, 0.0) == 0.0  # no CUDA device: no CUDA check


def test_an_oom_is_judged_on_the_memory_that_ran_out():
    """A CUDA allocation failure that torch raises as a plain CUDA error ("CUDA error: out of
    memory", torch.AcceleratorError, e.g. from a library's own allocation) is judged against
    the trial's share of the GPU, not of the host; sizes beyond TiB (numpy's PiB) and the
    allocator's "Requested size" wordings are read, not taken for 0."""
    from refdet.engine.device import GB, MemoryShare, judge_oom, requested_gb

    cuda = torch.device("cuda:0")  # only named: a run with the GPU to itself reads no device figure
    err = getattr(torch, "AcceleratorError", RuntimeError)("CUDA error: out of memory\nCUDA kernel errors might be "
                                                           "asynchronously reported at some other API call")
    v = judge_oom(err, 4, cuda, MemoryShare(device_share=1.0, host_share=0.25))  # its own GPU, a shared host
    assert v.stop_reason == "oom" and "CUDA device" in v.values["used"]
    numpy_oom = MemoryError("Unable to allocate 8.00 PiB for an array with shape (1125899906842624,) and data type f8")
    assert requested_gb(numpy_oom) == 8 * 2**50 / GB
    assert judge_oom(numpy_oom, 4, torch.device("cpu"), MemoryShare(host_share=0.5)).stop_reason == "oom"
    for msg in ("CUDA out of memory. Allocation was preemptively rejected because it would exceed "
                "per_process_memory_fraction limit. Requested size: 30.00 GiB",
                "Allocation on device 0 would exceed allowed memory. (out of memory)\nCurrently allocated     : "
                "1.00 GiB\nRequested               : 30.00 GiB"):
        assert requested_gb(RuntimeError(msg)) == 30 * 2**30 / GB, msg
