import math

from refdet.config import HealthConfig
from refdet.engine.health import (
    STEP_RULES,
    STOP_REASONS,
    HealthMonitor,
    StepStats,
    longest_patience,
)


def stats(step, terms=None, **kw):
    base = dict(step=step, epoch=1, loss=2.0, terms={"bbox": 0.5, "cls": 1.0, "dfl": 1.0, "cpe": 0.4},
                cpe_positives=10, num_fg=20, num_gt=8, grad_norm_pre=50.0, grad_norm_post=10.0, clipped=True,
                nonfinite=False, lr=1e-3, mem_rss_gb=1.0, mem_cuda_alloc_gb=0.0, mem_cuda_peak_gb=0.0,
                step_time=0.1, data_time=0.01)
    base.update(kw)
    if terms:
        base["terms"] = base["terms"] | terms
    return StepStats(**base)


def run(monitor, seq):
    for s in seq:
        v = monitor.update(s)
        if v:
            return v
    return None


def test_healthy_sequence_fires_nothing():
    m = HealthMonitor(HealthConfig())
    assert run(m, [stats(i, loss=3.0 - i * 0.01) for i in range(1, 200)]) is None
    summary = m.epoch_summary()
    assert summary["health/grad_norm_pre_max"] == 50.0 and summary["health/clip_ratio_max"] == 5.0
    assert summary["health/cpe_zero_frac"] == 0.0


def test_every_rule_has_a_stop_reason_and_its_own_streak():
    assert {r.stop_reason for r in STEP_RULES} <= set(STOP_REASONS) - {"ok"}
    assert set(HealthMonitor(HealthConfig()).streaks) == {r.name for r in STEP_RULES}
    assert longest_patience(HealthConfig(dead_window=33)) == 33


def test_nonfinite_fires_at_once():
    v = run(HealthMonitor(HealthConfig()), [stats(1), stats(2, loss=math.nan, nonfinite=True)])
    assert v.stop_reason == "nonfinite" and v.step == 2 and "loss" in v.message


def test_grad_norm_needs_patience():
    cfg = HealthConfig(patience=3, grad_growth_factor=1e9)
    seq = [stats(1, grad_norm_pre=2e4), stats(2, grad_norm_pre=2e4), stats(3), stats(4, grad_norm_pre=2e4),
           stats(5, grad_norm_pre=2e4), stats(6, grad_norm_pre=2e4)]
    v = run(HealthMonitor(cfg), seq)
    assert v.rule == "grad_norm" and v.stop_reason == "grad_explosion" and v.step == 6
    assert v.values["grad_norm_pre"] == 2e4


def verdicts(cfg, seq):
    m = HealthMonitor(cfg)
    return [(v.rule, v.step) if v else None for v in map(m.update, seq)]


def test_no_rule_reads_the_clip():
    """Every rule enabled at its default: the same training state (pre-clip norms, losses,
    memory) gets the same verdicts at every clip -- the post-clip norm, the clip flag and the
    pre/post ratio that a clip of 0.1 or 1000 changes are never read. The states include a
    healthy stretch, norms that cross the absolute limit, and one that runs away from its own
    history."""
    import random

    rng = random.Random(0)
    cfg = HealthConfig()
    pre = [rng.uniform(20, 400) for _ in range(60)] + [2e3 * 10 ** (i / 3) for i in range(12)]
    base = [stats(i + 1, grad_norm_pre=g, loss=rng.uniform(1, 3)) for i, g in enumerate(pre)]
    expected = verdicts(cfg, base)
    assert any(expected), "the sequence must trip a rule"
    for clip in (0.1, 1.0, 10.0, 1000.0):
        clipped = [stats(s.step, grad_norm_pre=s.grad_norm_pre, loss=s.loss, grad_norm_post=min(s.grad_norm_pre, clip),
                         clipped=s.grad_norm_pre > clip) for s in base]
        assert verdicts(cfg, clipped) == expected, clip


