"""Run reports: per-class metrics and the files of a run folder."""

from __future__ import annotations

import math

import torch

from tlkit.report import class_table, per_class_metrics


def test_precision_recall_and_support_from_a_confusion_matrix() -> None:
    matrix = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # class 2 never seen nor predicted
    rows = per_class_metrics(matrix)
    assert rows[0] == {"precision": 5 / 7, "recall": 5 / 6, "support": 6}
    assert rows[1] == {"precision": 3 / 4, "recall": 3 / 5, "support": 5}
    assert math.isnan(rows[2]["precision"]) and math.isnan(rows[2]["recall"])
    table = class_table(["a", "b", "c"], rows)
    assert "| a | 0.714 | 0.833 | 6 |" in table and table.count("\n") == 4
