import pytest
import torch
from torchvision.ops import roi_align

from refdet.config import LossConfig, ModelConfig
from refdet.losses.assigner import TaskAlignedAssigner
from refdet.losses.criterion import build_criterion
from refdet.model import build_model
from refdet.ops.boxes import bbox2dist, decode_boxes, dist2bbox, postprocess
from refdet.ops.roi import roi_mean


def make_batch(n_img=4, size=128, with_targets=True):
    g = torch.Generator().manual_seed(0)
    q = torch.rand(n_img, 3, size, size, generator=g)
    refs = torch.rand(2, 3, 3, 64, 64, generator=g)
    ref_index = torch.tensor([i % 2 for i in range(n_img)])
    boxes = torch.zeros(n_img, 1, 4)
    mask = torch.zeros(n_img, 1, dtype=torch.bool)
    if with_targets:
        for i in range(n_img):
            x, y = 10 + 12 * i, 20 + 5 * i
            boxes[i, 0] = torch.tensor([x, y, x + 40.0, y + 30.0])
            mask[i, 0] = i != 1  # image 1 has no target
    return q, refs, ref_index, {"boxes": boxes, "mask": mask, "object_ids": torch.tensor([5, 9])}


def test_scale_n_query_detector_matches_yolov8n():
    model = build_model(ModelConfig())
    n = model.query_detector_parameters()
    assert 3.0e6 <= n <= 3.2e6, n
    assert model.head.reg_max == 16
    # Strides 8/16/32 and YOLOv8's class-bias prior at 640 px.
    out = model.eval()(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 3, 32, 32))
    assert out["strides"].unique().tolist() == [8.0, 16.0, 32.0]
    bias = model.head.cls[0][-1].bias.item()
    assert bias == pytest.approx(torch.log(torch.tensor(5 / 1 / 80**2)).item(), rel=1e-4)


def test_forward_contract(tiny_model_cfg):
    model = build_model(tiny_model_cfg)
    q, refs, ri, _ = make_batch()
    for mode in (model.train, model.eval):
        mode()
        out = model(q, refs, ri)
        a = (128 // 8) ** 2 + (128 // 16) ** 2 + (128 // 32) ** 2
        assert set(out) == {"box_logits", "cls_logits", "anchors", "strides", "fused_features", "prototypes", "ref_index"}
        assert out["box_logits"].shape == (4, a, 4 * 16)
        assert out["cls_logits"].shape == (4, a, 1)
        assert out["anchors"].shape == (a, 2) and out["strides"].shape == (a, 1)
        assert [f.shape[2] for f in out["fused_features"]] == [16, 8, 4]
        assert [p.shape[0] for p in out["prototypes"]] == [2, 2, 2]


def test_plain_detector_without_references_and_identity_fusion(tiny_model_cfg):
    model = build_model(tiny_model_cfg).eval()
    q, refs, ri, _ = make_batch()
    plain = model(q, None)  # the non-episodic stage 1: no references, no fusion
    assert plain["prototypes"] == [] and plain["ref_index"] is None
    assert plain["cls_logits"].shape == model(q, refs, ri)["cls_logits"].shape
    assert not torch.allclose(model(q, refs, ri)["cls_logits"], plain["cls_logits"])
    model.fusion.reset_to_identity()  # a stage-1 detector entering stage 2
    assert torch.allclose(model(q, refs, ri)["cls_logits"], plain["cls_logits"])
    assert torch.allclose(model(q, refs, ri)["box_logits"], plain["box_logits"])


def test_references_matter_and_get_gradients(tiny_model_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg)  # train mode: BN uses batch statistics
    q = torch.rand(1, 3, 128, 128).expand(2, 3, 128, 128)  # the same query twice
    g = torch.Generator().manual_seed(1)
    refs = torch.stack([torch.rand(3, 3, 64, 64, generator=g) * 0.3, 0.7 + torch.rand(3, 3, 64, 64, generator=g) * 0.3])
    refs.requires_grad_(True)
    out = model(q, refs, torch.tensor([0, 1]))  # conditioned on dark vs bright references
    assert (out["cls_logits"][0] - out["cls_logits"][1]).abs().max() > 1e-3
    assert (out["box_logits"][0] - out["box_logits"][1]).abs().max() > 1e-3
    (out["cls_logits"].sum() + out["box_logits"].sum()).backward()
    assert refs.grad is not None and refs.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.fusion.parameters())