def test_grad_norm_limit_reads_no_loss_weight():
    """The absolute limit judges the pre-clip norm per unit of loss weight: for any weights (a
    searched DFL weight of 0.25 or 4), a state whose every unweighted term's gradient is within
    the limit never trips it, because ||sum w_i g_i|| / sum w_i <= max ||g_i||. Checked over
    random term gradients (aligned ones included: the worst case) and the hazard space's weights;
    the raw norm would have tripped it."""
    import numpy as np

    rng = np.random.default_rng(0)
    limit = 100.0
    cfg = HealthConfig(grad_norm_max=limit, patience=1, grad_growth_factor=1e12)
    tripped_raw = 0
    for trial in range(300):
        grads = rng.normal(size=(4, 64))
        if trial % 3 == 0:
            grads = np.abs(grads)  # aligned terms: the triangle inequality is nearly tight
        grads *= (rng.uniform(0.05, 1.0, size=(4, 1)) * limit) / np.linalg.norm(grads, axis=1, keepdims=True)
        w = np.array([7.5, 0.5, rng.uniform(0.25, 4.0), 0.5])  # bbox, cls, dfl (searched), cpe
        pre = float(np.linalg.norm(w @ grads))
        tripped_raw += pre > limit
        s = stats(1, grad_norm_pre=pre, loss_weight_sum=float(w.sum()))
        assert HealthMonitor(cfg).update(s) is None, (pre, w)
    assert tripped_raw > 100  # the raw norm's limit would have stopped these healthy states
    blowup = stats(1, grad_norm_pre=1.01 * limit * 9.25, loss_weight_sum=9.25)  # some term's gradient > limit
    v = HealthMonitor(cfg).update(blowup)
    assert v.rule == "grad_norm" and v.values["grad_norm_per_weight"] > limit


def test_validation_memory_is_judged_at_the_end_of_the_epoch():
    """The CUDA peak is reset when an epoch starts, so validation's peak is only seen at the
    epoch's end: the same budgets judge it there."""
    m = HealthMonitor(HealthConfig(mem_budget_gb=1e3), cuda_budget_gb=36.0)
    assert m.end_epoch(1, 10, 2.0, cuda_peak_gb=30.0) is None
    v = m.end_epoch(2, 20, 2.0, cuda_peak_gb=37.0)
    assert v.rule == "cuda_memory_budget" and v.stop_reason == "memory_budget" and v.values["budget_gb"] == 36.0
    m = HealthMonitor(HealthConfig(mem_budget_gb=4.0))
    v = m.end_epoch(1, 10, 2.0, peak_rss_gb=5.0)  # validation's RSS peak, freed by the epoch's end
    assert v.rule == "memory_budget" and v.values["mem_rss_gb"] == 5.0
    assert m.epoch_summary()["health/mem_rss_gb"] == 2.0


def test_history_rules_wait_for_a_fixed_number_of_steps():
    cfg = HealthConfig(patience=5, loss_spike_patience=2, settle_steps=20)
    early = [stats(i, terms={"cls": 1.0 + 10 * (i > 3)}) for i in range(1, 8)]
    assert run(HealthMonitor(cfg), early) is None  # not settled: 7 < 20 steps of history
    seq = [stats(i) for i in range(1, 21)] + [stats(21, terms={"cls": 10.0}), stats(22, terms={"cls": 10.0})]
    v = run(HealthMonitor(cfg), seq)
    assert v.stop_reason == "loss_spike" and v.step == 22 and v.values["unweighted_loss"] == 11.9


def test_loss_spike_reads_unweighted_terms_not_the_weighted_total():
    cfg = HealthConfig(loss_spike_patience=2, settle_steps=5)
    # a higher loss weight multiplies the weighted total; the terms are the same
    seq = [stats(i, loss=2.0 if i < 10 else 40.0) for i in range(1, 30)]
    assert run(HealthMonitor(cfg), seq) is None


