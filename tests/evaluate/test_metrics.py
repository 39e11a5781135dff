"""Classification metrics, masked accuracy and predict_labels."""

import math

import numpy as np
import pytest
import torch

from lmforge.evaluate.metrics import (
    accuracy,
    classification_report,
    confusion_matrix,
    constant_predictions,
    masked_accuracy,
    per_class_scores,
    predict_labels,
)
from lmforge.models.bert import BertConfig, BertTextClassifier
from lmforge.tokenizers.packing import PackedExamples, StartEndPacker


def test_accuracy_and_confusion_matrix():
    predicted, true = [0, 1, 1, 2, 2, 2], [0, 1, 0, 2, 1, 2]
    assert accuracy(predicted, true) == pytest.approx(4 / 6)
    assert confusion_matrix(predicted, true, 3) == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]
    assert math.isnan(accuracy([], []))


def test_per_class_precision_recall_f1_by_hand():
    scores = per_class_scores([[1, 1, 0], [0, 1, 1], [0, 0, 2]])
    # class 1: predicted twice (1 right), present twice (1 right)
    assert scores[1] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    # class 2: precision 2/3, recall 1
    assert scores[2]["precision"] == pytest.approx(2 / 3) and scores[2]["recall"] == 1.0
    assert scores[2]["f1"] == pytest.approx(0.8)
    # a class never predicted and never present scores 0, not nan
    assert per_class_scores([[2, 0], [0, 0]])[1] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
    }


def test_classification_report_names_classes_and_takes_tensors():
    report = classification_report(torch.tensor([0, 1, 1]), np.array([0, 1, 0]), ["neg", "pos"])
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["per_class"]["pos"]["precision"] == pytest.approx(0.5)
    assert report["confusion_matrix"] == [[1, 1], [0, 1]]
    assert report["labels"] == ["neg", "pos"] and report["examples"] == 3


def test_masked_accuracy_ignores_zero_weights():
    logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]])  # argmax 1, 0, 0
    targets = torch.tensor([[1, 1, 0]])
    assert masked_accuracy(logits, targets, torch.tensor([[1.0, 1.0, 0.0]])) == 0.5
    assert masked_accuracy(logits, targets, torch.tensor([[1.0, 0.0, 1.0]])) == 1.0
    assert math.isnan(masked_accuracy(logits, targets, torch.zeros(1, 3)))


def test_predict_labels_matches_the_model_in_order():
    model = BertTextClassifier(BertConfig(vocab_size=50, max_seq_len=16), num_classes=3).eval()
    packed = StartEndPacker(16, 1, 2)([np.arange(5, 5 + n) for n in range(3, 13)])
    labels = np.arange(10) % 3
    examples = PackedExamples({**packed, "labels": labels}, dynamic=False)
    predicted, true, loss = predict_labels(model, examples, batch_size=4)
    with torch.no_grad():
        logits = model(
            torch.from_numpy(packed["token_ids"]), torch.from_numpy(packed["padding_mask"])
        )
    assert predicted.tolist() == logits.argmax(-1).tolist() and true.tolist() == labels.tolist()
    expected = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)).item()
    assert loss == pytest.approx(expected, rel=1e-5)


def test_constant_predictions_are_named_and_varied_ones_are_not():
    assert "class 'pos' for all 7 examples" in constant_predictions([0, 7], ["neg", "pos"])
    assert constant_predictions([3, 4]) is None  # both classes come out
    assert constant_predictions([0, 1]) is None  # one example says nothing
