import pytest

from refdet.metrics import ap50, box_iou, mean_st_iou, recall50, st_iou, top_box

A = (0, 0, 10, 10)
B = (5, 0, 15, 10)  # IoU with A = 50 / 150 = 1/3


def test_st_iou_hand_computed():
    gt = {0: A, 1: A, 2: A}
    pred = {1: A, 2: B, 3: A}  # frame 0 missed, frame 3 false positive
    # numerator: IoU(f1)=1 + IoU(f2)=1/3 ; denominator |{0,1,2,3}| = 4
    assert st_iou(gt, pred) == pytest.approx((1 + 1 / 3) / 4)


def test_st_iou_edge_cases():
    assert st_iou({}, {}) == 1.0  # documented: nothing to find, nothing found
    assert st_iou({0: A}, {}) == 0.0
    assert st_iou({}, {5: A}) == 0.0
    assert st_iou({0: A}, {0: A}) == 1.0
    assert mean_st_iou([({0: A}, {0: A}), ({0: A}, {})]) == 0.5


def test_top_box_uses_highest_score_above_threshold():
    assert top_box([A, B], [0.4, 0.9], 0.25) == B
    assert top_box([A, B], [0.4, 0.2], 0.25) == A
    assert top_box([A, B], [0.1, 0.2], 0.25) is None
    # several predictions in one frame: ST-IoU takes the top one
    pred = {0: top_box([B, A], [0.3, 0.8], 0.25)}
    assert st_iou({0: A}, pred) == 1.0


def test_ap50_never_matches_across_images():
    # Image 0 has a GT at A, image 1 has none; a perfect box *in image 1* must not count.
    preds = [([], []), ([A], [0.9])]
    assert ap50(preds, [[A], []]) == 0.0
    assert ap50([([A], [0.9]), ([], [])], [[A], []]) == pytest.approx(1.0)


def test_ap50_hand_computed():
    # Two GTs in two images. Ranked: TP (0.9), FP (0.8), TP (0.7).
    preds = [([A, (50, 50, 60, 60)], [0.9, 0.8]), ([A], [0.7])]
    # precision at recall 0.5 = 1, at recall 1.0 = 2/3 -> AP = 0.5*1 + 0.5*2/3
    assert ap50(preds, [[A], [A]]) == pytest.approx(0.5 + 1 / 3)
    assert ap50([([B], [0.9])], [[A]]) == 0.0  # IoU 1/3 < 0.5


def test_recall_and_iou():
    assert box_iou(A, B) == pytest.approx(1 / 3)
    assert recall50([[A], [B]], [[A], [A]]) == 0.5
    assert recall50([[]], [[]]) == 0.0
