"""``eacnet eval``: same numbers as the inference path, report files, and clear errors."""

from __future__ import annotations

import json
import logging
import multiprocessing
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from real_data import REAL_CAMVID, needs_real_camvid

from eacnet_core.data.classes import CAMVID
from eacnet_core.data.datasets import DatasetError, camvid, image_folder
from eacnet_core.evaluate.evaluation import eval_loader, evaluate_model, plot_per_class, predict_to_label_size
from eacnet_core.evaluate.metrics import ConfusionMatrix
from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions
from eacnet_core.models import build_model
from eacnet_ros.cli import main as cli_main


def _segmenter_confusion(weights: Path, dataset, size: tuple[int, int] = (0, 0)) -> ConfusionMatrix:
    """The reference: the deployed inference path, one image at a time."""
    seg = Segmenter.from_checkpoint(weights, SegmenterOptions(device="cpu", channels_last=False,
                                                              inference_height=size[0], inference_width=size[1]))
    cm = ConfusionMatrix(CAMVID.num_classes, CAMVID.ignore_index)
    for i in range(len(dataset)):
        image, label = dataset.load(i)
        cm.update(seg.segment(image), label)
    return cm


@pytest.mark.parametrize("size", [(0, 0), (24, 40)])
def test_eval_equals_the_inference_path(shared_checkpoint, tmp_path, synthetic, capsys, size):
    root = synthetic.camvid(tmp_path / "CamVid", {"val": 3})
    weights = shared_checkpoint
    out = tmp_path / "report.json"
    args = ["eval", "--weights", str(weights), "--data-root", str(root), "--json", str(out), "--workers", "0",
            "--no-progress", "--device", "cpu"]
    if size != (0, 0):
        args += ["--resize", f"{size[1]}x{size[0]}"]
    assert cli_main(args) == 0
    report = json.loads(out.read_text())
    expected = _segmenter_confusion(weights, camvid(root, "val"), size)
    assert report["miou"] == pytest.approx(expected.miou, abs=1e-12)
    assert report["pixel_acc"] == pytest.approx(expected.pixel_accuracy, abs=1e-12)
    assert report["per_class"] == pytest.approx(dict(zip(CAMVID.class_names, expected.per_class_iou, strict=True)))
    printed = capsys.readouterr().out
    assert "Sky" in printed and "Bicyclist" in printed and "mIoU" in printed and "images/s" in printed


def test_eval_precision_casts_the_model_as_the_segmenter_does(shared_checkpoint, tmp_path, synthetic, monkeypatch):
    """--precision means what it means on the robot: the model and the image cast to bf16
    (not autocast, which keeps fp32 weights and picks ops to run in low precision)."""
    monkeypatch.setattr("eacnet_core.runtime.cpu_supports_bf16", lambda: True)
    root = synthetic.camvid(tmp_path / "CamVid", {"val": 2})
    weights = shared_checkpoint
    out = tmp_path / "bf16.json"
    assert cli_main(["eval", "--weights", str(weights), "--data-root", str(root), "--json", str(out), "--workers",
                     "0", "--no-progress", "--device", "cpu", "--precision", "bf16"]) == 0
    seg = Segmenter.from_checkpoint(weights, SegmenterOptions(device="cpu", precision="bf16", backend="torch",
                                                              channels_last=False))
    dataset = camvid(root, "val")
    expected, fp32 = ConfusionMatrix(CAMVID.num_classes, CAMVID.ignore_index), _segmenter_confusion(weights, dataset)
    for i in range(len(dataset)):
        image, label = dataset.load(i)
        expected.update(seg.segment(image), label)
    report = json.loads(out.read_text())
    assert report["pixel_acc"] == pytest.approx(expected.pixel_accuracy, abs=1e-12)
    assert report["pixel_acc"] != pytest.approx(fp32.pixel_accuracy, abs=1e-12)  # bf16 really ran


def test_eval_precision_int8_scores_the_quantised_graph_the_segmenter_runs(tiny_checkpoint, tmp_path, synthetic):
    """--precision int8 calibrates on the dataset root's train split and scores exactly the
    int8 onnxruntime model a Segmenter with precision int8 runs."""
    pytest.importorskip("onnxruntime")
    root = synthetic.camvid(tmp_path / "CamVid", {"train": 3, "val": 2})
    weights = tiny_checkpoint()  # its own folder: the int8 cache lands beside it
    out = tmp_path / "int8.json"
    assert cli_main(["eval", "--weights", str(weights), "--data-root", str(root), "--json", str(out), "--workers",
                     "0", "--no-progress", "--precision", "int8"]) == 0
    assert list((tmp_path / "int8-cache").glob("*.int8.onnx"))  # built beside the weights, from root/train
    seg = Segmenter.from_checkpoint(weights, SegmenterOptions(device="cpu", precision="int8",
                                                              calibration_data=str(root)))
    dataset = camvid(root, "val")
    expected = ConfusionMatrix(CAMVID.num_classes, CAMVID.ignore_index)
    for i in range(len(dataset)):
        image, label = dataset.load(i)
        expected.update(seg.segment(image), label)
    assert json.loads(out.read_text())["pixel_acc"] == pytest.approx(expected.pixel_accuracy, abs=1e-12)