def test_only_query_frames_update_the_shared_batchnorm_statistics(tiny_model_cfg):
    """The references go through the query backbone in train mode (batch statistics, gradients)
    but leave its running statistics to the query frames: after a conditioned forward they are
    exactly those a forward of the query frames alone leaves; the backbone still gets gradients."""
    import copy

    torch.manual_seed(0)
    model = build_model(tiny_model_cfg).train()
    alone = copy.deepcopy(model)
    q, refs, ri, _ = make_batch()
    out = model(q, refs * 0.2 + 0.7, ri)  # bright references: statistics unlike the queries'
    alone.neck(alone.backbone(q))

    def stats(m):
        return {k: v for part in ("backbone", "neck") for k, v in getattr(m, part).state_dict(prefix=part).items()
                if "running_" in k}

    before, after, expected = stats(build_model(tiny_model_cfg)), stats(model), stats(alone)
    assert any(not torch.equal(before[k], after[k]) for k in after)  # the queries did update them
    assert all(torch.equal(after[k], expected[k]) for k in after)
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    counts = {k: v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}
    assert all(int(v) == 1 for k, v in counts.items() if k.startswith(("backbone", "neck")))  # the queries' pass only
    out["cls_logits"].sum().backward()
    assert model.backbone.stem[0].conv.weight.grad is not None


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("shape", [(64, 20), (256, 5)])
def test_fusion_equals_the_concatenated_mix(channels_last, shape):
    """LevelFusion computes q + mix(cat([modulated, corr, cosine], 1)) without the concatenation:
    the same values and gradients as the plain definition, in train and eval mode."""
    import torch.nn.functional as F

    from refdet.model.fusion import LevelFusion

    c, hw = shape
    torch.manual_seed(0)
    level = LevelFusion(c)
    for t in (level.film.weight, level.film.bias, level.mix.bn.weight, level.mix.bn.bias):
        torch.nn.init.normal_(t, std=0.3)

    def definition(q, p):
        gamma, beta = level.film(p).chunk(2, dim=1)
        modulated = q * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
        corr = q * p[:, :, None, None]
        sim = F.cosine_similarity(q, p[:, :, None, None], dim=1, eps=1e-6).unsqueeze(1)
        return q + level.mix(torch.cat([modulated, corr, sim], 1))

    q = torch.randn(3, c, hw, hw)
    q = q.contiguous(memory_format=torch.channels_last) if channels_last else q
    p = torch.randn(3, c)
    p[1] = 0  # a degenerate prototype: cosine 0, no NaN
    g = torch.randn(3, c, hw, hw)
    for mode in (level.train, level.eval):
        mode()
        results = []
        for fn in (definition, level):
            qq, pp = q.clone().requires_grad_(), p.clone().requires_grad_()
            out = fn(qq, pp)
            grads = torch.autograd.grad((out * g).sum(), [qq, pp, *level.parameters()])
            results.append((out, grads))
        (want, want_g), (got, got_g) = results
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
        for a, b in zip(want_g, got_g):
            assert torch.isfinite(b).all() and (b - a).abs().max() <= 1e-5 * a.abs().max() + 1e-6


def test_every_parameter_gets_finite_gradient(tiny_model_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg)
    crit = build_criterion(LossConfig(), model.cfg.reg_max, model.cpe_embed, stage=2)
    q, refs, ri, tg = make_batch()
    loss = crit(model(q, refs, ri), tg)
    loss.total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    # The small boxes of this batch are assigned to P3 only, so the P4/P5 box branches get an
    # exact zero gradient; everything else must receive a non-zero one.
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0 and not n.startswith(("head.box.1", "head.box.2"))]
    assert not zero, zero


def test_empty_targets_give_finite_loss_with_zero_box_terms(tiny_model_cfg):
    model = build_model(tiny_model_cfg)
    crit = build_criterion(LossConfig(), model.cfg.reg_max, model.cpe_embed, stage=2)
    q, refs, ri, tg = make_batch(with_targets=False)
    out = crit(model(q, refs, ri), tg)
    assert torch.isfinite(out.total)
    assert out.terms["bbox"].item() == 0.0 and out.terms["dfl"].item() == 0.0
    assert out.terms["cls"].item() > 0
    assert out.terms["cpe"].item() == 0.0 and out.stats["cpe_positives"].item() == 0
    out.total.backward()  # still differentiable


