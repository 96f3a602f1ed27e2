"""Loaders for the three layouts on tiny synthetic folders, and every bad-input case
giving an error that names the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from real_data import needs_real_camvid

from eacnet_core.data.classes import CAMVID, CITYSCAPES
from eacnet_core.data.datasets import (
    CITYSCAPES_ID_TO_TRAINID,
    DatasetError,
    LabelRule,
    build_dataset,
    camvid,
    cityscapes,
    class_pixel_counts,
    dataset_info,
    folder_info,
    image_folder,
)
from eacnet_core.data.roots import DATA_ENV, default_data_root, find_camvid
from eacnet_core.data.transforms import TrainTransform, normalize_bgr

# ---------------------------------------------------------------------------- CamVid


def test_camvid_list_files_resolve_against_root(tmp_path, synthetic):
    root = synthetic.camvid(tmp_path / "CamVid", {"train": 3, "val": 2})
    ds = camvid(root, "train")
    assert len(ds) == 3 and ds.info is CAMVID
    assert ds.samples[0].image == root / "train" / "train_000.png"
    assert ds.samples[0].label == root / "trainannot" / "train_000.png"
    image, label, index = ds[1]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 48)
    assert label.dtype == torch.int64 and label.shape == (32, 48) and index == 1
    assert set(label.unique().tolist()) <= set(range(12))
    assert (label == 11).any()  # void kept as the ignore index
    bgr = ds.read_image(1)
    assert np.array_equal(image.numpy(), normalize_bgr(bgr, CAMVID.mean, CAMVID.std))


def test_camvid_limit_and_folder_fallback_without_list_file(tmp_path, synthetic):
    root = synthetic.camvid(tmp_path / "CamVid", {"train": 4}, list_files=False)
    ds = camvid(root, "train", limit=2)
    assert [s.image.name for s in ds.samples] == ["train_000.png", "train_001.png"]


def test_camvid_missing_split_names_list_file(tmp_path, synthetic):
    root = synthetic.camvid(tmp_path / "CamVid", {"train": 1})
    with pytest.raises(DatasetError, match="val.txt"):
        camvid(root, "val")


def test_camvid_missing_data_root(tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        camvid(tmp_path / "nowhere", "train")


def test_camvid_withheld_annotations_error_names_files(tmp_path, synthetic):
    root = synthetic.camvid(tmp_path / "CamVid", {"test": 3})
    for f in (root / "testannot").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=r"3 of 3 annotation files missing.*testannot.*test_000\.png.*withheld"):
        camvid(root, "test")


def test_camvid_one_missing_image_named(tmp_path, synthetic):
    root = synthetic.camvid(tmp_path / "CamVid", {"train": 3})
    (root / "train" / "train_001.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of 3 image files missing.*train_001\.png"):
        camvid(root, "train")


def test_malformed_list_line_named(tmp_path, synthetic):
    root = synthetic.camvid(tmp_path / "CamVid", {"train": 1})
    (root / "train.txt").write_text("/SegNet/CamVid/train/train_000.png\n")
    with pytest.raises(DatasetError, match=r"train\.txt:1"):
        camvid(root, "train")


def test_label_value_out_of_range_names_file(tmp_path, synthetic):
    root = synthetic.camvid(tmp_path / "CamVid", {"train": 2})
    bad = root / "trainannot" / "train_001.png"
    label = np.zeros((32, 48), np.uint8)
    label[0, 0], label[1, 1] = 12, 200
    synthetic.write_png(bad, label)
    ds = camvid(root, "train")
    ds[0]
    with pytest.raises(DatasetError, match=r"train_001\.png: label values 12, 200 are outside the class range 0\.\.10"):
        ds[1]


def test_size_mismatch_names_both_files(tmp_path, synthetic):
    root = synthetic.camvid(tmp_path / "CamVid", {"train": 1})
    synthetic.write_png(root / "trainannot" / "train_000.png", np.zeros((16, 48), np.uint8))
    with pytest.raises(DatasetError, match=r"trainannot/train_000\.png: label size 48x16.*train/train_000\.png"):
        camvid(root, "train")[0]


def test_unreadable_image_and_label_named(tmp_path, synthetic):
    root = synthetic.camvid(tmp_path / "CamVid", {"train": 2})
    (root / "train" / "train_000.png").write_bytes(b"not a png at all")
    (root / "trainannot" / "train_001.png").write_bytes(b"\x89PNG broken")
    ds = camvid(root, "train")
    with pytest.raises(DatasetError, match=r"train/train_000\.png: cannot read image \(unreadable\)"):
        ds[0]
    with pytest.raises(DatasetError, match=r"trainannot/train_001\.png: cannot read label \(unreadable\)"):
        ds[1]


def test_colour_label_rejected_with_file_name(tmp_path, synthetic):
    root = synthetic.camvid(tmp_path / "CamVid", {"train": 1})
    synthetic.write_png(root / "trainannot" / "train_000.png", np.zeros((32, 48, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"train_000\.png: label must be a single-channel"):
        camvid(root, "train")[0]


# ---------------------------------------------------------------------------- Cityscapes


def test_cityscapes_label_ids_map_to_train_ids(tmp_path, synthetic):
    written = synthetic.cityscapes(tmp_path / "cs", "val", per_city=2)
    ds = cityscapes(tmp_path / "cs", "val")
    assert len(ds) == 4 and ds.info is CITYSCAPES
    assert ds.samples[0].image.name.endswith("_leftImg8bit.png")
    by_label = {s.label: i for i, s in enumerate(ds.samples)}
    for label_path, ids in written:
        mapped = ds.read_label(by_label[label_path])
        expected = np.full(ids.shape, 255, np.uint8)
        for raw, train_id in CITYSCAPES_ID_TO_TRAINID.items():
            expected[ids == raw] = train_id
        assert np.array_equal(mapped, expected)
    # spot checks against the official table
    rule = ds.rules["label_ids"]
    raw = np.array([[0, 1, 6, 7, 8, 9, 26, 31, 33, 34, 250]], np.uint8)
    assert rule.apply(raw, tmp_path).tolist() == [[255, 255, 255, 0, 1, 255, 13, 16, 18, 255, 255]]


def test_cityscapes_table_is_the_official_one():
    assert sorted(CITYSCAPES_ID_TO_TRAINID.values()) == list(range(19))
    assert CITYSCAPES_ID_TO_TRAINID[24] == 11 and CITYSCAPES_ID_TO_TRAINID[20] == 7


def test_cityscapes_prefers_label_train_ids(tmp_path, synthetic):
    written = synthetic.cityscapes(tmp_path / "cs", "train", cities=("ulm",), per_city=2)
    label_path, _ = written[0]
    train_ids = np.full((32, 64), 5, np.uint8)
    train_ids[0, :4] = 255
    tid_path = synthetic.write_png(label_path.with_name(label_path.name.replace("labelIds", "labelTrainIds")),
                                   train_ids)
    ds = cityscapes(tmp_path / "cs", "train")
    assert ds.samples[0].label == tid_path and ds.samples[0].rule == "train_ids"
    assert ds.samples[1].rule == "label_ids"  # the other image has no labelTrainIds: mapped from labelIds
    assert np.array_equal(ds.read_label(0), train_ids)


def test_cityscapes_bad_train_id_named(tmp_path, synthetic):
    written = synthetic.cityscapes(tmp_path / "cs", "train", cities=("ulm",))
    label_path, _ = written[0]
    bad = label_path.with_name(label_path.name.replace("labelIds", "labelTrainIds"))
    synthetic.write_png(bad, np.full((32, 64), 19, np.uint8))
    with pytest.raises(DatasetError, match=r"labelTrainIds\.png: label values 19"):
        cityscapes(tmp_path / "cs", "train")[0]


def test_cityscapes_missing_label_and_empty_split(tmp_path, synthetic):
    written = synthetic.cityscapes(tmp_path / "cs", "train", cities=("ulm",))
    written[0][0].unlink()
    with pytest.raises(DatasetError, match=r"annotation files missing.*gtFine_labelIds\.png"):
        cityscapes(tmp_path / "cs", "train")
    with pytest.raises(DatasetError, match=r"leftImg8bit/val"):
        cityscapes(tmp_path / "cs", "val")


# ---------------------------------------------------------------------------- folders


def test_folder_single_pool(tmp_path, synthetic):
    root = synthetic.folder(tmp_path / "mine", count=3)
    ds = image_folder(root, "train")
    assert len(ds) == 3 and ds.info.class_names == ("c0", "c1", "c2") and ds.info.ignore_index == 255
    assert image_folder(root, "val").samples == ds.samples  # no split folders: one pool
    image, label, _ = ds[0]
    assert image.shape == (3, 32, 48) and set(label.unique().tolist()) <= {0, 1, 2, 255}


def test_folder_split_dirs_and_yaml_fields(tmp_path, synthetic):
    yaml_text = ("name: robots\nnames: [floor, wall]\ncolours: [[1, 2, 3], [4, 5, 6]]\nignore_index: 9\n"
                 "mean: [10, 20, 30]\nstd: [2, 3, 4]\n")
    root = synthetic.folder(tmp_path / "mine", count=2, num_classes=2, splits=("train", "val"), yaml_text=yaml_text)
    info = folder_info(root)
    assert info.name == "robots" and info.palette == ((1, 2, 3), (4, 5, 6)) and info.ignore_index == 9
    assert info.mean == (10.0, 20.0, 30.0) and info.std == (2.0, 3.0, 4.0)
    assert dataset_info("folder", root) == info
    ds = build_dataset("folder", root, "val")
    assert all("/val/" in str(s.image) for s in ds.samples)
    bgr = ds.read_image(0)
    assert np.array_equal(ds[0][0].numpy(), normalize_bgr(bgr, info.mean, info.std))


def test_folder_defaults_mean_std_and_palette(tmp_path, synthetic):
    root = synthetic.folder(tmp_path / "mine", count=1)
    info = folder_info(root)
    assert info.mean == (123.675, 116.28, 103.53) and len(info.palette) == 3


@pytest.mark.parametrize("yaml_text, match", [
    (None, "classes.yaml: missing"),
    ("names: []\n", "non-empty 'names'"),
    ("names: [a, b]\ncolors: [[1, 2, 3]]\n", "2 class names but 1 colours"),
    ("names: [a]\nmean: [1, 2]\n", "3 values"),
    ("names: [a, b]\nignore_index: 1\n", "ignore index 1 is a real class id"),
    ("names: [a\n", "not valid YAML"),
])
def test_folder_yaml_errors_name_the_file(tmp_path, synthetic, yaml_text, match):
    root = synthetic.folder(tmp_path / "mine", count=1, yaml_text=yaml_text or "names: [a]\n")
    if yaml_text is None:
        (root / "classes.yaml").unlink()
    with pytest.raises(DatasetError, match=match) as info:
        image_folder(root, "train")
    assert "classes.yaml" in str(info.value)


def test_folder_missing_label_named(tmp_path, synthetic):
    root = synthetic.folder(tmp_path / "mine", count=2)
    (root / "labels" / "img001.png").unlink()
    with pytest.raises(DatasetError, match=r"labels/img001\.png"):
        image_folder(root, "train")


def test_folder_label_outside_class_range(tmp_path, synthetic):
    root = synthetic.folder(tmp_path / "mine", count=1)
    synthetic.write_png(root / "labels" / "img000.png", np.full((32, 48), 3, np.uint8))
    with pytest.raises(DatasetError, match=r"img000\.png: label values 3 are outside the class range 0\.\.2"):
        image_folder(root, "train")[0]


def test_uint16_labels_supported(tmp_path):
    rule = LabelRule(300, 65535)
    raw = np.array([[0, 299, 65535]], np.uint16)
    assert rule.apply(raw, tmp_path).tolist() == [[0, 299, 65535]]
    with pytest.raises(DatasetError, match="300"):
        rule.apply(np.array([[300]], np.uint16), tmp_path)


# ---------------------------------------------------------------------------- shared behaviour


def test_augmentation_is_a_function_of_seed_epoch_index(tmp_path, synthetic):
    root = synthetic.camvid(tmp_path / "CamVid", {"train": 2})
    tf = TrainTransform((24, 32), CAMVID.mean, CAMVID.std, 11)
    a, b = camvid(root, "train", transform=tf, seed=1), camvid(root, "train", transform=tf, seed=1)
    assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[0][1], b[0][1])
    draws = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        draws.add(a[0][1].numpy().tobytes())
    assert len(draws) > 1


def test_class_pixel_counts(tmp_path, synthetic):
    root = synthetic.folder(tmp_path / "mine", count=2)
    labels = [np.zeros((32, 48), np.uint8), np.zeros((32, 48), np.uint8)]
    labels[0][:8] = 1
    labels[0][8:10] = 255
    labels[1][:, :4] = 2
    for i, lbl in enumerate(labels):
        synthetic.write_png(root / "labels" / f"img{i:03d}.png", lbl)
    synthetic.write_png(root / "images" / "img000.jpg", np.zeros((32, 48, 3), np.uint8))
    synthetic.write_png(root / "images" / "img001.jpg", np.zeros((32, 48, 3), np.uint8))
    for extra in (root / "images").glob("img00[2-9].jpg"):
        extra.unlink()
    counts, image_pixels = class_pixel_counts(image_folder(root, "train"))
    valid0 = 32 * 48 - 2 * 48
    assert counts.tolist() == [valid0 - 8 * 48 + 32 * 48 - 32 * 4, 8 * 48, 32 * 4]
    assert image_pixels.tolist() == [valid0 + 32 * 48, valid0, 32 * 48]


def test_data_root_order_explicit_then_environment_then_shared_folder(no_camvid_anywhere, monkeypatch, synthetic):
    """The README's order: --data-root, $EACNET_DATA (itself or its CamVid/), ../shared/data/CamVid."""
    tmp = no_camvid_anywhere
    with pytest.raises(DatasetError, match=r"--data-root.*EACNET_DATA.*looked in"):
        default_data_root("camvid")
    assert find_camvid() is None
    shared = synthetic.camvid(tmp / "proj" / "shared" / "data" / "CamVid", {"val": 1})
    assert default_data_root("camvid") == find_camvid() == shared.resolve()
    env = synthetic.camvid(tmp / "data" / "CamVid", {"train": 1})
    monkeypatch.setenv(DATA_ENV, str(tmp / "data"))  # a folder holding CamVid/
    assert default_data_root("camvid") == find_camvid() == env.resolve()
    monkeypatch.setenv(DATA_ENV, str(env))  # the CamVid folder itself
    assert default_data_root("camvid") == env.resolve()
    explicit = synthetic.camvid(tmp / "mine" / "CamVid", {"val": 1})
    assert default_data_root("camvid", str(tmp / "mine")) == explicit.resolve()
    assert default_data_root("camvid", explicit) == explicit.resolve()
    assert find_camvid(tmp / "elsewhere") is None  # an explicit root is the only candidate
    assert default_data_root("camvid", tmp / "elsewhere") == tmp / "elsewhere"  # the reader names what is missing