def test_dfl_divergence():
    v = run(HealthMonitor(HealthConfig(patience=3, settle_steps=50)),
            [stats(i, terms={"dfl": 11.86}) for i in range(1, 9)])
    assert v.stop_reason == "dfl_divergence" and v.step == 3


def test_dead_detector():
    cfg = HealthConfig(dead_window=10)
    dead = [stats(i) for i in range(1, 4)] + [
        stats(i, num_fg=0, terms={"bbox": 0.0, "dfl": 0.0, "cls": 0.0}, grad_norm_pre=0.007) for i in range(4, 30)]
    v = run(HealthMonitor(cfg), dead)
    assert v.stop_reason == "dead_detector" and v.step == 13 and v.values["detection_loss"] == 0.0
    # a batch of negatives only (no ground truth) has no foreground either: not dead
    negatives = [stats(i, num_fg=0, num_gt=0, terms={"bbox": 0.0, "dfl": 0.0, "cls": 0.0}) for i in range(1, 30)]
    assert run(HealthMonitor(cfg), negatives) is None


def test_cpe_zero_window_and_stage1():
    seq = [stats(i, terms={"cpe": 0.0}, cpe_positives=0) for i in range(1, 30)]
    v = run(HealthMonitor(HealthConfig(cpe_zero_window=20)), seq)
    assert v.stop_reason == "cpe_zero" and v.step == 20
    assert run(HealthMonitor(HealthConfig(cpe_zero_window=20), cpe_active=False), seq) is None
    # one non-zero value in the window resets it
    seq = [stats(i, terms={"cpe": 0.0 if i != 15 else 0.3}) for i in range(1, 30)]
    assert run(HealthMonitor(HealthConfig(cpe_zero_window=20)), seq) is None


def test_memory_budget_and_growth():
    v = run(HealthMonitor(HealthConfig(mem_budget_gb=50.0)), [stats(1), stats(2, mem_rss_gb=62.0)])
    assert v.stop_reason == "memory_budget" and v.values["mem_rss_gb"] == 62.0
    m = HealthMonitor(HealthConfig(mem_budget_gb=1e3), cuda_budget_gb=36.0)  # 0.9 x half of an 80 GB device
    assert m.update(stats(1, mem_cuda_peak_gb=30.0)) is None
    v = m.update(stats(2, mem_cuda_peak_gb=37.0))
    assert v.stop_reason == "memory_budget" and v.values["budget_gb"] == 36.0
    m = HealthMonitor(HealthConfig(mem_growth_pct=20.0, mem_growth_after_epoch=2, mem_budget_gb=1e3))
    assert m.end_epoch(1, 10, 32.0) is None
    assert m.end_epoch(2, 20, 45.0) is None  # epochs 1-2 may grow (caches fill)
    v = m.end_epoch(3, 30, 62.0)
    assert v.stop_reason == "memory_leak" and v.values["growth_pct"] > 20


def test_disabled_monitor_still_stops_on_nonfinite():
    m = HealthMonitor(HealthConfig(enabled=False))
    assert run(m, [stats(i, grad_norm_pre=1e9) for i in range(1, 10)]) is None
    assert m.update(stats(10, nonfinite=True, loss=math.inf)).stop_reason == "nonfinite"


def test_fp16_overflow_skip_is_not_fatal():
    m = HealthMonitor(HealthConfig())
    assert m.update(stats(1, grad_norm_pre=math.inf, grad_norm_post=math.inf, amp_skipped=True)) is None
    assert m.update(stats(2)) is None


def test_state_round_trip_keeps_history():
    m = HealthMonitor(HealthConfig(settle_steps=5))
    run(m, [stats(i) for i in range(1, 30)])
    m2 = HealthMonitor(HealthConfig(settle_steps=5))
    m2.load_state_dict(m.state_dict())
    assert m2.settled and list(m2.grad_norms) == list(m.grad_norms) and m2.streaks == m.streaks