def test_assigner_batched_equals_per_image():
    torch.manual_seed(1)
    b, a = 3, 84
    anchors = torch.rand(a, 2) * 64
    pd_boxes = torch.cat([anchors - torch.rand(a, 2) * 20, anchors + torch.rand(a, 2) * 20], 1).expand(b, a, 4).clone()
    pd_boxes += torch.rand(b, a, 4)
    pd_scores = torch.rand(b, a, 1)
    gt = torch.tensor([[[5, 5, 40, 40.0], [30, 30, 60, 62]], [[10, 0, 30, 50.0], [0, 0, 0, 0]], [[0, 0, 0, 0.0], [0, 0, 0, 0]]])
    mask = torch.tensor([[True, True], [True, False], [False, False]])
    labels = torch.zeros(b, 2, dtype=torch.long)
    asg = TaskAlignedAssigner(topk=10)
    full = asg(pd_scores, pd_boxes, anchors, labels, gt, mask)
    for i in range(b):
        one = asg(pd_scores[i : i + 1], pd_boxes[i : i + 1], anchors, labels[i : i + 1], gt[i : i + 1], mask[i : i + 1])
        assert torch.equal(one.fg_mask[0], full.fg_mask[i])
        assert torch.allclose(one.target_scores[0], full.target_scores[i])
        assert torch.allclose(one.target_boxes[0][one.fg_mask[0]], full.target_boxes[i][full.fg_mask[i]])
    assert full.fg_mask[0].sum() > 0 and full.fg_mask[2].sum() == 0


@pytest.mark.parametrize("stride,samples,cells,channels_last", [(8, 1, 4, False), (16, 2, 3, True), (32, 1, 1, True)])
def test_roi_mean_equals_torchvision_roi_align_mean(stride, samples, cells, channels_last):
    """Values and gradients, for boxes inside, across and outside the map, tiny and empty sets."""
    g = torch.Generator().manual_seed(stride)
    feat = torch.randn(3, 6, 7, 11, dtype=torch.float64, generator=g)
    if channels_last:
        feat = feat.contiguous(memory_format=torch.channels_last)
    feat.requires_grad_(True)
    size = torch.tensor([11.0, 7.0], dtype=torch.float64) * stride
    boxes = []
    for n in (6, 0, 9):
        xy = torch.rand(n, 2, dtype=torch.float64, generator=g) * size * 1.4 - size * 0.2
        wh = torch.rand(n, 2, dtype=torch.float64, generator=g) * size * 0.7
        boxes.append(torch.cat([xy, xy + wh], 1))
    boxes[2][0] = torch.tensor([-50.0, -50.0, -20.0, -20.0])  # wholly outside: zero
    boxes[2][1] = torch.tensor([30.0, 20.0, 30.0, 20.0])  # a point
    ours = roi_mean(feat, boxes, cells, 1.0 / stride, samples)
    ref = roi_align(feat, boxes, cells, 1.0 / stride, samples, aligned=True).mean((2, 3))
    assert ours.shape == (15, 6)
    torch.testing.assert_close(ours, ref)
    w = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    (g_ours,) = torch.autograd.grad((ours * w).sum(), feat)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), feat)
    torch.testing.assert_close(g_ours, g_ref)
    assert ours[6].abs().sum() == 0


def test_roi_mean_gives_non_finite_boxes_weight_zero():
    feat = torch.randn(1, 4, 5, 5)
    nan, inf = float("nan"), float("inf")
    boxes = [torch.tensor([[nan, 0.0, 10.0, 10.0], [0.0, -inf, 10.0, inf], [0.0, 0.0, 16.0, 16.0]])]
    out = roi_mean(feat, boxes, 4, 1 / 8)
    assert out[:2].abs().sum() == 0 and torch.isfinite(out).all() and out[2].abs().sum() > 0