def test_other_datasets_need_a_data_root(no_camvid_anywhere):
    with pytest.raises(DatasetError, match="cityscapes.*--data-root"):
        default_data_root("cityscapes")
    assert default_data_root("folder", no_camvid_anywhere / "x") == no_camvid_anywhere / "x"


@needs_real_camvid
def test_real_camvid_two_images(synthetic):
    ds = camvid(synthetic.real_camvid, "train", limit=2)
    assert len(ds) == 2
    for i in range(2):
        image, label, _ = ds[i]
        assert image.shape == (3, 360, 480) and label.shape == (360, 480)
        assert 0 <= int(label.min()) and int(label.max()) <= 11
    val = camvid(synthetic.real_camvid, "val", limit=2)
    assert len(val) == 2
    with pytest.raises(DatasetError, match="testannot"):
        camvid(synthetic.real_camvid, "test")


def test_camvid_trainval_is_train_then_val_when_no_list_names_it(tmp_path, synthetic):
    """The paper's test-set protocol trains on train + val; no trainval.txt is needed."""
    root = synthetic.camvid(tmp_path / "CamVid", {"train": 3, "val": 2})
    both = camvid(root, "trainval")
    assert [s.image for s in both.samples] == ([s.image for s in camvid(root, "train").samples]
                                               + [s.image for s in camvid(root, "val").samples])


