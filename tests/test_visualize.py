"""Pictures: overlays with known pixels, sheet sizes, the legend, the fixed sample, the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from maskdistill import cli
from maskdistill.masks import encode_rle, write_label_png
from maskdistill.pictures import charts, drawing, sheets


def _image(height: int = 20, width: int = 30) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_an_overlay_blends_the_mask_pixels_and_leaves_the_rest_untouched():
    image = _image()
    mask = np.zeros(image.shape[:2], bool)
    mask[5:9, 10:20] = True
    out = drawing.overlay(image, mask, (255, 40, 40), alpha=0.5)
    expected = np.rint(0.5 * image[mask] + 0.5 * np.array([255, 40, 40])).astype(np.uint8)
    assert np.array_equal(out[mask], expected)
    assert np.array_equal(out[~mask], image[~mask])
    assert np.array_equal(image, _image())  # the input is not modified


def test_a_label_overlay_colours_each_label_with_its_palette_colour_and_skips_background():
    image = np.zeros((4, 4, 3), np.uint8)
    labels = np.array([[0, 1, 1, 0], [0, 2, 2, 0], [0, 0, 0, 0], [255, 0, 0, 0]])
    out = drawing.label_overlay(image, labels, alpha=1.0)
    assert tuple(out[0, 1]) == (128, 0, 0) and tuple(out[1, 1]) == (0, 128, 0)  # VOC palette
    assert tuple(out[3, 0]) == (224, 224, 192)  # ignored
    assert not out[labels == 0].any()


def test_a_box_outline_has_exclusive_ends():
    out = drawing.draw_box(np.zeros((10, 10, 3), np.uint8), (2, 3, 4, 5), (9, 9, 9), width=1)
    drawn = out[:, :, 0] > 0
    rows, cols = np.nonzero(drawn)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (3, 7, 2, 5)
    assert not drawn[4:7, 3:5].any()  # only the outline


def test_a_contact_sheet_has_the_specified_size_and_its_panels_at_their_places():
    a, b = _image(20, 30), _image(20, 10)
    legend = [(1, "cluster_00"), (2, "cluster_01")]
    sheet = drawing.contact_sheet([[a, b], [b, a]], ["x", "y"], legend, height=20, gap=4)
    height = drawing.TITLE_HEIGHT + 2 * (20 + 4) + 4 + 2 * drawing.LEGEND_ROW + 4
    assert sheet.shape == (height, 4 + 30 + 4 + 30 + 4, 3)
    top = drawing.TITLE_HEIGHT + 4
    assert np.array_equal(sheet[top : top + 20, 4:34], a)
    assert np.array_equal(sheet[top + 24 : top + 44, 38:68], a)  # the second row's second cell
    assert np.array_equal(sheet[top + 24 : top + 44, 4:14], b)
    legend_top = top + 2 * 24
    for i, (label, _) in enumerate(legend):  # the legend swatches, in the labels' colours
        y = legend_top + i * drawing.LEGEND_ROW + 4
        assert tuple(sheet[y, 8]) == drawing.label_colour(label)


def test_the_legend_lists_every_cluster_with_its_matched_class():
    legend = drawing.cluster_legend(3, {"0": "background", "1": "cat", "3": "dog"})
    assert legend == [(1, "cluster_00 = cat"), (2, "cluster_01"), (3, "cluster_02 = dog")]
    assert drawing.cluster_legend(2, class_names=["cat"]) == [
        (1, "cluster_00 [ground truth: cat]"),
        (2, "cluster_01"),
    ]
    assert drawing.cluster_legend(0, class_names=["cat"]) == [(1, "[ground truth: cat]")]


def test_the_sample_is_fixed_by_the_seed_and_stable_when_images_are_added():
    names = [f"img_{i:03d}.jpg" for i in range(50)]
    first = sheets.sample(names, 6, seed=3)
    assert first == sheets.sample(list(reversed(names)), 6, seed=3) == sorted(first)
    assert len(first) == 6 and first != sheets.sample(names, 6, seed=4)
    grown = sheets.sample(names + ["new.jpg"], 6, seed=3)
    assert len(set(grown) - set(first)) <= 1  # at most the new image replaces one


def _data(height: int = 24, width: int = 32) -> sheets.ImageData:
    image = _image(height, width)
    mask = np.zeros((height, width), bool)
    mask[4:12, 6:20] = True
    return sheets.ImageData("a.jpg", image, pseudo=(mask, 2))


def test_a_stage_sheet_keeps_the_columns_that_have_data_and_paints_the_pseudo_class():
    data = _data()
    sheet = sheets.stage_sheet("cluster", [data], drawing.cluster_legend(2), height=24)
    top, left = drawing.TITLE_HEIGHT + 4, 4 + 32 + 4  # the pseudo-class column
    panel = sheet[top : top + 24, left : left + 32]
    mask = data.pseudo[0]
    expected = drawing.overlay(data.image, mask, drawing.label_colour(2))
    assert np.array_equal(panel, expected)
    assert np.array_equal(panel[~mask], data.image[~mask])
    # image and pseudo class; no ground-truth column (the image has none)
    assert sheet.shape[1] == 4 + 32 + 4 + 32 + 4
    with pytest.raises(ValueError, match="expected one of"):
        sheets.stage_sheet("nope", [data])


def test_plots_render_to_rgb_arrays_that_depend_on_the_data_alone():
    """Each plot: an RGB uint8 array, identical for the same data, different for other data."""
    drawings = [
        (charts.miou_bars, [("stage 2: cluster", 0.2, 39.0), ("stage 5: segment", 0.3, 45.8)]),
        (charts.miou_bars, [("stage 2: cluster", 0.2, 39.0), ("stage 5: segment", 0.5, 45.8)]),
        (charts.score_histogram, [0.1, 0.5, 0.95], 0.9),
        (charts.score_histogram, [0.1, 0.5, 0.95], 0.5),
        (charts.size_bars, [3, 1], ["cluster_00", "cluster_01"]),
        (charts.size_bars, [1, 3], ["cluster_00", "cluster_01"]),
        (charts.training_curves, {"distill": [{"step": 1, "loss": 2.0, "lr": 0.1}]}),
        (charts.training_curves, {"distill": [{"step": 1, "loss": 1.0, "lr": 0.1}]}),
        (charts.confusion_heatmap, np.array([[3, 1], [0, 2]]), ["bg", "cat"], ["0", "1"]),
        (charts.confusion_heatmap, np.array([[1, 3], [2, 0]]), ["bg", "cat"], ["0", "1"]),
    ]
    for (draw, *data), (_, *other) in zip(drawings[::2], drawings[1::2], strict=True):
        picture = draw(*data)
        assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
        assert np.array_equal(picture, draw(*data)), draw.__name__
        changed = draw(*other)
        assert changed.shape != picture.shape or not np.array_equal(changed, picture), draw


def test_the_command_draws_every_stage_and_the_plots(tmp_path):
    data = tmp_path / "demo"
    cli.main(["make-demo-data", "--out", str(data), "--num-train", "3", "--num-val", "3"])
    from maskdistill.data import open_dataset

    dataset = open_dataset({"kind": "voc", "root": str(data)}, ["val"])
    coco = {"images": [], "annotations": [], "categories": [{"id": 1}, {"id": 2}]}
    predictions = []
    for i, record in enumerate(dataset.records()):
        coco["images"].append({"id": i, "file_name": record.file_name,
                               "height": record.height, "width": record.width})  # fmt: skip
        mask, _ = dataset.instance_masks(record)[0]
        rle = encode_rle(mask)
        coco["annotations"].append({"id": i, "image_id": i, "category_id": 1 + i % 2,
                                    "segmentation": rle, "area": int(mask.sum()),
                                    "bbox": [0, 0, 1, 1], "iscrowd": 0})  # fmt: skip
        predictions.append({"image_id": i, "file_name": record.file_name, "category_id": 1,
                            "segmentation": rle, "score": 0.5 + 0.1 * i})  # fmt: skip
        write_label_png(tmp_path / "maps" / f"{record.file_name.rsplit('.', 1)[0]}.png",
                        mask.astype(np.uint8))  # fmt: skip
    (tmp_path / "pseudo.json").write_text(json.dumps(coco))
    (tmp_path / "predictions.json").write_text(json.dumps(predictions))
    common = ["--images", str(data), "--dataset-kind", "voc", "--splits", "val"]
    maps = str(tmp_path / "maps")
    inputs = ["--pseudo-gt", str(tmp_path / "pseudo.json"),
              "--predictions", str(tmp_path / "predictions.json"),
              "--selected", maps, "--segmented", maps]  # fmt: skip
    for stage in ("cluster", "distill", "select", "segment", "overview"):
        out = tmp_path / f"sheet-{stage}.png"
        cli.main(["visualize", "sheet", "--stage", stage, *common, *inputs,
                  "--count", "2", "--height", "32", "--out", str(out)])  # fmt: skip
        sheet = np.asarray(Image.open(out))
        rows = 2 * (32 + 4) + 4 + drawing.TITLE_HEIGHT
        # 2 images; a legend line per label: 2 clusters, the demo's 6 classes
        assert sheet.shape[0] == rows + 6 * drawing.LEGEND_ROW + 4
    log = tmp_path / "train.jsonl"
    log.write_text('{"step": 1, "loss": 1.0, "lr": 0.1}\n{"step": 2, "loss": 0.5, "lr": 0.1}\n')
    cli.main(["visualize", "plots", "--pseudo-gt", str(tmp_path / "pseudo.json"),
              "--predictions", str(tmp_path / "predictions.json"), "--tau", "0.6",
              "--logs", f"distill={log}", "--out-dir", str(tmp_path / "plots")])  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "cluster_sizes.png",
        "scores.png",
        "training.png",
    ]


def test_the_miou_plot_and_the_ablation_table_name_the_paper_rows_alike(tmp_path):
    """The last CRF round with CRF is the paper's "stage 5 with CRF rounds" row in both."""
    import argparse

    from maskdistill.commands.visualize import _stage_rows
    from maskdistill.metrics import ablation_rows
    from maskdistill.paper import VOC12_MIOU

    titles = ["stage 2: cluster", "stage 5: segment, CRF round 1 with CRF", "selection stats"]
    paths = []
    for i, title in enumerate(titles):
        summary = {} if title == "selection stats" else {"mIoU": 0.1 * (i + 1)}
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps({"title": title, "num_images": 3, "summary": summary}))
    rows = _stage_rows(argparse.Namespace(reports=[str(p) for p in paths], paper="voc12"))
    assert rows == [(titles[0], 0.1, 39.0), (titles[1], 0.2, VOC12_MIOU["stage 5 with CRF rounds"])]
    table = ablation_rows([json.loads(p.read_text()) for p in paths], VOC12_MIOU)
    assert [(r["title"], r["miou"], r["paper"]) for r in table] == rows