def test_decode_encode_round_trip():
    anchors = torch.tensor([[4.5, 4.5], [10.5, 3.5]])
    boxes = torch.tensor([[1.0, 2.0, 9.0, 8.0], [7.0, 0.5, 14.0, 6.0]])
    dist = bbox2dist(anchors, boxes, reg_max=16)
    assert torch.allclose(dist2bbox(dist, anchors), boxes)
    # A one-hot DFL distribution decodes to its bin; strides scale to pixels.
    logits = torch.full((1, 1, 4 * 16), -1e4)
    for side, bin_ in enumerate([3, 2, 5, 1]):
        logits[0, 0, side * 16 + bin_] = 1e4
    px = decode_boxes(logits, torch.tensor([[80.0, 80.0]]), torch.tensor([[16.0]]), 16)
    assert torch.allclose(px, torch.tensor([[[80 - 48.0, 80 - 32, 80 + 80, 80 + 16]]]))


def test_postprocess_threshold_and_nms(tiny_model_cfg):
    model = build_model(tiny_model_cfg).eval()
    q, refs, ri, _ = make_batch()
    out = model(q, refs, ri)
    out["cls_logits"] = torch.full_like(out["cls_logits"], -10.0)
    out["cls_logits"][0, :5, 0] = 5.0  # five confident, overlapping-or-not boxes in image 0
    dets = postprocess(out, 16, conf_threshold=0.5)
    assert len(dets) == 4 and all(d["boxes"].shape[0] == 0 for d in dets[1:])
    assert 1 <= dets[0]["boxes"].shape[0] <= 5
    assert (dets[0]["scores"][:-1] >= dets[0]["scores"][1:]).all()


def test_cpe_positive_when_targets_and_gradient_reaches_fusion(tiny_model_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg)
    crit = build_criterion(LossConfig(), model.cfg.reg_max, model.cpe_embed, stage=2)
    q, refs, ri, tg = make_batch()
    out = crit(model(q, refs, ri), tg)
    assert out.stats["cpe_positives"].item() > 0 and out.terms["cpe"].item() > 0
    out.terms["cpe"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fusion.parameters() if p.dim() > 1)
    assert model.cpe_embed.mlp[0].weight.grad.abs().sum() > 0


def test_cpe_exactly_zero_without_positives(tiny_model_cfg):
    model = build_model(tiny_model_cfg)
    crit = build_criterion(LossConfig(cpe_iou_threshold=1.01), model.cfg.reg_max, model.cpe_embed, stage=2)
    q, refs, ri, tg = make_batch()
    out = crit(model(q, refs, ri), tg)
    assert out.terms["cpe"].item() == 0.0 and out.stats["cpe_positives"].item() == 0
    assert out.stats["cpe_proposals"].item() > 0


def test_cpe_refuses_missing_features(tiny_model_cfg):
    model = build_model(tiny_model_cfg)
    crit = build_criterion(LossConfig(), model.cfg.reg_max, model.cpe_embed, stage=2)
    q, refs, ri, tg = make_batch()
    out = model(q, refs, ri)
    del out["fused_features"]
    with pytest.raises(KeyError, match="fused_features"):
        crit(out, tg)


def test_overfit_one_batch_halves_loss(tiny_model_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg)
    crit = build_criterion(LossConfig(), model.cfg.reg_max, model.cpe_embed, stage=2)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    q, refs, ri, tg = make_batch()
    losses = []
    for _ in range(30):
        loss = crit(model(q, refs, ri), tg)
        opt.zero_grad()
        loss.total.backward()
        opt.step()
        losses.append(loss.total.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_loss_scale_independent_of_batch_size(tiny_model_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg).eval()  # eval: BN statistics do not depend on the batch
    crit = build_criterion(LossConfig(cpe_weight=0.0), model.cfg.reg_max, model.cpe_embed, stage=1)
    q, refs, ri, tg = make_batch()
    one = crit(model(q, refs, ri), tg)
    q2, ri2 = torch.cat([q, q]), torch.cat([ri, ri])
    tg2 = {k: torch.cat([v, v]) if k != "object_ids" else v for k, v in tg.items()}
    two = crit(model(q2, refs, ri2), tg2)
    for k in ("bbox", "cls", "dfl"):
        assert two.terms[k].item() == pytest.approx(one.terms[k].item(), rel=1e-4)


@pytest.mark.parametrize("k", [1, 5])
def test_any_number_of_references(tiny_model_cfg, k):
    model = build_model(tiny_model_cfg)
    out = model(torch.rand(2, 3, 64, 64), torch.rand(2, k, 3, 32, 32))
    assert out["cls_logits"].shape[0] == 2 and out["prototypes"][0].shape[0] == 2
