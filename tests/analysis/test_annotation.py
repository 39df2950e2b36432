import numpy as np
import pytest

from cellvi.analysis.annotation import label_agreement


def test_counts_accuracy_and_f1_by_hand():
    given = ["a", "a", "a", "b", "b", "c"]
    predicted = ["a", "a", "b", "b", "b", "a"]
    scores = label_agreement(given, predicted, classes=["a", "b", "c"])
    assert scores.given_classes == ["a", "b", "c"]
    np.testing.assert_array_equal(scores.confusion, [[2, 1, 0], [0, 2, 0], [1, 0, 0]])
    assert scores.accuracy == pytest.approx(4 / 6)
    # a: tp 2, 3 given, 3 predicted -> 4/6; b: tp 2, 2 given, 3 predicted -> 4/5; c: 0
    assert scores.f1 == pytest.approx({"a": 4 / 6, "b": 4 / 5, "c": 0.0})
    assert scores.macro_f1 == pytest.approx((4 / 6 + 4 / 5) / 3)


def test_given_labels_the_model_cannot_predict_get_their_own_row():
    scores = label_agreement(["a", "x"], ["a", "a"], classes=["a", "b"])
    assert scores.given_classes == ["a", "x"] and scores.predicted_classes == ["a", "b"]
    assert scores.f1["x"] == 0.0 and scores.confusion.sum() == 2


def test_mismatched_or_empty_input_is_refused():
    with pytest.raises(ValueError, match="2 given labels for 1"):
        label_agreement(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no cells"):
        label_agreement([], [])
