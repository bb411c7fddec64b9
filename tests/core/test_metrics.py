import numpy as np
import pytest
import torch

from naic_seg.core.metrics import confusion_matrix, scores


def test_confusion_matrix_and_scores_match_a_hand_computed_example():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm = confusion_matrix(pred, target, 3)
    # truth 0: pred 0,1 | truth 1: pred 1,1,1 | truth 2: pred 2,0 | the 255 pixel is left out
    assert cm.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    result = scores(cm, ["a", "b", "c"])
    iou = [1 / (2 + 2 - 1), 3 / (3 + 4 - 3), 1 / (2 + 1 - 1)]
    assert result["per_class_IoU"] == pytest.approx(dict(zip("abc", iou, strict=True)))
    assert result["mIoU"] == pytest.approx(np.mean(iou))
    assert result["FWIoU"] == pytest.approx(2 / 7 * iou[0] + 3 / 7 * iou[1] + 2 / 7 * iou[2])
    assert result["pixel_accuracy"] == pytest.approx(5 / 7)
    assert result["pixels"] == 7


def test_a_class_absent_from_truth_and_prediction_is_left_out_of_miou():
    cm = np.array([[5, 0, 0], [0, 5, 0], [0, 0, 0]])
    result = scores(cm)
    assert result["mIoU"] == 1.0 and result["per_class_IoU"]["2"] is None
