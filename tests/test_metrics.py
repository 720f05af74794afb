"""Metrics on hand-computed cases: Hungarian/majority mIoU, cluster accuracy, NMI, ARI, CorLoc."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from maskdistill import cli
from maskdistill.metrics import (
    box_class,
    box_iou,
    cluster_scores,
    confusion_matrix,
    corloc_hit,
    match_labels,
    metrics_markdown,
    semantic_scores,
)

NAMES3 = ("background", "cat", "dog")

# Hand-made 3-class case. Rows GT 0/1/2, columns predicted labels 0/1/2:
#   GT 0: 1 x label 0, 1 x label 1; GT 1: 2 x label 1; GT 2: 1 x label 2, 1 x label 0.
# Identity matching is optimal (4 matched pixels), so IoU0 = 1 / (2 + 2 - 1) = 1/3,
# IoU1 = 2 / (2 + 3 - 2) = 2/3, IoU2 = 1 / (2 + 1 - 1) = 1/2, mIoU = 1/2.
GT3 = np.array([[0, 0, 1], [1, 2, 2]], dtype=np.uint8)
PRED3 = np.array([[0, 1, 1], [1, 2, 0]], dtype=np.uint8)


def scores_of(gt, pred, num_classes, num_labels, names):
    return semantic_scores(confusion_matrix(gt, pred, num_classes, num_labels), names)


def test_confusion_matrix_counts_pixels_by_gt_row_and_prediction_column():
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    np.testing.assert_array_equal(confusion_matrix(GT3, PRED3, 3, 3), expected)


def test_permuted_prediction_scores_100_percent():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, size=(2, 30, 40)).astype(np.uint8)
    permutation = np.array([3, 0, 4, 1, 2])
    # streamed image by image: the matrices add up
    confusion = sum(confusion_matrix(g, permutation[g], 5, 5) for g in gt)
    scores = semantic_scores(confusion, [f"c{i}" for i in range(5)])
    assert scores["miou"] == 1.0
    assert scores["pixel_accuracy"] == 1.0
    assert scores["matching"] == {str(permutation[c]): f"c{c}" for c in range(5)}


def test_hand_computed_three_class_ious():
    scores = scores_of(GT3, PRED3, 3, 3, NAMES3)
    assert scores["per_class_iou"] == pytest.approx({"background": 1 / 3, "cat": 2 / 3, "dog": 0.5})
    assert scores["miou"] == pytest.approx(0.5)
    assert scores["pixel_accuracy"] == pytest.approx(4 / 6)
    assert scores["num_pixels"] == 6


def test_hand_computed_case_survives_relabelling():
    relabel = np.array([2, 0, 1])  # label 0 -> 2, 1 -> 0, 2 -> 1
    scores = scores_of(GT3, relabel[PRED3], 3, 3, NAMES3)
    assert scores["miou"] == pytest.approx(0.5)
    assert scores["matching"] == {"2": "background", "0": "cat", "1": "dog"}


def test_ignore_label_pixels_are_not_counted():
    gt = np.concatenate([GT3, np.full((1, 3), 255, np.uint8)])
    pred = np.concatenate([PRED3, np.array([[2, 2, 1]], np.uint8)])
    assert confusion_matrix(gt, pred, 3, 3).sum() == 6
    assert scores_of(gt, pred, 3, 3, NAMES3)["per_class_iou"] == pytest.approx(
        {"background": 1 / 3, "cat": 2 / 3, "dog": 0.5}
    )


def test_majority_vote_when_over_clustering():
    # labels 0 and 1 both fall mostly on class 0, label 2 on class 1
    gt = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 1, 1, 1, 2])
    np.testing.assert_array_equal(match_labels(confusion_matrix(gt, pred, 2, 3)), [0, 0, 1])
    scores = scores_of(gt, pred, 2, 3, ("a", "b"))
    # class 0 predicted on pixels 0-4 (4 right), class 1 on pixel 5 (1 right, 1 missed)
    assert scores["per_class_iou"] == pytest.approx({"a": 4 / 5, "b": 1 / 2})
    split = scores_of(np.array([0, 0, 0, 1, 1, 1]), np.array([0, 1, 1, 2, 3, 3]), 2, 4, "ab")
    assert split["miou"] == 1.0


def test_fewer_labels_than_classes_leaves_classes_unmatched():
    gt = np.array([0, 0, 1, 1, 2])
    pred = np.array([1, 1, 0, 0, 0])
    scores = scores_of(gt, pred, 3, 2, ("a", "b", "c"))
    assert scores["per_class_iou"] == pytest.approx({"a": 1.0, "b": 2 / 3, "c": 0.0})


def test_class_absent_everywhere_has_no_iou_and_is_left_out_of_the_mean():
    scores = scores_of(np.array([0, 1]), np.array([0, 1]), 3, 3, ("a", "b", "c"))
    assert scores["per_class_iou"] == {"a": 1.0, "b": 1.0, "c": None}
    assert scores["miou"] == 1.0


def test_bad_labels_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2, 2)
    with pytest.raises(ValueError, match="predicted label 5"):
        confusion_matrix(np.zeros(3), np.array([0, 1, 5]), 2, 2)
    with pytest.raises(ValueError, match="ground-truth class 7"):
        confusion_matrix(np.array([0, 7, 255]), np.zeros(3), 2, 2)


def test_cluster_accuracy_nmi_ari_hand_case():
    clusters = np.array([0, 0, 1, 1, 2, 2])
    classes = np.array([1, 1, 0, 0, 2, 0])
    scores = cluster_scores(clusters, classes, 3, ("a", "b", "c"))
    # Hungarian: cluster 0 -> b (2), cluster 1 -> a (2), cluster 2 -> c (1): 5 of 6
    assert scores["accuracy"] == pytest.approx(5 / 6)
    assert scores["matching"] == {"0": "b", "1": "a", "2": "c"}
    # ARI: sum C(n_ij, 2) = 2, rows 4, columns 3, C(6, 2) = 15 -> (2 - 0.8) / (3.5 - 0.8) = 4/9
    assert scores["ari"] == pytest.approx(4 / 9)
    # NMI (arithmetic mean): MI = log3 / 2 + log2 / 3,
    # H(classes) = 2/3 log2 + 1/2 log3, H(clusters) = log3
    nmi = (6 * math.log(3) + 4 * math.log(2)) / (4 * math.log(2) + 9 * math.log(3))
    assert scores["nmi"] == pytest.approx(nmi)
    assert scores["num_objects"] == 6


def test_cluster_accuracy_majority_vote_when_more_clusters_than_classes():
    scores = cluster_scores(np.array([0, 1, 2, 3, 3]), np.array([0, 0, 1, 1, 0]), 4, ("a", "b"))
    # clusters 0, 1 -> a; 2 -> b; 3 ties between a and b -> a (first): 4 of 5 right
    assert scores["accuracy"] == pytest.approx(4 / 5)
    assert scores["matching"] == {"0": "a", "1": "a", "2": "b", "3": "a"}


def test_cluster_scores_of_a_perfect_relabelling():
    scores = cluster_scores(np.array([2, 2, 0, 1]), np.array([0, 0, 1, 2]), 3, ("a", "b", "c"))
    assert (scores["accuracy"], scores["nmi"], scores["ari"]) == pytest.approx((1, 1, 1))


def test_box_iou_exclusive_ends():
    iou = box_iou(np.array([[0, 0, 2, 2]]), np.array([[1, 1, 2, 2], [2, 0, 2, 2], [0, 0, 2, 2]]))
    np.testing.assert_allclose(iou, [[1 / 7, 0.0, 1.0]])
    assert box_iou(np.array([0, 0, 0, 0]), np.array([0, 0, 0, 0]))[0, 0] == 0.0


@pytest.mark.parametrize(("width", "hit"), [(49, False), (50, True), (51, True)])
def test_corloc_threshold(width, hit):
    gt = np.array([[300, 300, 10, 10], [10, 20, 100, 100]])
    # same top-left corner and height, narrower: IoU = width / 100 with the second box
    assert box_iou(np.array([10, 20, width, 100]), gt)[0, 1] == pytest.approx(width / 100)
    assert corloc_hit((10, 20, width, 100), gt) is hit


def test_corloc_misses_without_a_box_or_a_mask():
    assert corloc_hit((0, 0, 10, 10), np.zeros((0, 4))) is False
    assert corloc_hit((0, 0, 0, 0), np.array([[0, 0, 10, 10]])) is False


def test_box_class_takes_the_best_overlapping_box():
    gt = np.array([[0, 0, 10, 10], [5, 5, 10, 10]])
    assert box_class((6, 6, 9, 9), gt, [3, 7]) == 7
    assert box_class((0, 0, 9, 9), gt, [3, 7]) == 3
    with pytest.raises(ValueError):
        box_class((0, 0, 9, 9), np.zeros((0, 4)), [])


def test_markdown_tables_show_percentages_and_class_names():
    reports = [
        {"title": "discover", "split": "val", "num_images": 4, "summary": {"CorLoc": 0.5}},
        {
            "title": "cluster",
            "split": "val",
            "num_images": 4,
            "summary": {"mIoU": 0.25, "accuracy": None},
            "per_class_iou": {"background": 0.5, "cat": None},
        },
    ]
    text = metrics_markdown(reports)
    assert "| discover | CorLoc | 50.0 | val | 4 |" in text
    assert "| cluster | mIoU | 25.0 | val | 4 |" in text
    assert "| cluster | accuracy | n/a | val | 4 |" in text
    assert "| class | cluster IoU % |" in text
    assert "| background | 50.0 |" in text
    assert "| cat | n/a |" in text


def _ablation(folder, rows: list[tuple[str, float | None]]) -> str:
    """A run folder whose evaluate/ablation.json holds ``rows`` (title, mIoU fraction)."""
    path = folder / "evaluate" / "ablation.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"rows": [{"title": t, "miou": m} for t, m in rows]}))
    return str(folder)


def test_compare_puts_runs_side_by_side_and_plots_each_stage_against_the_setting(tmp_path):
    low = _ablation(tmp_path / "tau05", [("stage 2: cluster", 0.296), ("stage 5: segment", 0.35)])
    high = _ablation(tmp_path / "tau09", [("stage 2: cluster", 0.296), ("stage 5: segment", 0.4),
                                          ("linear probe", 0.5)])  # fmt: skip
    out = tmp_path / "sweep"
    cli.main(["evaluate", "compare", "--setting", "select.tau", "--run", f"0.5={low}",
              f"0.9={high}", "--out-dir", str(out)])  # fmt: skip
    table = (out / "compare.md").read_text()
    columns = ["stage 2: cluster", "stage 5: segment", "linear probe"]
    assert "| select.tau | " + " | ".join(f"{c} mIoU %" for c in columns) + " |" in table
    assert "| 0.5 | 29.6 | 35.0 | n/a |" in table and "| 0.9 | 29.6 | 40.0 | 50.0 |" in table
    first = np.asarray(Image.open(out / "compare.png"))
    assert first.ndim == 3 and first.shape[2] == 3
    cli.main(["evaluate", "compare", "--setting", "select.tau", "--run", f"0.5={low}",
              f"0.9={low}", "--out-dir", str(tmp_path / "other")])  # fmt: skip
    assert not np.array_equal(first, np.asarray(Image.open(tmp_path / "other" / "compare.png")))
    with pytest.raises(SystemExit):  # a folder without an ablation table, named
        cli.main(["evaluate", "compare", "--setting", "k", "--run", f"4={tmp_path}",
                  "--out-dir", str(tmp_path / "x")])  # fmt: skip