def test_eval_backend_scores_the_segmenters_path(shared_checkpoint, tmp_path, synthetic, capsys, monkeypatch):
    """--backend runs the Segmenter's engine: onnxruntime's fp32 masks are torch's, so the scores
    match; with auto the path is chosen on the first image and named."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    root = synthetic.camvid(tmp_path / "CamVid", {"val": 2})
    weights = shared_checkpoint
    scores = {}
    for backend in ("torch", "onnxruntime", "auto"):
        out = tmp_path / f"{backend}.json"
        assert cli_main(["eval", "--weights", str(weights), "--data-root", str(root), "--json", str(out),
                         "--workers", "0", "--no-progress", "--precision", "fp32", "--backend", backend]) == 0
        scores[backend] = json.loads(out.read_text())["pixel_acc"]
    assert scores["onnxruntime"] == pytest.approx(scores["torch"], abs=1e-4)
    assert scores["auto"] == pytest.approx(scores["torch"], abs=1e-4)
    printed = capsys.readouterr().out
    assert "eval: ran model=dabnet" in printed and "(chosen by auto)" in printed
    assert "backend=onnxruntime inference" in printed


def test_eval_resize_is_the_segmenters_inference_size(shared_checkpoint, tmp_path, synthetic, capsys, caplog,
                                                      monkeypatch):
    """--resize with a Segmenter backend: the Segmenter runs at that size and knows it at
    start-up (auto chooses there, at that size), and says so, as the node with a resize does."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    caplog.set_level(logging.INFO, logger="eacnet_core")
    root = synthetic.camvid(tmp_path / "CamVid", {"val": 2})  # 48x32 images
    assert cli_main(["eval", "--weights", str(shared_checkpoint), "--data-root", str(root), "--workers", "0",
                     "--no-progress", "--precision", "fp32", "--backend", "auto", "--resize", "40x24"]) == 0
    (ran,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("eval: ran ")]
    assert "inference=40x24" in ran and "(chosen by auto)" in ran, ran
    assert [m for m in caplog.messages if m.startswith("auto at ")][0].startswith("auto at 40x24 (measured)")


