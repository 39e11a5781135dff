"""Classification and masked-LM metrics as pure functions of predictions and targets.

They take numpy arrays or tensors and return plain Python numbers and lists, so the results go
straight into JSON (`lmforge eval --json`) and metrics.jsonl.
"""

import numpy as np


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def accuracy(predictions, labels) -> float:
    """Share of predictions equal to their label; nan when there are none."""
    predictions, labels = _numpy(predictions), _numpy(labels)
    return float((predictions == labels).mean()) if labels.size else float("nan")


def confusion_matrix(predictions, labels, num_classes: int) -> list[list[int]]:
    """counts[true][predicted], a num_classes x num_classes list of lists."""
    predictions, labels = _numpy(predictions).ravel(), _numpy(labels).ravel()
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (labels, predictions), 1)
    return counts.tolist()


def per_class_scores(confusion: list[list[int]]) -> list[dict]:
    """Precision, recall, F1 and support of each class from a confusion matrix (0.0 where a
    denominator is zero, as scikit-learn's zero_division=0)."""
    counts = np.asarray(confusion, dtype=np.float64)
    true_pos = np.diag(counts)
    predicted, actual = counts.sum(axis=0), counts.sum(axis=1)
    scores = []
    for c in range(len(counts)):
        precision = true_pos[c] / predicted[c] if predicted[c] else 0.0
        recall = true_pos[c] / actual[c] if actual[c] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append(
            {
                "precision": float(precision),
                "recall": float(recall),
                "f1": float(f1),
                "support": int(actual[c]),
            }
        )
    return scores


def classification_report(
    predictions, labels, label_names: list[str] | None = None, num_classes: int | None = None
) -> dict:
    """accuracy, macro_f1, per-class precision/recall/F1/support and the confusion matrix.

    Example:
        report = classification_report([0, 1, 1], [0, 1, 0], ["neg", "pos"])
        report["accuracy"], report["per_class"]["pos"]["precision"]  # 0.667, 0.5
    """
    predictions, labels = _numpy(predictions).ravel(), _numpy(labels).ravel()
    if num_classes is None:
        num_classes = (
            len(label_names)
            if label_names
            else int(max(predictions.max(initial=0), labels.max(initial=0))) + 1
        )
    names = label_names or [str(c) for c in range(num_classes)]
    confusion = confusion_matrix(predictions, labels, num_classes)
    scores = per_class_scores(confusion)
    return {
        "accuracy": accuracy(predictions, labels),
        "macro_f1": float(np.mean([s["f1"] for s in scores])) if scores else float("nan"),
        "examples": int(labels.size),
        "per_class": dict(zip(names, scores)),
        "labels": list(names),
        "confusion_matrix": confusion,
    }


def constant_predictions(counts, label_names: list[str] | None = None) -> str | None:
    """A one-line warning when a classifier predicted the same class for every example (counts:
    predictions per class), else None."""
    counts = _numpy(counts)
    used = np.flatnonzero(counts)
    if len(used) != 1 or counts.sum() < 2 or len(counts) < 2:
        return None
    name = label_names[used[0]] if label_names else str(used[0])
    return (
        f"the classifier predicts class {name!r} for all {int(counts.sum())} examples: it has "
        "not learned to tell the classes apart (train longer, or check --lr and --warmup-steps)"
    )


def masked_accuracy(logits, targets, weights) -> float:
    """Weighted share of argmax(logits) == targets: the masked-LM accuracy of KerasHub.

    Args:
        logits: (..., V) scores; targets: (...) ids; weights: (...) 1 for real selections,
            0 for padding slots (any non-negative weights are allowed).
    """
    logits, targets, weights = _numpy(logits), _numpy(targets), _numpy(weights).astype(np.float64)
    hits = (logits.argmax(axis=-1) == targets).astype(np.float64)
    total = weights.sum()
    return float((hits * weights).sum() / total) if total > 0 else float("nan")


def predict_labels(task, examples, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, float]:
    """Run a classifier over an example set in order: (predicted ids, true ids, mean loss).

    Args:
        examples: an example set (`len()`, `get(indices)`) whose batches hold "labels" (N,).
    """
    import torch
    import torch.nn.functional as F

    from lmforge import progress
    from lmforge.data.batching import iterate_in_order

    was_training = task.training
    task.eval()
    dev = next(task.parameters()).device
    predicted, true, loss_sum = [], [], 0.0
    with torch.inference_mode(), progress.bar(len(examples), "eval", "ex", leave=False) as pbar:
        for batch in iterate_in_order(examples, batch_size):
            pbar.update(len(batch["labels"]))
            batch = {k: v.to(dev) for k, v in batch.items()}
            labels = batch.pop("labels")
            logits = task(**batch).float()
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            predicted.append(logits.argmax(-1).cpu().numpy())
            true.append(labels.cpu().numpy())
    task.train(was_training)
    if not true:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), float("nan")
    true_ids = np.concatenate(true)
    return np.concatenate(predicted), true_ids, loss_sum / len(true_ids)
