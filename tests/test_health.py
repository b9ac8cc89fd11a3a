import math

from refdet.config import HealthConfig
from refdet.engine.health import HealthMonitor, StepStats


def stats(step, **kw):
    base = dict(step=step, epoch=1, loss=2.0, loss_bbox=0.5, loss_cls=1.0, loss_dfl=1.0, loss_cpe=0.4,
                cpe_positives=10, num_fg=20, grad_norm_pre=50.0, grad_norm_post=10.0, clipped=True,
                nonfinite=False, lr=1e-3, mem_rss_gb=1.0, mem_cuda_alloc_gb=0.0, mem_cuda_peak_gb=0.0,
                step_time=0.1, data_time=0.01)
    base.update(kw)
    return StepStats(**base)


def run(monitor, seq):
    for s in seq:
        v = monitor.update(s)
        if v:
            return v
    return None


def test_healthy_sequence_fires_nothing():
    m = HealthMonitor(HealthConfig(), warmup_steps=5)
    assert run(m, [stats(i, loss=3.0 - i * 0.01) for i in range(200)]) is None
    summary = m.epoch_summary()
    assert summary["health/grad_norm_pre_max"] == 50.0 and summary["health/clip_ratio_max"] == 5.0
    assert summary["health/cpe_zero_frac"] == 0.0


def test_nonfinite_fires_at_once():
    v = run(HealthMonitor(HealthConfig()), [stats(1), stats(2, loss=math.nan, nonfinite=True)])
    assert v.reason == "nonfinite" and v.step == 2 and "loss" in v.message


def test_grad_norm_needs_patience():
    cfg = HealthConfig(patience=3)
    seq = [stats(1, grad_norm_pre=2e4), stats(2, grad_norm_pre=2e4), stats(3), stats(4, grad_norm_pre=2e4),
           stats(5, grad_norm_pre=2e4), stats(6, grad_norm_pre=2e4)]
    v = run(HealthMonitor(cfg), seq)
    assert v.rule == "grad_norm" and v.reason == "grad_explosion" and v.step == 6
    assert v.values["grad_norm_pre"] == 2e4


def test_clip_ratio():
    v = run(HealthMonitor(HealthConfig(patience=2, grad_norm_max=1e9)),
            [stats(i, grad_norm_pre=5000.0, grad_norm_post=10.0) for i in range(1, 5)])
    assert v.rule == "clip_ratio" and v.values["ratio"] == 500.0 and v.step == 2


def test_loss_spike_after_warmup_only():
    cfg = HealthConfig(patience=5, loss_spike_patience=2, grad_norm_max=1e9, clip_ratio_max=1e9)
    seq = [stats(i, loss=1.0) for i in range(1, 21)] + [stats(21, loss=5.0), stats(22, loss=5.0)]
    assert run(HealthMonitor(cfg, warmup_steps=100), seq) is None
    v = run(HealthMonitor(cfg, warmup_steps=10), seq)
    assert v.reason == "loss_spike" and v.step == 22


def test_dfl_divergence():
    v = run(HealthMonitor(HealthConfig(patience=3), warmup_steps=0), [stats(i, loss_dfl=11.86) for i in range(1, 9)])
    assert v.reason == "dfl_divergence" and v.step == 3


def test_cpe_zero_window_and_stage1():
    seq = [stats(i, loss_cpe=0.0, cpe_positives=0) for i in range(1, 30)]
    v = run(HealthMonitor(HealthConfig(cpe_zero_window=20)), seq)
    assert v.reason == "cpe_zero" and v.step == 20
    assert run(HealthMonitor(HealthConfig(cpe_zero_window=20), cpe_active=False), seq) is None
    # one non-zero value in the window resets it
    seq = [stats(i, loss_cpe=0.0 if i != 15 else 0.3) for i in range(1, 30)]
    assert run(HealthMonitor(HealthConfig(cpe_zero_window=20)), seq) is None


def test_memory_budget_and_growth():
    v = run(HealthMonitor(HealthConfig(mem_budget_gb=50.0)), [stats(1), stats(2, mem_rss_gb=62.0)])
    assert v.reason == "memory_budget" and v.values["mem_rss_gb"] == 62.0
    m = HealthMonitor(HealthConfig(mem_budget_gb=1e3, cuda_mem_fraction=0.9), cuda_total_gb=80.0)
    assert m.update(stats(1, mem_cuda_peak_gb=75.0)).reason == "memory_budget"
    m = HealthMonitor(HealthConfig(mem_growth_pct=20.0, mem_growth_after_epoch=2))
    assert m.end_epoch(1, 10, 32.0) is None
    assert m.end_epoch(2, 20, 45.0) is None  # epochs 1-2 may grow (caches fill)
    v = m.end_epoch(3, 30, 62.0)
    assert v.reason == "memory_leak" and v.values["growth_pct"] > 20


def test_disabled_monitor_still_stops_on_nonfinite():
    m = HealthMonitor(HealthConfig(enabled=False))
    assert run(m, [stats(i, grad_norm_pre=1e9) for i in range(1, 10)]) is None
    assert m.update(stats(10, nonfinite=True, loss=math.inf)).reason == "nonfinite"


def test_fp16_overflow_skip_is_not_fatal():
    m = HealthMonitor(HealthConfig())
    assert m.update(stats(1, grad_norm_pre=math.inf, grad_norm_post=math.inf, amp_skipped=True)) is None
    assert m.update(stats(2)) is None