def test_eval_json_plot_and_predictions(shared_checkpoint, tmp_path, synthetic):
    root = synthetic.camvid(tmp_path / "CamVid", {"val": 3})
    weights = shared_checkpoint
    rc = cli_main(["eval", "--weights", str(weights), "--data-root", str(root), "--split", "val", "--limit", "2",
                   "--json", str(tmp_path / "r" / "e.json"), "--plot", str(tmp_path / "r" / "iou.png"),
                   "--out", str(tmp_path / "pred"), "--workers", "0", "--no-progress",
                   "--batch-size", "2"])
    assert rc == 0
    report = json.loads((tmp_path / "r" / "e.json").read_text())
    assert {"model", "dataset", "split", "images", "miou", "pixel_acc", "per_class"} <= set(report)
    assert (report["model"], report["dataset"], report["split"], report["images"]) == ("dabnet", "camvid", "val", 2)
    assert list(report["per_class"]) == list(CAMVID.class_names)
    assert all(0.0 <= v <= 1.0 for v in report["per_class"].values()) and 0.0 <= report["miou"] <= 1.0
    assert (tmp_path / "r" / "iou.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert written == ["val_000.png", "val_000_color.png", "val_001.png", "val_001_color.png"]
    mask = cv2.imread(str(tmp_path / "pred" / "val_000.png"), cv2.IMREAD_UNCHANGED)
    seg = Segmenter.from_checkpoint(weights, SegmenterOptions(device="cpu", precision="fp32", backend="torch",
                                                              channels_last=False))
    assert np.array_equal(mask, seg.segment(cv2.imread(str(root / "val" / "val_000.png"))))
    colour = cv2.imread(str(tmp_path / "pred" / "val_000_color.png"))
    assert np.array_equal(colour, seg.colorize(mask))


def test_test_split_with_withheld_labels_names_missing_files(shared_checkpoint, tmp_path, synthetic, capsys):
    root = synthetic.camvid(tmp_path / "CamVid", {"val": 1, "test": 2})
    for f in (root / "testannot").iterdir():
        f.unlink()
    weights = shared_checkpoint
    assert cli_main(["eval", "--weights", str(weights), "--data-root", str(root), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert "2 of 2 annotation files missing" in err and "testannot/test_000.png" in err


def test_bad_label_in_a_worker_is_one_line_and_stops_the_workers(shared_checkpoint, tmp_path, synthetic, capsys):
    root = synthetic.camvid(tmp_path / "CamVid", {"val": 2})
    label = root / "valannot" / "val_001.png"
    cv2.imwrite(str(label), np.full(cv2.imread(str(label), cv2.IMREAD_GRAYSCALE).shape, 40, np.uint8))
    assert cli_main(["eval", "--weights", str(shared_checkpoint), "--data-root", str(root), "--workers", "1",
                     "--batch-size", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "val_001.png: label values 40 are outside the class range" in err and "Traceback" not in err
    assert not multiprocessing.active_children()  # stopped with the error, not at a later collection


def test_test_split_works_where_annotations_exist(shared_checkpoint, tmp_path, synthetic):
    root = synthetic.camvid(tmp_path / "CamVid", {"test": 2})
    weights = shared_checkpoint
    assert cli_main(["eval", "--weights", str(weights), "--data-root", str(root), "--split", "test",
                     "--json", str(tmp_path / "t.json"), "--workers", "0", "--no-progress"]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["split"] == "test"


def test_model_without_packaged_weights_is_a_clear_error(tmp_path, capsys, no_packaged_weights):
    assert cli_main(["eval", "--model", "eacnet_erf", "--data-root", str(tmp_path)]) == 2
    assert "no packaged weights for model 'eacnet_erf'" in capsys.readouterr().err


def test_class_count_mismatch(shared_checkpoint, tmp_path, synthetic, capsys):
    root = synthetic.folder(tmp_path / "data", count=1)
    weights = shared_checkpoint
    assert cli_main(["eval", "--weights", str(weights), "--dataset", "folder", "--data-root", str(root)]) == 2
    assert "model has 11 classes, dataset folder has 3" in capsys.readouterr().err


def test_default_data_root_from_environment(shared_checkpoint, no_camvid_anywhere, tmp_path, synthetic, monkeypatch,
                                            capsys):
    """$EACNET_DATA naming a folder that holds CamVid/ serves eval as it serves the demo."""
    synthetic.camvid(tmp_path / "data" / "CamVid", {"val": 1})
    weights = shared_checkpoint
    monkeypatch.setenv("EACNET_DATA", str(tmp_path / "data"))
    assert cli_main(["eval", "--weights", str(weights), "--workers", "0", "--no-progress"]) == 0
    monkeypatch.delenv("EACNET_DATA")
    assert cli_main(["eval", "--weights", str(weights)]) == 2
    assert "pass --data-root" in capsys.readouterr().err


def test_mixed_sizes_need_batch_size_one(tmp_path, synthetic):
    root = synthetic.folder(tmp_path / "data", count=2, num_classes=11)
    synthetic.write_png(root / "images" / "img001.jpg", np.zeros((16, 24, 3), np.uint8))
    synthetic.write_png(root / "labels" / "img001.png", np.zeros((16, 24), np.uint8))
    dataset = image_folder(root, "val")
    model = build_model("dabnet", 11)
    with pytest.raises(DatasetError, match="batch-size 1"):
        evaluate_model(model, eval_loader(dataset, batch_size=2), dataset.info, torch.device("cpu"))
    result = evaluate_model(model, eval_loader(dataset, batch_size=1), dataset.info, torch.device("cpu"))
    assert result.images == 2 and result.confusion.total > 0 and result.images_per_s > 0


def test_evaluate_model_restores_training_mode(tmp_path, synthetic):
    root = synthetic.camvid(tmp_path / "CamVid", {"val": 1})
    dataset = camvid(root, "val")
    model = build_model("dabnet", 11).train()
    evaluate_model(model, eval_loader(dataset), dataset.info, torch.device("cpu"))
    assert model.training


def test_predict_to_label_size_is_nearest_of_the_argmax():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 2, 0, 1] = 5.0
    logits[0, 1, 1, 0] = 5.0
    pred = predict_to_label_size(logits, (4, 4))
    assert pred.tolist() == [[[0, 0, 2, 2], [0, 0, 2, 2], [1, 1, 0, 0], [1, 1, 0, 0]]]


def test_plot_writes_png(tmp_path):
    cm = ConfusionMatrix(3, class_names=["a", "b", "c"])
    cm.update(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]))
    assert plot_per_class(cm, tmp_path / "x" / "p.png").read_bytes()[:4] == b"\x89PNG"


@needs_real_camvid
def test_real_camvid_eval_two_images(shared_checkpoint, tmp_path):
    weights = shared_checkpoint
    out = tmp_path / "real.json"
    assert cli_main(["eval", "--weights", str(weights), "--data-root", str(REAL_CAMVID), "--limit", "2",
                     "--json", str(out), "--workers", "0", "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 2 and len(report["per_class"]) == 11