def test_cache_in_memory_serves_the_same_pairs_without_reading_files(tmp_path, synthetic):
    root = synthetic.camvid(tmp_path / "CamVid", {"train": 2})
    ds = camvid(root, "train")
    before = [ds.load(i) for i in range(len(ds))]
    held = ds.cache_in_memory()
    assert held == sum(image.nbytes + label.nbytes for image, label in before)
    for sample in ds.samples:
        sample.image.unlink()  # the cache, not the files, is read from now on
    after = [ds.load(i) for i in range(len(ds))]
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(before, after, strict=True))


def test_every_command_finds_camvid_in_a_folder_holding_it(no_camvid_anywhere, monkeypatch, synthetic):
    """$EACNET_DATA=/data with /data/CamVid: train and the int8 calibration default read it too."""
    from eacnet_core.checkpoint import load_checkpoint
    from eacnet_core.infer.quantize import default_calibration_root
    from eacnet_ros.cli import main

    camvid_root = synthetic.camvid(no_camvid_anywhere / "data" / "CamVid", {"train": 1, "val": 1}).resolve()
    monkeypatch.setenv(DATA_ENV, str(no_camvid_anywhere / "data"))
    assert default_calibration_root() == str(camvid_root)
    out = no_camvid_anywhere / "run"
    assert main(["train", "--model", "dabnet", "--out", str(out), "--epochs", "1", "--batch-size", "1",
                 "--crop-size", "48x32", "--val-every", "0", "--workers", "0", "--no-progress",
                 "--no-tensorboard"]) == 0
    assert load_checkpoint(out / "last.pt")["config"]["data_root"] == str(camvid_root)
