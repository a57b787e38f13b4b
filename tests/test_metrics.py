"""mIoU from one confusion matrix over the whole split, worked by hand on tiny label maps."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.metrics import ConfusionMatrix, scores_from_confusion

LABELS = torch.tensor([[0, 0, 1, 1],
                       [0, 2, 2, 255]])
PREDICTIONS = torch.tensor([[0, 1, 1, 1],
                            [0, 2, 0, 3]])
# per class (ignored pixel dropped): class 0: 3 labelled, 3 predicted (one of them wrong), 2 right -> IoU 2/4
# class 1: 2 labelled, 3 predicted, 2 right -> 2/3; class 2: 2 labelled, 1 predicted, 1 right -> 1/2
# class 3: never labelled or predicted among the counted pixels (its one prediction is on the ignored pixel)
EXPECTED_IOU = [2 / 4, 2 / 3, 1 / 2]


def matrix() -> ConfusionMatrix:
    confusion = ConfusionMatrix(num_classes=4, ignore_index=255)
    confusion.update(PREDICTIONS, LABELS)
    return confusion


def test_confusion_counts_ground_truth_rows_and_predicted_columns():
    expected = torch.zeros(4, 4, dtype=torch.int64)
    for g, p in ((0, 0), (0, 1), (1, 1), (1, 1), (0, 0), (2, 2), (2, 0)):
        expected[g, p] += 1
    assert torch.equal(matrix().matrix, expected)


def test_absent_class_is_left_out_or_counted_as_zero():
    left_out = matrix().compute("nan_excluded")
    assert left_out.per_class_iou[:3] == pytest.approx(EXPECTED_IOU) and math.isnan(left_out.per_class_iou[3])
    assert left_out.miou == pytest.approx(sum(EXPECTED_IOU) / 3)
    counted = matrix().compute("zero_included")
    assert counted.per_class_iou == pytest.approx([*EXPECTED_IOU, 0.0])
    assert counted.miou == pytest.approx(sum(EXPECTED_IOU) / 4)
    assert left_out.pixel_accuracy == counted.pixel_accuracy == pytest.approx(5 / 7)
    with pytest.raises(ValueError, match="absent_class_policy"):
        matrix().compute("per_image")


def test_scores_accumulate_over_the_split_not_per_batch():
    """Two batches into one matrix give the scores of the concatenated split, not the mean of per-batch scores."""
    whole = matrix()
    split = ConfusionMatrix(num_classes=4)
    split.update(PREDICTIONS[:1], LABELS[:1])
    split.update(PREDICTIONS[1:], LABELS[1:])
    assert torch.equal(split.matrix, whole.matrix)
    first = ConfusionMatrix(num_classes=4)
    first.update(PREDICTIONS[:1], LABELS[:1])
    second = ConfusionMatrix(num_classes=4)
    second.update(PREDICTIONS[1:], LABELS[1:])
    first.merge(second.matrix)
    assert torch.equal(first.matrix, whole.matrix)
    assert scores_from_confusion(first.matrix).miou == pytest.approx(sum(EXPECTED_IOU) / 3)
    # the mean of the two batches' own mIoUs would differ: ((1/2 + 2/3) / 2 + (1/2 + 1/2) / 2) / 2 = 0.5417
    assert scores_from_confusion(first.matrix).miou != pytest.approx(0.5417, abs=1e-3)


def test_an_all_ignored_split_has_no_score():
    confusion = ConfusionMatrix(num_classes=3)
    confusion.update(torch.zeros(2, 2, dtype=torch.int64), torch.full((2, 2), 255))
    scores = confusion.compute()
    assert math.isnan(scores.miou) and math.isnan(scores.pixel_accuracy)


def test_bad_inputs_are_refused():
    confusion = ConfusionMatrix(num_classes=3)
    with pytest.raises(ValueError, match="differ"):
        confusion.update(torch.zeros(2, 2, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion.update(torch.zeros(1, 2, dtype=torch.int64), torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion.update(torch.zeros(1, 2, dtype=torch.int64), torch.tensor([[0, -1]]))
    assert int(confusion.matrix.sum()) == 0
